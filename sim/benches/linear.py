"""cocotb bench of the linear kernel (``moevit.hw.units.linear.LinearKernel``).

The case (``$MOEVIT_CASE``, an ``.npz`` written by :func:`write_case`) holds
the HwConfig and one or more *runs*, simulated one after the other on the
same design without a reset between them (each starts when the previous one
left the kernel idle). A run is a sequence of operations sent back to back
with its own pause patterns: gaps on every input stream (``desc`` included,
each stream its own fixed pattern or seeded random one) and back-pressure on
the output. An operation is a descriptor with its operands, or a raw
descriptor the kernel must skip (``bad``: only its descriptor beat is sent).

Per run the bench writes ``y<run>_<op>.npy`` (each good operation's output,
decoded by :func:`~moevit.hw.units.linear.linear_output`, which checks the
``last`` flags and that padding lanes are 0) and, in ``summary.json``:
``cycles`` per operation (from the run's first descriptor's acceptance, or
the previous operation's last beat, to the operation's last beat), the
``stalls`` counters accrued per operation, and the nonzero ``errors`` the
kernel raised. It fails when a beat follows a run's last one, when the
kernel is still busy after it, or when an input beat is left over. The pytest
side compares the outputs with the golden model.
"""

import json
import os
from pathlib import Path

import numpy as np

from moevit.sim.benches.common import CLOCK_NS

__all__ = ["write_case", "read_case", "CLOCK_NS", "QUIET_CYCLES"]

OPERANDS = ("x", "weight", "bias", "multiplier", "shift", "skip")
INPUTS = ("desc", "x", "w", "chan", "res")
QUIET_CYCLES = 48  # after a run's last beat: longer than the kernel's pipeline


def write_case(path, hw, runs):
    """Write a case file.

    Parameters
    ----------
    path : path
    hw : HwConfig
    runs : list of dict
        Each with ``ops``: a list of dicts with ``desc`` (LinearDescriptor) and
        ``x``, ``weight``, ``bias``, ``multiplier``, ``shift`` and optionally
        ``skip``; or with ``bad``, the integer image of a descriptor the kernel
        must skip. Optional: ``gaps`` and ``stall`` (pause kinds of
        :func:`moevit.sim.streams.pauses`, default ``"none"``), their
        probabilities ``gap_probability`` and ``stall_probability`` (0.3) and
        ``seed`` (0).
    """
    arrays = {}
    meta = {"hw": hw.to_dict(), "runs": []}
    for r, run in enumerate(runs):
        spec = {key: run.get(key, default) for key, default in (
            ("gaps", "none"), ("stall", "none"), ("gap_probability", 0.3),
            ("stall_probability", 0.3), ("seed", 0))}
        spec["ops"] = []
        for k, op in enumerate(run["ops"]):
            if "bad" in op:
                spec["ops"].append({"bad": hex(op["bad"])})
                continue
            spec["ops"].append({"words": op["desc"].pack()})
            for name in OPERANDS:
                if op.get(name) is not None:
                    arrays[f"{name}{r}_{k}"] = np.asarray(op[name])
        meta["runs"].append(spec)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return Path(path)


def read_case(path):
    """``(hw, runs)`` from a case file (as for :func:`write_case`)."""
    from moevit.hw.config import HwConfig
    from moevit.hw.program.descriptor import LinearDescriptor

    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        hw = HwConfig.from_dict(meta["hw"])
        runs = []
        for r, spec in enumerate(meta["runs"]):
            ops = []
            for k, item in enumerate(spec.pop("ops")):
                if "bad" in item:
                    ops.append({"bad": int(item["bad"], 16)})
                    continue
                op = {"desc": LinearDescriptor.unpack(hw, item["words"])}
                for name in OPERANDS:
                    if f"{name}{r}_{k}" in data:
                        op[name] = data[f"{name}{r}_{k}"]
                ops.append(op)
            runs.append(dict(spec, ops=ops))
    return hw, runs


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles, with_timeout
    from cocotb.utils import get_sim_time

    from moevit.hw.units.linear import STALL_CAUSES, linear_output, linear_streams, stalls_layout
    from moevit.sim.benches.common import start
    from moevit.sim.streams import StreamSink, StreamSource, pauses, unpack

    def _stalls(dut):
        return unpack(stalls_layout(), dut.stalls.value)

    async def _watch_errors(dut, errors):
        while True:
            await dut.error.value_change
            if int(dut.error.value):
                errors.append(int(dut.error.value))

    async def _run(dut, run, out, r):
        seed = run["seed"]
        streams = [linear_streams(op["desc"], op["x"], op["weight"], op["bias"],
                                  op["multiplier"], op["shift"], op.get("skip"))
                   if "desc" in op else {"desc": [op["bad"]]} for op in run["ops"]]
        sources = {name: StreamSource(dut, name, dut.clk, record_times=name == "desc",
                                      pause=pauses(run["gaps"], seed=seed, stream=name,
                                                   probability=run["gap_probability"]))
                   for name in INPUTS}
        stall = None if run["stall"] == "none" else pauses(
            run["stall"], seed=seed, stream="y", probability=run["stall_probability"])
        sink = StreamSink(dut, "y", dut.clk, pause=stall)
        errors = []
        watcher = cocotb.start_soon(_watch_errors(dut, errors))
        for s in streams:
            for name, beats in s.items():
                sources[name].send(beats)

        # Cycles: from the first descriptor's acceptance to each last beat.
        cycles, stalls, total, since = [], [], 0, None
        before = _stalls(dut)
        for k, op in enumerate(run["ops"]):
            if "bad" in op:
                continue
            beats = op["desc"].out_tiles * op["desc"].tokens
            total += beats
            # A generous bound, so that a kernel that loses a beat fails, not hangs.
            limit = 100 * op["desc"].expected_cycles() + 10_000
            await with_timeout(sink.receive(total), limit * CLOCK_NS, "ns")
            now = get_sim_time(unit="ns")
            since = sources["desc"].times[0] if since is None else since
            cycles.append(round((now - since) / CLOCK_NS))
            since = now
            counters = _stalls(dut)
            stalls.append({c: (counters[c] - before[c]) % 2**32 for c in STALL_CAUSES})
            before = counters
            np.save(out / f"y{r}_{k}.npy", linear_output(op["desc"], sink.beats[total - beats:]))
        for source in sources.values():
            await source.wait()
        await ClockCycles(dut.clk, QUIET_CYCLES)
        assert len(sink.beats) == total, (
            f"run {r}: {len(sink.beats) - total} beats followed the last one")
        assert not int(dut.busy.value), f"run {r}: the kernel is still busy after its last beat"
        for source in sources.values():
            source.stop()
        sink.stop()
        watcher.cancel()
        return {"cycles": cycles, "stalls": stalls, "errors": errors}

    @cocotb.test()
    async def linear_runs(dut):
        hw, runs = read_case(os.environ["MOEVIT_CASE"])
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        await start(dut)
        summary = []
        for r, run in enumerate(runs):
            summary.append(await _run(dut, run, out, r))
        (out / "summary.json").write_text(json.dumps(summary))
