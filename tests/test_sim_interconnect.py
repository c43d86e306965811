"""The top's memory interconnect: the Relocator against a Python model (Amaranth's
simulator), and many relocated requesters through the read and write arbiters on one
cocotbext-axi memory (cocotb), every stream with random gaps and back-pressure, the
memory image and every read byte compared in full."""

import os
import random

import numpy as np
import pytest

from moevit.hw.top.interconnect import REGION_KINDS, ReadArbiter, Relocator, WriteArbiter
from moevit.hw.top.movers import AXI4ReadSignature, AXI4WriteSignature
from moevit.sim.benches.interconnect import run_interconnect

MASK64 = (1 << 64) - 1


def _seed():
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


def relocate(regions, addr, length):
    """The model: the host address of a request, or None for one the relocator drops."""
    bounds = [0, regions["scratch_at"], regions["input_at"], regions["output_at"],
              regions["end"]]
    pitches = [0, 0, regions["input_pitch"], regions["output_pitch"]]
    for k in range(len(REGION_KINDS)):
        if addr < bounds[k + 1]:
            if addr + length > bounds[k + 1]:
                return None
            return (regions["base"][k] + addr - bounds[k] + regions["image"] * pitches[k]) \
                & MASK64
    return None


# Signatures and parameter errors -----------------------------------------------------
def test_arbiter_signatures():
    arbiter = ReadArbiter(64, 3, max_outstanding=2)
    assert arbiter.signature.members["axi"].signature == AXI4ReadSignature(64)
    assert len(arbiter.ports) == 3
    writes = WriteArbiter(256, 1)
    assert writes.signature.members["axi"].signature == AXI4WriteSignature(256)


@pytest.mark.parametrize("cls", [ReadArbiter, WriteArbiter])
def test_arbiter_parameters(cls):
    with pytest.raises(TypeError, match=r"^Data width must be one of .*, not 100$"):
        cls(100, 2)
    with pytest.raises(TypeError, match=r"^Ports must be a positive integer, not 0$"):
        cls(128, 0)
    with pytest.raises(TypeError, match=r"^Outstanding bursts must be a positive integer, "
                                        r"not 0$"):
        cls(128, 2, max_outstanding=0)


def test_arbiter_grant_is_round_robin_and_held_until_taken():
    """All ports asking: grants in turn. An address waiting for ``arready`` stays
    offered when a port nearer in the round-robin order starts asking (AXI forbids a
    valid address to change)."""
    from amaranth.sim import Simulator

    dut = ReadArbiter(128, 3, max_outstanding=8)
    seen = {}

    async def bench(ctx):
        for k, port in enumerate(dut.ports):
            ctx.set(port.araddr, 0x100 * (k + 1))
        ctx.set(dut.axi.arready, 1)
        for k in (0, 1, 2):
            ctx.set(dut.ports[k].arvalid, 1)
        grants = []
        for _ in range(6):
            _, _, addr = await ctx.tick().sample(dut.axi.araddr)
            grants.append(addr)
        seen["grants"] = grants
        # Last grant: port 0. Port 2 asks and waits; then port 1 (nearer after 0) asks.
        for k in (0, 1):
            ctx.set(dut.ports[k].arvalid, 0)
        ctx.set(dut.axi.arready, 0)
        await ctx.tick().repeat(2)
        waiting = [ctx.get(dut.axi.araddr)]
        ctx.set(dut.ports[1].arvalid, 1)
        await ctx.tick()
        waiting.append(ctx.get(dut.axi.araddr))
        ctx.set(dut.axi.arready, 1)
        waiting.append((ctx.get(dut.ports[1].arready), ctx.get(dut.ports[2].arready)))
        seen["waiting"] = waiting

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["grants"] == [0x200, 0x300, 0x100, 0x200, 0x300, 0x100]
    assert seen["waiting"] == [0x300, 0x300, (0, 1)]


# The Relocator alone ----------------------------------------------------------------
def random_regions(rng, nbytes, *, size_range=(0, 6000), wrap=False):
    """Region boundaries (some kinds may be empty), bases, image and pitches."""
    sizes = [int(rng.integers(*size_range)) // nbytes * nbytes for _ in REGION_KINDS]
    bounds = np.cumsum(sizes).tolist()
    top = MASK64 if wrap else 1 << 40
    return {"scratch_at": bounds[0], "input_at": bounds[1], "output_at": bounds[2],
            "end": bounds[3],
            "base": [int(rng.integers(0, top, dtype=np.uint64)) for _ in REGION_KINDS],
            "image": int(rng.integers(0, 1 << 16)),
            "input_pitch": int(rng.integers(0, 1 << 32, dtype=np.uint64)),
            "output_pitch": int(rng.integers(0, 1 << 32, dtype=np.uint64))}


def test_relocator_against_model():
    """Random regions (bases near 2**64 wrap around), requests in every kind, at and
    past the end and across a kind's end, with random gaps and back-pressure; then
    ``clear``. Every request that goes out and the error flag follow the model."""
    from amaranth.sim import Simulator

    from moevit.sim.amaranth_tb import payload_bits

    seed = _seed()
    rng = np.random.default_rng(seed)
    dut = Relocator()
    regions = random_regions(rng, 16, wrap=True)
    end = regions["end"]
    requests = [(int(rng.integers(0, end + 64)), int(rng.integers(1, 700)))
                for _ in range(300)]
    good = [(a, n) for a, n in requests[:100] if relocate(regions, a, n) is not None]
    phases = [good, requests]
    expected = [[(relocate(regions, a, n), n) for a, n in phase
                 if relocate(regions, a, n) is not None] for phase in phases]
    got = [[], []]
    flags = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    gaps = random.Random(seed)

    async def drive(ctx):
        from moevit.sim.streams import pack
        from moevit.hw.top.interconnect import relocation_layout

        ctx.set(payload_bits(dut.regions), pack(relocation_layout(), regions))
        await ctx.tick().repeat(2)
        for phase in phases:
            for addr, length in phase:
                while gaps.random() < 0.3:
                    await ctx.tick()
                ctx.set(dut.i.payload.addr, addr)
                ctx.set(dut.i.payload.length, length)
                ctx.set(dut.i.valid, 1)
                await ctx.tick().until(dut.i.ready)
                ctx.set(dut.i.valid, 0)
            await ctx.tick().repeat(40)
            flags.append(ctx.get(dut.error))
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        await ctx.tick()
        flags.append(ctx.get(dut.error))

    async def take(ctx):
        stall = random.Random(seed + 1)
        while True:
            ready = stall.random() >= 0.3
            ctx.set(dut.o.ready, ready)
            _, _, valid, addr, length, error = await ctx.tick().sample(
                dut.o.valid, dut.o.payload.addr, dut.o.payload.length, dut.error)
            if valid and ready:
                got[len(flags)].append((addr, length))

    sim.add_testbench(take, background=True)
    sim.add_testbench(drive)
    sim.run()
    assert got == expected
    bad = any(relocate(regions, a, n) is None for a, n in requests)
    assert bad
    assert flags == [0, 1, 0]


# Relocators, movers and arbiters on one memory ----------------------------------------
def interconnect_case(rng, nbytes, reads, writes, per_port, *, bad=0.1):
    """A host memory with the four buffers placed at random, the relocators' registers,
    and per port its requests (reads from weights and input, writes to disjoint pieces
    of scratch and output). Returns ``(memory, regions, reads, writes, expected memory,
    expected reads)``."""
    regions = random_regions(rng, nbytes, size_range=(nbytes, 6000))
    images = int(rng.integers(1, 4))
    bounds = [0, regions["scratch_at"], regions["input_at"], regions["output_at"],
              regions["end"]]
    sizes = [bounds[k + 1] - bounds[k] for k in range(4)]
    regions["image"] = int(rng.integers(0, images))
    for k, name in ((2, "input_pitch"), (3, "output_pitch")):
        regions[name] = sizes[k] + int(rng.integers(0, 4)) * nbytes
    buffers = [sizes[0], sizes[1], regions["input_pitch"] * images,
               regions["output_pitch"] * images]
    at, bases = 0, [0] * 4
    for k in rng.permutation(4):
        at += int(rng.integers(0, 8)) * nbytes
        bases[k] = at
        at += buffers[k]
    regions["base"] = bases
    memory = rng.integers(0, 256, at + nbytes, dtype=np.uint8)

    def bad_request():
        if rng.random() < 0.5:  # at or past the end
            return bounds[4] + int(rng.integers(0, 64)) * nbytes, int(rng.integers(1, 300))
        k = int(rng.integers(1, 5))  # across the end of kind k - 1
        back = int(rng.integers(1, 8)) * nbytes
        return max(0, bounds[k] - back), back + int(rng.integers(1, 300))

    def piece(k):
        start = bounds[k] + int(rng.integers(0, sizes[k] // nbytes)) * nbytes
        return start, int(rng.integers(1, min(bounds[k + 1] - start, 900) + 1))

    read_ports, expected_reads = [], []
    for _ in range(reads):
        port, got = [], []
        for _ in range(per_port):
            if rng.random() < bad:
                port.append((*bad_request(), False))
                continue
            addr, length = piece(int(rng.choice([0, 2])))
            port.append((addr, length, True))
            host = relocate(regions, addr, length)
            got.append(memory[host:host + length].tobytes().hex())
        read_ports.append(port)
        expected_reads.append(got)

    # Writes: scratch and output cut into aligned pieces, dealt to the ports.
    pieces = []
    for k in (1, 3):
        start = bounds[k]
        while start < bounds[k + 1]:
            length = int(rng.integers(1, min(bounds[k + 1] - start, 900) + 1))
            if rng.random() < 0.7:
                pieces.append((start, length))
            start += -(-length // nbytes) * nbytes
    rng.shuffle(pieces)
    want = memory.copy()
    write_ports = [[] for _ in range(writes)]
    for n, (addr, length) in enumerate(pieces[:writes * per_port]):
        payload = rng.integers(0, 256, length, dtype=np.uint8)
        host = relocate(regions, addr, length)
        want[host:host + length] = payload
        write_ports[n % writes].append((addr, length, payload.tobytes()))
    for port in write_ports:
        for _ in range(int(rng.binomial(len(port), bad))):
            port.insert(int(rng.integers(0, len(port) + 1)), (*bad_request(), None))
    return memory, regions, read_ports, write_ports, want, expected_reads


def check_interconnect(seed, data_width, max_outstanding, reads, writes, per_port, *,
                       test_id, simulator=None, pauses="random"):
    rng = np.random.default_rng(seed)
    memory, regions, read_ports, write_ports, want, expected_reads = interconnect_case(
        rng, data_width // 8, reads, writes, per_port)
    got, summary = run_interconnect(data_width, max_outstanding, memory, regions, read_ports,
                                    write_ports, test_id=test_id, seed=seed,
                                    simulator=simulator, pauses=pauses)
    moved = sum(n for port in read_ports for _, n, good in port if good) \
        + sum(n for port in write_ports for _, n, d in port if d is not None)
    print(f"{reads} read and {writes} write ports, {moved} bytes in {summary['cycles']} cycles "
          f"({summary['seconds']:.1f} s)")
    for k, (port, received) in enumerate(zip(expected_reads, summary["received"])):
        for r, (a, b) in enumerate(zip(port, received)):
            assert a == b, f"read port {k}, request {r}: bytes differ"
    assert summary["r_error"] == [int(any(not g for *_, g in port)) for port in read_ports]
    assert summary["w_error"] == [int(any(d is None for *_, d in port)) for port in write_ports]
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} bytes differ, first at {bad[0]:#x}"


@pytest.mark.parametrize("data_width,pauses", [(128, "random"), (32, "fixed")])
def test_interconnect_concurrent_ports(data_width, pauses):
    seed = _seed()
    check_interconnect(seed, data_width, 3, reads=4, writes=3, per_port=6, pauses=pauses,
                       test_id=f"interconnect-{data_width}-{pauses}")


@pytest.mark.slow
@pytest.mark.parametrize("case", range(4))
def test_interconnect_random_design_points(case):
    """More ports, widths and outstanding limits, longer runs (Verilator)."""
    seed = _seed()
    rng = np.random.default_rng(seed)
    check_interconnect(seed, int(rng.choice([32, 64, 128, 256, 512])),
                       int(rng.integers(1, 9)), reads=int(rng.integers(1, 9)),
                       writes=int(rng.integers(1, 6)), per_port=20, simulator="verilator",
                       pauses=str(rng.choice(["none", "fixed", "random"])),
                       test_id=f"interconnect-point-{case}")
