"""The ReadStriper alone (Amaranth's simulator): one master's random bursts over several
ports, each a memory of its own with random latencies, gaps and error responses, the
master taking R with random back-pressure. Checked in full: each burst reaches the port
whose turn it is, unchanged, its address held until taken; every beat reaches the master
in issue order with its data, response and ``rlast``; bursts in flight bounded; buffered,
no port's R ever waits, and slow ports together stream faster than one."""

import os
import random
from collections import deque

import pytest

from moevit.hw.top.interconnect import ReadStriper
from moevit.hw.top.movers import AXI4ReadSignature


def _seed():
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


def beat_data(addr, beat, width):
    """What the memory answers for beat ``beat`` of the burst at ``addr``."""
    return (addr * 2654435761 + beat * 40503 + 12345) % (1 << width)


def beat_resp(addr, beat):
    """SLVERR or DECERR on a few beats, else OKAY."""
    return (2, 3)[beat % 2] if (addr // 4096 * 7 + beat) % 29 == 0 else 0


def run_striper(seed, *, ports, bursts, max_outstanding=4, buffer_beats=None, data_width=32,
                longest=16, equal=False, rate=0.5, master_ready=0.7, arready=0.7):
    """Simulate ``bursts`` of 1 to ``longest`` beats (``equal``: all ``longest``); returns ``(cycles, bursts per port, beats the master took, stalls)``;
    ``stalls`` counts the edges where a port's R beat waited."""
    from amaranth.sim import Simulator

    rng = random.Random(seed)
    dut = ReadStriper(data_width, ports, max_outstanding, buffer_beats=buffer_beats)
    issued = [(4096 * (i + 1), longest - 1 if equal else rng.randrange(longest))
              for i in range(bursts)]
    beats_wanted = sum(n + 1 for _, n in issued)
    seen = [[] for _ in range(ports)]          # (addr, len) as each port took them
    got = []                                   # (data, resp, last) as the master took them
    stalls = [0]
    cycles = [0]
    size = (data_width // 8 - 1).bit_length()

    async def master_ar(ctx):
        gaps = random.Random(seed + 1)
        axi = dut.axi
        for addr, length in issued:
            while gaps.random() < 0.2:
                await ctx.tick()
            ctx.set(axi.araddr, addr)
            ctx.set(axi.arlen, length)
            ctx.set(axi.arsize, size)
            ctx.set(axi.arburst, 1)
            ctx.set(axi.arvalid, 1)
            await ctx.tick().until(axi.arready)
            ctx.set(axi.arvalid, 0)

    async def master_r(ctx):
        pace = random.Random(seed + 2)
        axi = dut.axi
        in_flight = 0
        while len(got) < beats_wanted:
            ready = pace.random() < master_ready
            ctx.set(axi.rready, ready)
            _, _, ar_taken, valid, data, resp, last = await ctx.tick().sample(
                axi.arvalid & axi.arready, axi.rvalid, axi.rdata, axi.rresp, axi.rlast)
            cycles[0] += 1
            in_flight += ar_taken
            assert in_flight <= max_outstanding, "more bursts in flight than allowed"
            if valid and ready:
                got.append((data, resp, last))
                in_flight -= last

    def memory(j):
        async def serve(ctx):
            pace = random.Random(seed * 31 + j + 3)
            port = dut.ports[j]
            queue = deque()                    # [cycle ready, addr, len, next beat]
            offered = None                     # the AR seen waiting at the last edge
            cycle = 0
            while True:
                ctx.set(port.arready, pace.random() < arready)
                head = queue[0] if queue else None
                show = head is not None and head[0] <= cycle and pace.random() < rate
                if show:
                    _, addr, length, beat = head
                    ctx.set(port.rdata, beat_data(addr, beat, data_width))
                    ctx.set(port.rresp, beat_resp(addr, beat))
                    ctx.set(port.rlast, beat == length)
                ctx.set(port.rvalid, show)
                _, _, arvalid, ready, addr, length, asize, aburst, rready = \
                    await ctx.tick().sample(port.arvalid, port.arready, port.araddr,
                                            port.arlen, port.arsize, port.arburst, port.rready)
                if offered is not None:
                    assert arvalid and (addr, length) == offered, \
                        f"port {j}: an address withdrawn or changed before it was taken"
                offered = None
                if arvalid:
                    assert (asize, aburst) == (size, 1), f"port {j}: burst changed"
                    if ready:
                        seen[j].append((addr, length))
                        queue.append([cycle + pace.randrange(1, 12), addr, length, 0])
                    else:
                        offered = (addr, length)
                if show and not rready:
                    stalls[0] += 1
                if show and rready:
                    head[3] += 1
                    if head[3] > head[2]:
                        queue.popleft()
                cycle += 1
        return serve

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for j in range(ports):
        sim.add_testbench(memory(j), background=True)
    sim.add_testbench(master_ar, background=True)
    sim.add_testbench(master_r)
    sim.run()

    # Burst i went to port i mod ports, unchanged, and each port answered its own in order.
    assert seen == [issued[j::ports] for j in range(ports)]
    want = [(beat_data(a, b, data_width), beat_resp(a, b), int(b == n))
            for a, n in issued for b in range(n + 1)]
    assert got == want, "beats lost, changed or out of order"
    return cycles[0], seen, got, stalls[0]


def test_striper_parameters():
    striper, plain = ReadStriper(128, 3, 4), ReadStriper(512, 2, 4, buffer_beats=0)
    for unused in (striper, plain):
        unused._MustUse__silence = True  # only its parameters are looked at
    assert striper.axi.signature == AXI4ReadSignature(128).flip()
    assert [port.signature for port in striper.ports] == [AXI4ReadSignature(128)] * 3
    # The longest burst: 256 beats, or a 4 KiB page of 64-byte beats.
    assert (striper.buffer_beats, plain.buffer_beats) == (256, 0)
    with pytest.raises(TypeError, match=r"^Ports must be a positive integer, not 0$"):
        ReadStriper(128, 0, 4)
    with pytest.raises(ValueError, match=r"^A buffer of 100 beats cannot hold the longest "
                                         r"burst of 256 beats$"):
        ReadStriper(128, 2, 4, buffer_beats=100)


@pytest.mark.parametrize("ports,buffer_beats,outstanding", [
    (2, None, 4), (3, 0, 2), (4, None, 3)])
def test_striper_keeps_order_and_axi_rules(ports, buffer_beats, outstanding):
    """Random bursts (1 to 16 beats), memories of random latency, gaps and arready, some
    SLVERR/DECERR beats, the master taking R 70 % of the cycles: every check of
    :func:`run_striper`; buffered, a port's R beat never waits."""
    seed = _seed()
    cycles, seen, got, stalls = run_striper(seed, ports=ports, bursts=40,
                                            max_outstanding=outstanding,
                                            buffer_beats=buffer_beats)
    print(f"{ports} ports, buffer {buffer_beats}: {len(got)} beats in {cycles} cycles, "
          f"{sum(r != 0 for _, r, _ in got)} error beats, R waited {stalls} times")
    assert all(seen) and any(r for _, r, _ in got)
    if buffer_beats is None:
        assert stalls == 0


def test_striped_slow_ports_stream_together():
    """Ports that give a beat a quarter of the cycles, bursts of 16 beats, 8 in flight, a
    master always ready: one port takes about 4 cycles a beat; four buffered ports about
    one; four unbuffered ports (each waits while an older burst's port sends) no better
    than one."""
    seed = _seed()
    kw = dict(bursts=32, longest=16, equal=True, max_outstanding=8, rate=0.25,
              master_ready=1.0, arready=1.0)
    one, *_ = run_striper(seed, ports=1, **kw)
    four, _, got, _ = run_striper(seed, ports=4, **kw)
    plain, *_ = run_striper(seed, ports=4, buffer_beats=0, **kw)
    print(f"{len(got)} beats: 1 port {one} cycles, 4 ports {four}, 4 ports unbuffered {plain}")
    assert four < 0.4 * one
    assert plain > 0.8 * one
