"""The engine bench: one instruction engine, its movers and a memory, instructions back to back.

:func:`run_engine` wraps an engine in :class:`~moevit.hw.top.ports.EngineShell`
(a read mover per read channel, a write mover, each on its own AXI4 port),
loads a memory image into one memory behind cocotbext-axi's ``AxiRamRead``
and ``AxiRamWrite`` models (one per port), hands the engine its descriptors one after another (each when the
previous one is done and its writes are answered) and returns the memory
image after the run with the cycles of each instruction. The caller
compares the image with the instruction-level interpreter's
(:mod:`moevit.hw.program.interpreter`), byte for byte, in full.

The memory can be slowed (``memory="fixed"|"random"``: each AXI channel of
each port pauses on its own pattern, seeded), and the descriptor stream
given gaps (``gaps``), so the engines are tried under back-pressure.
"""

import json
import os
import random
from pathlib import Path

import numpy as np

__all__ = ["run_engine", "replay_seed", "compare_images", "TOPLEVEL"]

TOPLEVEL = "moevit_engine"


def replay_seed() -> int:
    """``$MOEVIT_SEED``, else a fresh random seed; printed, so a failure can be replayed."""
    seed = int(os.environ.get("MOEVIT_SEED", random.randrange(1 << 16)))
    print(f"seed {seed} (replay with MOEVIT_SEED={seed})")
    return seed


def compare_images(got, want, what="memory", layout=None, base=0):
    """Two byte images equal, or an error naming how many bytes differ, the first one, and
    (given the program's ``layout`` and the images' first address ``base``) the regions."""
    bad = np.flatnonzero(np.asarray(got) != np.asarray(want))
    if bad.size == 0:
        return
    first = int(bad[0])
    where = ""
    if layout is not None:
        names = sorted({layout.at(base + int(k)).name for k in bad})
        where = f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
    raise AssertionError(f"{what}{where}: {bad.size} of {np.size(got)} bytes differ, first at "
                         f"+{first:#x}: {got[first]} != {want[first]}")


def run_engine(engine, hw, memory, descriptors, *, test_id, simulator=None, seed=0,
               gaps="none", memory_pauses="none", probability=0.3, timeout_cycles=2_000_000):
    """Run ``descriptors`` (payload integers of the engine's ``desc`` layout) on
    ``engine`` (an engine component for ``hw``) over ``memory`` (a uint8 array).

    Returns ``(memory_after, summary)``: the summary has ``cycles`` (per
    instruction, from its descriptor's acceptance to its last write response),
    ``errors`` (the engine's ``error`` at each ``done``), ``reads`` (per
    instruction, its read bursts as ``[channel, address, bytes]``) and ``seconds``.
    """
    from moevit.hw.generate import to_verilog

    from moevit.hw.top.ports import EngineShell
    from moevit.paths import build_dir
    from moevit.sim.runner import run_cocotb, sim_folder

    folder = build_dir("sim", "_rtl", sim_folder(test_id).name)
    source = folder / f"{TOPLEVEL}.v"
    shell = EngineShell(engine, hw)
    source.write_text(to_verilog(shell, TOPLEVEL))
    image = (folder / "memory.bin").resolve()
    np.asarray(memory, np.uint8).tofile(image)
    case = {"reads": len(engine.rd), "data_width": hw.bus_width, "memory": str(image),
            "size": int(len(memory)), "descriptors": [int(d) for d in descriptors],
            "seed": int(seed), "gaps": gaps, "memory_pauses": memory_pauses,
            "probability": float(probability), "timeout_cycles": int(timeout_cycles)}
    result = run_cocotb(toplevel=TOPLEVEL, sources=[source], test_module=__name__,
                        test_id=test_id, simulator=simulator,
                        env={"MOEVIT_CASE": json.dumps(case)})
    after = np.fromfile(result.output("memory.bin"), np.uint8)
    summary = result.json("summary.json")
    summary["seconds"] = result.seconds
    return after, summary


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
    from cocotbext.axi import AxiRamRead, AxiRamWrite, AxiReadBus, AxiWriteBus
    from cocotbext.axi.memory import Memory

    from moevit.sim.benches.common import start
    from moevit.sim.streams import pauses

    def memory(dut, case):
        """One memory; an ``AxiRamRead`` on each read port of the shell, an
        ``AxiRamWrite`` on its write port."""
        mem = Memory(size=case["size"])
        models = {f"m_axi_rd{k}": AxiRamRead(AxiReadBus.from_prefix(dut, f"m_axi_rd{k}"),
                                              dut.clk, mem=mem.mem)
                  for k in range(case["reads"])}
        models["m_axi_wr"] = AxiRamWrite(AxiWriteBus.from_prefix(dut, "m_axi_wr"), dut.clk,
                                         mem=mem.mem)
        if case["memory_pauses"] != "none":
            for name, model in models.items():
                channels = ("ar", "r") if name != "m_axi_wr" else ("aw", "w", "b")
                for channel in channels:
                    getattr(model, f"{channel}_channel").set_pause_generator(pauses(
                        case["memory_pauses"], seed=case["seed"], stream=f"{name}.{channel}",
                        probability=case["probability"]))
        return mem

    async def record_reads(dut, case, bursts):
        """Append ``[channel, address, bytes]`` to ``bursts`` for every AR taken."""
        ports = [(k, f"m_axi_rd{k}") for k in range(case["reads"])]
        nbytes = case["data_width"] // 8
        while True:
            await RisingEdge(dut.clk)
            for k, name in ports:
                if int(getattr(dut, f"{name}_arvalid").value) and \
                        int(getattr(dut, f"{name}_arready").value):
                    beats = int(getattr(dut, f"{name}_arlen").value) + 1
                    bursts.append([k, int(getattr(dut, f"{name}_araddr").value), beats * nbytes])

    @cocotb.test()
    async def engine_runs(dut):
        case = json.loads(os.environ["MOEVIT_CASE"])
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        dut.desc__valid.value = 0
        await start(dut)
        mem = memory(dut, case)
        mem.write(0, Path(case["memory"]).read_bytes())
        await ClockCycles(dut.clk, 2)
        gap = pauses(case["gaps"], seed=case["seed"], stream="desc",
                     probability=case["probability"])
        cycles, errors, reads, bursts = [], [], [], []
        cocotb.start_soon(record_reads(dut, case, bursts))
        for k, payload in enumerate(case["descriptors"]):
            while next(gap):
                await RisingEdge(dut.clk)
            dut.desc__payload.value = payload
            dut.desc__valid.value = 1
            await ReadOnly()
            while not int(dut.desc__ready.value):
                await RisingEdge(dut.clk)
                await ReadOnly()
            await RisingEdge(dut.clk)
            dut.desc__valid.value = 0
            taken = 1
            await ReadOnly()
            while not int(dut.done.value):
                await RisingEdge(dut.clk)
                await ReadOnly()
                taken += 1
                assert taken < case["timeout_cycles"], \
                    f"instruction {k}: no done after {taken} cycles"
            errors.append(int(dut.error.value))
            while int(dut.wr_busy.value):
                await RisingEdge(dut.clk)
                await ReadOnly()
                taken += 1
                assert taken < case["timeout_cycles"], \
                    f"instruction {k}: writes unanswered after {taken} cycles"
            cycles.append(taken)
            reads.append(list(bursts))
            bursts.clear()
            await RisingEdge(dut.clk)
        (out / "memory.bin").write_bytes(mem.read(0, case["size"]))
        (out / "summary.json").write_text(json.dumps({"cycles": cycles, "errors": errors,
                                                         "reads": reads}))
