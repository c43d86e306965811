"""The memory movers without simulation: the burst rule, the cost models' shape,
the parameters' errors, the interface (Vitis names)."""

import re

import numpy as np
import pytest
from amaranth.lib import stream, wiring

from moevit.hw.top.movers import (AXI4ReadSignature, AXI4WriteSignature, MAX_BURST, PAGE_BYTES,
                                  MemoryPort, ReadMover, WriteMover, beat_layout, bursts,
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
