"""The memory movers without simulation: the burst rule, the cost models' shape,
the parameters' errors, the interface (Vitis names)."""

import re

import numpy as np
import pytest
from amaranth.lib import stream, wiring

from moevit.hw.top.movers import (AXI4ReadSignature, AXI4WriteSignature, MAX_BURST, PAGE_BYTES,
                                  MemoryPort, ReadMover, Repack, WriteMover, beat_layout, bursts,
                                  read_cycles, request_layout, write_cycles)


@pytest.mark.parametrize("width", [32, 128, 512])
def test_bursts_cover_the_request_and_never_cross_4k(width):
    rng = np.random.default_rng(width)
    nbytes = width // 8
    for _ in range(500):
        addr = int(rng.integers(0, 2**52)) * nbytes
        length = int(rng.integers(1, 20_000))
        split = bursts(addr, length, width)
        at = addr
        for start, beats in split:
            assert start == at and 1 <= beats <= MAX_BURST
            assert start // PAGE_BYTES == (start + beats * nbytes - 1) // PAGE_BYTES
            at += beats * nbytes
        assert at == addr + -(-length // nbytes) * nbytes
        # As long as possible: each burst but the last ends at a limit.
        for start, beats in split[:-1]:
            assert beats == MAX_BURST or (start + beats * nbytes) % PAGE_BYTES == 0


def test_cost_models_count_every_beat():
    """One beat a cycle once the memory answers: a long read or write costs its beats
    plus the fixed latencies, whatever the outstanding limit above the latency."""
    requests = [(0x1000, 64 * 1024)]
    beats = 64 * 1024 // 16
    for n in (3, 8):
        assert read_cycles(requests, 128, n, latency=2) == 1 + 2 + beats - 1
        assert write_cycles(requests, 128, n, latency=2) == 1 + 1 + beats - 1 + 2 + 1
    # One burst in flight: each 256-beat burst's AR waits for the cycle after the
    # previous one's last beat, its first beat 2 cycles later: 256 + 2 cycles a burst.
    assert read_cycles(requests, 128, 1, latency=2) == 16 * (256 + 2)


@pytest.mark.parametrize("cls", [ReadMover, WriteMover])
def test_parameter_errors(cls):
    with pytest.raises(TypeError, match=r"^Data width must be one of \(32, 64, 128, 256, 512, "
                                        r"1024\), not 100$"):
        cls(100)
    with pytest.raises(TypeError, match=r"^Outstanding bursts must be a positive integer, "
                                        r"not 0$"):
        cls(128, max_outstanding=0)
    with pytest.raises(TypeError, match=r"^Length width must be an integer in \[1, 64\], "
                                        r"not 65$"):
        cls(128, length_width=65)


def test_signatures():
    read = ReadMover(256, max_outstanding=2)
    assert read.signature.members["req"] == In(stream.Signature(request_layout(32)))
    assert read.signature.members["data"] == Out(stream.Signature(beat_layout(256)))
    assert read.signature.members["axi"] == Out(AXI4ReadSignature(256))
    write = WriteMover(256)
    assert write.signature.members["data"] == In(stream.Signature(256))
    assert write.signature.members["axi"] == Out(AXI4WriteSignature(256))
    for component in (read, write):
        component._MustUse__silence = True   # built for its signature only


In, Out = wiring.In, wiring.Out


def test_memory_port_has_vitis_names():
    from amaranth.back import verilog

    text = verilog.convert(MemoryPort("gmem0", 128), name="top", emit_src=False)
    header = text[:text.index(");")]
    ports = set(re.findall(r"\b(m_axi_gmem0_\w+)", header))
    expected = {f"m_axi_gmem0_{s}" for s in (
        "araddr arlen arsize arburst arvalid arready arid rdata rresp rlast rvalid rready rid "
        "awaddr awlen awsize awburst awvalid awready awid wdata wstrb wlast wvalid wready "
        "bresp bvalid bready bid").split()}
    assert ports == expected
    with pytest.raises(TypeError, match=r"^Port name must be an identifier, not 'a b'$"):
        MemoryPort("a b")


def _repack(in_bytes, out_bytes, requests, rng):
    """Simulate :class:`Repack` (Amaranth's simulator) on ``requests`` (lists of bytes)
    with random gaps and back-pressure; returns the output beats (data, last, bytes)."""
    from amaranth.sim import Simulator

    dut = Repack(in_bytes, out_bytes)
    beats = []
    for payload in requests:
        chunks = [payload[k:k + in_bytes] for k in range(0, len(payload), in_bytes)]
        for k, chunk in enumerate(chunks):
            # Lanes past `bytes` hold garbage: the unit must ignore them.
            raw = bytes(chunk) + bytes(rng.integers(0, 256, in_bytes - len(chunk), dtype=np.uint8))
            beats.append((int.from_bytes(raw, "little"), k == len(chunks) - 1, len(chunk)))
    total = sum(-(-len(p) // out_bytes) for p in requests)
    out = []

    async def source(ctx):
        for value, last, count in beats:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i.payload, {"data": value, "last": last, "bytes": count})
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        while len(out) < total:
            ready = rng.random() < 0.7
            ctx.set(dut.o.ready, ready)
            await ctx.delay(0)
            *_, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if ready and valid:
                out.append((int(payload.data), int(payload.last), int(payload.bytes)))
        for _ in range(5):
            await ctx.tick()
            assert not ctx.get(dut.o.valid), "a beat after the last one"
        assert not ctx.get(dut.busy)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return out


@pytest.mark.parametrize("in_bytes, out_bytes", [(16, 12), (16, 16), (64, 48), (8, 20), (5, 3)])
def test_repack_keeps_every_byte(in_bytes, out_bytes):
    """Requests of random lengths re-packed: every byte in order, ``last`` and ``bytes``
    on each request's final beat, zero lanes past it."""
    rng = np.random.default_rng(in_bytes * 100 + out_bytes)
    requests = [bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
                for _ in range(12)]
    out = _repack(in_bytes, out_bytes, requests, rng)
    k = 0
    for r, payload in enumerate(requests):
        n = -(-len(payload) // out_bytes)
        mine = out[k:k + n]
        k += n
        assert [last for _, last, _ in mine] == [0] * (n - 1) + [1], f"request {r}"
        tail = len(payload) - (n - 1) * out_bytes
        assert [count for _, _, count in mine] == [out_bytes] * (n - 1) + [tail], f"request {r}"
        raw = b"".join(value.to_bytes(out_bytes, "little") for value, _, _ in mine)
        assert raw[:len(payload)] == payload and not any(raw[len(payload):]), f"request {r}"
