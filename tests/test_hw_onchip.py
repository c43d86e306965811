"""The on-chip activation memory and its routers (hw/top/onchip.py), on Amaranth's simulator:
random requests on every channel, in the window and outside it, with random gaps and
back-pressure, against a byte model of the memory; a stalled channel never holds the
RAM's read port; bad window requests are dropped with ``error``."""

import os
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from moevit.hw.top.onchip import OnChipMemory, ReadRouter, WriteRouter
from moevit.hw.top.ports import ReadPort, WritePort
from moevit.sim.amaranth_tb import payload_bits

WIDTH = 128
B = WIDTH // 8
WINDOW_AT = 0x4000      # the window starts after a DRAM of this many bytes
WORDS = 64              # RAM words: the window is 1 KiB


def _seed():
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


class Harness(wiring.Component):
    """``channels`` read routers and the write router on one OnChipMemory; the routers'
    ``mem`` sides are the test's (a byte model of the movers)."""

    def __init__(self, channels, in_flight=4, eager=False):
        self._channels, self._in_flight, self._eager = channels, in_flight, eager
        super().__init__({"rd": In(ReadPort(WIDTH)).array(channels),
                          "mem_rd": Out(ReadPort(WIDTH)).array(channels),
                          "wr": In(WritePort(WIDTH)), "mem_wr": Out(WritePort(WIDTH)),
                          "error": Out(1), "busy": Out(1), "wbusy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        ram = m.submodules.ram = OnChipMemory(WIDTH, depth=WORDS, channels=self._channels,
                                              eager=self._eager)
        routers = [ReadRouter(WIDTH, in_flight=self._in_flight) for _ in range(self._channels)]
        wrouter = m.submodules.wrouter = WriteRouter(WIDTH, in_flight=self._in_flight)
        for k, router in enumerate(routers):
            m.submodules[f"router{k}"] = router
            wiring.connect(m, wiring.flipped(self.rd[k]), router.i)
            wiring.connect(m, router.mem, wiring.flipped(self.mem_rd[k]))
            wiring.connect(m, router.ram, ram.rd[k])
        wiring.connect(m, wiring.flipped(self.wr), wrouter.i)
        wiring.connect(m, wrouter.mem, wiring.flipped(self.mem_wr))
        wiring.connect(m, wrouter.ram, ram.wr[0])
        for router in [*routers, wrouter]:
            m.d.comb += [router.window_at.eq(WINDOW_AT),
                         router.window_end.eq(WINDOW_AT + B * WORDS)]
        m.d.comb += [self.error.eq(wrouter.error | _any(r.error for r in routers)),
                     self.wbusy.eq(wrouter.busy),
                     self.busy.eq(ram.busy | wrouter.busy | _any(r.busy for r in routers))]
        return m


def _any(values):
    out = 0
    for v in values:
        out = out | v
    return out


def _beats(memory, addr, length):
    """The beats a mover gives for ``[addr, addr + length)``: (data, last, bytes)."""
    out = []
    for at in range(addr, addr + length, B):
        n = min(B, addr + length - at)
        out.append((int.from_bytes(bytes(memory[at:at + n]), "little"),
                    int(at + B >= addr + length), n))
    return out


def _random_request(rng, lo, hi):
    addr = lo + int(rng.integers(0, (hi - lo) // B)) * B
    return addr, int(rng.integers(1, min(hi - addr, 6 * B) + 1))


def _run(seed, channels, rounds, per_round, *, stall_channel=None, eager=False):
    """Rounds of ping-pong: round r writes random requests into half r % 2 of the window
    and into DRAM, and reads, on every channel, half (r + 1) % 2 (written the round
    before) and DRAM, all at once, with random gaps and back-pressure on every stream;
    each round starts when every port finished the one before and ``busy`` fell. Each
    channel's beats are compared with the byte model's in full; so are the window and the
    DRAM at the end (the window read back in a last round). ``eager``: the RAM's read
    channels take a request as the one before ends. Returns the cycles."""
    rng = np.random.default_rng(seed)
    model = bytearray(rng.integers(0, 256, WINDOW_AT + B * WORDS, dtype=np.uint8).tobytes())
    model[WINDOW_AT:] = bytes(B * WORDS)  # the RAM starts at 0
    dram = bytearray(model[:WINDOW_AT])   # the movers' memory
    half = B * WORDS // 2
    halves = [(WINDOW_AT, WINDOW_AT + half), (WINDOW_AT + half, WINDOW_AT + 2 * half)]
    dram_read, dram_write = (0, WINDOW_AT // 2), (WINDOW_AT // 2, WINDOW_AT)
    plans, expected = [], []
    for r in range(rounds):
        writes = [_random_request(rng, *(halves[r % 2] if rng.random() < 0.6 else dram_write))
                  for _ in range(per_round)] if r < rounds - 1 else []
        reads = [[_random_request(rng, *(halves[(r + 1) % 2] if r and rng.random() < 0.6
                                         else dram_read)) for _ in range(per_round)]
                 for _ in range(channels)]
        if r == rounds - 1:   # the whole window, read back on channel 0
            reads[0] += [(WINDOW_AT, B * WORDS)]
        payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for _, n in writes]
        # Round r's reads see the writes of the rounds before: r writes elsewhere.
        expected.append([[b for a, n in chan for b in _beats(model, a, n)] for chan in reads])
        for (addr, n), data in zip(writes, payloads):
            model[addr:addr + n] = data
        plans.append((writes, payloads, reads))

    # Requests the routers keep in flight: the top gives them its movers' max_outstanding.
    in_flight = int(rng.choice([1, 2, 4, 16, 64]))
    print(f"seed {seed}: {channels} channel(s), {in_flight} request(s) in flight, "
          f"eager {eager}")
    dut = Harness(channels, in_flight, eager)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    finished = {f"rd{k}": 0 for k in range(channels)} | {"wr": 0}
    cycles = [0]

    def pause(p):
        return rng.random() < p

    async def barrier(ctx, name, r):
        finished[name] = r + 1
        while min(finished.values()) < r + 1:
            await ctx.tick()

    def reader(k):
        async def run(ctx):
            port = dut.rd[k]
            for r, (_, _, reads) in enumerate(plans):
                got, want, sent = [], expected[r][k], 0
                while len(got) < len(want) or sent < len(reads[k]):
                    if sent < len(reads[k]):
                        ctx.set(port.req.payload.addr, reads[k][sent][0])
                        ctx.set(port.req.payload.length, reads[k][sent][1])
                    ctx.set(port.req.valid, int(sent < len(reads[k]) and not pause(0.3)))
                    # The stalled channel takes nothing until every other port is done.
                    stalled = stall_channel == k and any(
                        v <= r for n, v in finished.items() if n != f"rd{k}")
                    ctx.set(port.data.ready, int(not stalled and not pause(0.3)))
                    _, _, req, beat, data, last, n = await ctx.tick().sample(
                        port.req.valid & port.req.ready, port.data.valid & port.data.ready,
                        port.data.payload.data, port.data.payload.last, port.data.payload.bytes)
                    sent += req
                    if beat:
                        got.append((data, last, n))
                ctx.set(port.req.valid, 0)
                ctx.set(port.data.ready, 0)
                assert got == want, f"channel {k}, round {r}: the beats differ"
                await barrier(ctx, f"rd{k}", r)
        return run

    async def writer(ctx):
        for r, (writes, payloads, _) in enumerate(plans):
            beats = [int.from_bytes(d[i:i + B], "little") for d in payloads
                     for i in range(0, len(d), B)]
            sent = done = 0
            while sent < len(writes) or done < len(beats):
                if sent < len(writes):
                    ctx.set(dut.wr.req.payload.addr, writes[sent][0])
                    ctx.set(dut.wr.req.payload.length, writes[sent][1])
                ctx.set(dut.wr.req.valid, int(sent < len(writes) and not pause(0.3)))
                if done < len(beats):
                    ctx.set(dut.wr.data.payload, beats[done])
                ctx.set(dut.wr.data.valid, int(done < len(beats) and not pause(0.3)))
                _, _, req, beat = await ctx.tick().sample(dut.wr.req.valid & dut.wr.req.ready,
                                                          dut.wr.data.valid & dut.wr.data.ready)
                sent, done = sent + req, done + beat
            ctx.set(dut.wr.req.valid, 0)
            ctx.set(dut.wr.data.valid, 0)
            await ctx.tick().until(~dut.wbusy)   # every beat written
            await barrier(ctx, "wr", r)
        _, _, busy = await ctx.tick().sample(dut.busy)
        assert not busy, "busy after every port finished"

    def mem_reader(k):
        async def run(ctx):
            """The read mover's model: requests queued, their beats with random gaps."""
            port, queue = dut.mem_rd[k], []
            while True:
                ctx.set(port.req.ready, int(not pause(0.2)))
                if queue:
                    ctx.set(port.data.payload.data, queue[0][0])
                    ctx.set(port.data.payload.last, queue[0][1])
                    ctx.set(port.data.payload.bytes, queue[0][2])
                ctx.set(port.data.valid, int(bool(queue) and not pause(0.3)))
                _, _, req, addr, length, beat = await ctx.tick().sample(
                    port.req.valid & port.req.ready, port.req.payload.addr,
                    port.req.payload.length, port.data.valid & port.data.ready)
                if beat:
                    queue.pop(0)
                if req:
                    assert addr + length <= WINDOW_AT, "a window read reached the mover"
                    queue.extend(_beats(dram, addr, length))
        return run

    async def mem_writer(ctx):
        """The write mover's model: requests queued, their beats written in order."""
        port, requests, at = dut.mem_wr, [], None
        while True:
            ctx.set(port.req.ready, int(not pause(0.2)))
            ctx.set(port.data.ready, int(bool(requests) and not pause(0.3)))
            _, _, req, addr, length, beat, data = await ctx.tick().sample(
                port.req.valid & port.req.ready, port.req.payload.addr, port.req.payload.length,
                port.data.valid & port.data.ready, port.data.payload)
            if beat:
                start, end = requests[0]
                at = start if at is None else at
                dram[at:min(at + B, end)] = data.to_bytes(B, "little")[:min(B, end - at)]
                at += B
                if at >= end:
                    requests.pop(0)
                    at = None
            if req:
                assert addr + length <= WINDOW_AT, "a window write reached the mover"
                requests.append((addr, addr + length))

    async def clock(ctx):
        while True:
            await ctx.tick()
            cycles[0] += 1

    async def watchdog(ctx):
        for _ in range(100_000):
            await ctx.tick()
        raise AssertionError("no progress in 100,000 cycles: a deadlock")

    for k in range(channels):
        sim.add_testbench(reader(k))
        sim.add_testbench(mem_reader(k), background=True)
    sim.add_testbench(writer)
    sim.add_testbench(mem_writer, background=True)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(watchdog, background=True)
    sim.run()
    assert dram == model[:WINDOW_AT], "DRAM differs from the model"
    return cycles[0]


@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("channels", [1, 5])
def test_routers_and_ram_against_the_model(channels, eager):
    seed = _seed()
    cycles = _run(seed, channels, rounds=3, per_round=6, eager=eager)
    print(f"{channels} channels: {cycles} cycles")


@pytest.mark.parametrize("eager", [False, True])
def test_a_stalled_channel_never_holds_the_read_port(eager):
    """Channel 0's consumer takes no beat until every other port has finished its round:
    the others finish (the watchdog would stop a deadlock), then channel 0 gets its beats."""
    seed = _seed()
    _run(seed, 3, rounds=2, per_round=6, stall_channel=0, eager=eager)


@pytest.mark.parametrize("eager, cycles", [(False, 2), (True, 1)])
def test_one_beat_requests_a_beat_a_cycle_when_eager(eager, cycles):
    """One channel asking for one bus word at a time, never paused (the x tiler's requests
    with ``hw.x_by_words``): an eager RAM answers a beat a cycle, the plain one a beat
    every other cycle."""
    dut = OnChipMemory(WIDTH, depth=WORDS, channels=1, eager=eager)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    count, spans = 40, []

    async def run(ctx):
        port, sent, got, first = dut.rd[0], 0, 0, None
        ctx.set(port.data.ready, 1)
        for cycle in range(10 * count):
            ctx.set(port.req.valid, int(sent < count))
            ctx.set(port.req.payload.addr, (sent % WORDS) * B)
            ctx.set(port.req.payload.length, B)
            _, _, req, beat = await ctx.tick().sample(port.req.valid & port.req.ready,
                                                      port.data.valid)
            sent, got = sent + req, got + beat
            if beat and first is None:
                first = cycle
            if got == count:
                spans.append(cycle - first)
                return

    sim.add_testbench(run)
    sim.run()
    assert spans == [cycles * (count - 1)], f"{count} beats over {spans} cycles"


def test_bad_window_requests_are_dropped_with_error():
    """A request that runs past the window's end, has no bytes or is misaligned: taken,
    no beat, no RAM write, ``error`` the cycle after; the next good request is served."""
    dut = Harness(1)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    end = WINDOW_AT + B * WORDS
    bad = [(end - B, 2 * B), (WINDOW_AT, 0), (WINDOW_AT + 4, 8)]

    async def bench(ctx):
        port = dut.rd[0]
        ctx.set(port.data.ready, 1)
        for addr, length in [*bad, (WINDOW_AT, B)]:
            ctx.set(port.req.payload.addr, addr)
            ctx.set(port.req.payload.length, length)
            ctx.set(port.req.valid, 1)
            _, _, taken = await ctx.tick().sample(port.req.valid & port.req.ready)
            assert taken
            ctx.set(port.req.valid, 0)
            _, _, error = await ctx.tick().sample(dut.error)
            assert error == ((addr, length) in bad), (addr, length)
        _, last = await _first_beat(ctx, port)
        assert last == 1
        for addr, length in bad:    # writes too
            ctx.set(dut.wr.req.payload.addr, addr)
            ctx.set(dut.wr.req.payload.length, length)
            ctx.set(dut.wr.req.valid, 1)
            _, _, taken = await ctx.tick().sample(dut.wr.req.valid & dut.wr.req.ready)
            assert taken
            ctx.set(dut.wr.req.valid, 0)
            _, _, error, busy = await ctx.tick().sample(dut.error, dut.busy)
            assert error and not busy

    sim.add_testbench(bench)
    sim.run()


async def _first_beat(ctx, port):
    while True:
        _, _, valid, data, last = await ctx.tick().sample(port.data.valid, port.data.payload.data,
                                                          port.data.payload.last)
        if valid:
            return data, last


@pytest.mark.parametrize("in_flight", [0, -1, 2.5, True])
def test_routers_refuse_a_bad_number_of_requests_in_flight(in_flight):
    for router in (ReadRouter, WriteRouter):
        with pytest.raises(TypeError, match="Requests in flight must be a positive integer"):
            router(WIDTH, in_flight=in_flight)


@pytest.mark.parametrize("what, value", [("depth", 0), ("channels", -1), ("writers", 0),
                                         ("writers", 1.5), ("writers", True)])
def test_the_ram_refuses_a_bad_count(what, value):
    counts = {"depth": WORDS, "channels": 1, "writers": 1} | {what: value}
    with pytest.raises(TypeError, match=f"^{what.capitalize()} must be a positive integer"):
        OnChipMemory(WIDTH, **counts)


def test_the_top_gives_its_routers_the_movers_bursts_in_flight(monkeypatch):
    """The routers in front of the movers keep as many requests in flight as the movers
    keep bursts (4 made PATCHIFY on zcu102-edge-moe's window 1.8x slower at a 50-cycle
    latency)."""
    from amaranth.hdl import Fragment

    import moevit.hw.top.onchip as onchip
    from moevit.hw.config import get_hw_config
    from moevit.hw.top.accelerator import Accelerator

    made = []

    def recording(cls):
        def make(*args, **kwargs):
            made.append((cls.__name__, kwargs.get("in_flight")))
            return cls(*args, **kwargs)
        return make

    monkeypatch.setattr(onchip, "ReadRouter", recording(ReadRouter))   # the top imports them
    monkeypatch.setattr(onchip, "WriteRouter", recording(WriteRouter))  # when it builds
    hw = get_hw_config("zcu102-edge-moe").replace(max_outstanding=16)
    assert hw.onchip_bytes
    Fragment.get(Accelerator(hw, engines=("patchify", "copy")), None)
    assert made and set(made) == {("ReadRouter", 16), ("WriteRouter", 16)}


def test_two_write_channels_share_the_write_port_a_beat_at_a_time():
    """Two write channels on one OnChipMemory (the two issue lanes'): random requests with
    ragged tails, random gaps between beats (seed printed), and channel 1's first request
    taken with its beats withheld until channel 0 has written all of its own: a channel
    waiting for its data never holds the write port (joined a request at a time, channel 0
    would wait for channel 1 and this would not finish). Every byte is then read back on
    the read channel and compared in full with a byte model; ragged tails write their
    bytes only."""
    seed = _seed()
    rng = random.Random(seed)
    half = B * WORDS // 2
    model = bytearray(B * WORDS)
    requests = []
    for k in range(2):
        at, mine = k * half, []
        while len(mine) < 8 and at < (k + 1) * half - B:
            length = rng.randrange(1, min(4 * B, (k + 1) * half - at) + 1)
            data = bytes(rng.randrange(256) for _ in range(length))
            mine.append((at, data))
            model[at:at + length] = data
            at += -(-length // B) * B
        requests.append(mine)
    total = [sum(-(-len(d) // B) for _, d in mine) for mine in requests]
    dut = OnChipMemory(WIDTH, depth=WORDS, channels=1, writers=2)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    written = [0, 0]         # beats taken, per channel

    def writer(k):
        async def run(ctx):
            port = dut.wr[k]
            for j, (addr, data) in enumerate(requests[k]):
                ctx.set(port.req.payload.addr, addr)
                ctx.set(port.req.payload.length, len(data))
                ctx.set(port.req.valid, 1)
                await ctx.tick().until(port.req.ready)
                ctx.set(port.req.valid, 0)
                while k == 1 and j == 0 and written[0] < total[0]:
                    await ctx.tick()
                for at in range(0, len(data), B):
                    while rng.random() < 0.3:
                        await ctx.tick()
                    ctx.set(port.data.payload, int.from_bytes(data[at:at + B], "little"))
                    ctx.set(port.data.valid, 1)
                    await ctx.tick().until(port.data.ready)
                    written[k] += 1
                    ctx.set(port.data.valid, 0)
        return run

    async def reader(ctx):
        for _ in range(40 * sum(total)):   # a port held by a waiting channel ends here
            if written == total:
                break
            await ctx.tick()
        assert written == total, f"{written} of {total} beats written: the port was held"
        await ctx.tick().until(~dut.busy)
        port = dut.rd[0]
        ctx.set(port.req.payload.addr, 0)
        ctx.set(port.req.payload.length, B * WORDS)
        ctx.set(port.req.valid, 1)
        await ctx.tick().until(port.req.ready)
        ctx.set(port.req.valid, 0)
        ctx.set(port.data.ready, 1)
        got = []
        while len(got) < WORDS:
            _, _, valid, data = await ctx.tick().sample(port.data.valid, port.data.payload.data)
            if valid:
                got.append(data)
        assert b"".join(d.to_bytes(B, "little") for d in got) == bytes(model)

    sim.add_testbench(writer(0), background=True)
    sim.add_testbench(writer(1), background=True)
    sim.add_testbench(reader)
    sim.run()
