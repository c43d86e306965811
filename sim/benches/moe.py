"""cocotb bench of the MoE unit (``moevit.hw.units.moe.MoeUnit``).

The case (``$MOEVIT_CASE``, a JSON file written by :func:`write_case`) holds
the HwConfig and *runs*, simulated one after the other on one design without
a reset between them. A run is a sequence of operations sent back to back
with its own pause patterns (gaps on ``desc``, ``logits`` and ``fc2``, each
its own; back-pressure on ``lists`` and ``y``). An operation is a descriptor
with its logits and its experts' fc2 outputs (in the golden model's expert
order), or a raw descriptor the unit must skip (``bad``).

The bench only records: per run, ``summary.json`` holds each good
operation's ``lists`` and ``y`` beats (hex), its ``cycles`` (from its
descriptor's acceptance to its last beat on either output) and the nonzero
``errors`` the unit raised. It fails when a beat follows a run's last one,
when the unit is still busy after it, or when an input beat is left over.
The pytest side (``tests/test_sim_moe.py``) compares with the golden model.
"""

import json
import os
from pathlib import Path

__all__ = ["write_case", "QUIET_CYCLES"]

INPUTS = ("desc", "logits", "fc2")
OUTPUTS = ("lists", "y")
QUIET_CYCLES = 32  # after a run's last beat: longer than the unit's pipelines


def write_case(path, hw, runs):
    """Write a case file.

    ``runs``: dicts with ``ops`` (each ``{"streams": moe_streams(...),
    "beats": {"lists": n, "y": n}}`` or ``{"bad": int}``) and optionally
    ``gaps``, ``stall`` (pause kinds), ``gap_probability``, ``stall_probability``
    and ``seed``.
    """
    meta = {"hw": hw.to_dict(), "runs": []}
    for run in runs:
        spec = {key: run.get(key, default) for key, default in (
            ("gaps", "none"), ("stall", "none"), ("gap_probability", 0.3),
            ("stall_probability", 0.3), ("seed", 0))}
        spec["ops"] = [{"bad": hex(op["bad"])} if "bad" in op else
                       {"streams": {k: [hex(b) for b in v] for k, v in op["streams"].items()},
                        "beats": op["beats"]} for op in run["ops"]]
        meta["runs"].append(spec)
    Path(path).write_text(json.dumps(meta))
    return Path(path)


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.triggers import ClockCycles, with_timeout
    from cocotb.utils import get_sim_time

    from moevit.sim.benches.common import CLOCK_NS, start
    from moevit.sim.streams import StreamSink, StreamSource, pauses

    async def _watch_errors(dut, errors):
        while True:
            await dut.error.value_change
            if int(dut.error.value):
                errors.append(int(dut.error.value))

    async def _run(dut, run, r):
        seed = run["seed"]
        sources = {name: StreamSource(dut, name, dut.clk, record_times=name == "desc",
                                      pause=pauses(run["gaps"], seed=seed, stream=name,
                                                   probability=run["gap_probability"]))
                   for name in INPUTS}
        sinks = {name: StreamSink(dut, name, dut.clk, pause=None if run["stall"] == "none" else
                                  pauses(run["stall"], seed=seed, stream=name,
                                         probability=run["stall_probability"]))
                 for name in OUTPUTS}
        errors = []
        watcher = cocotb.start_soon(_watch_errors(dut, errors))
        for op in run["ops"]:
            streams = op["streams"] if "streams" in op else {"desc": [op["bad"]]}
            for name, beats in streams.items():
                sources[name].send(int(b, 16) for b in beats)

        results, totals, taken = [], {name: 0 for name in OUTPUTS}, 0
        for op in run["ops"]:
            taken += 1  # its descriptor
            if "bad" in op:
                continue
            got = {}
            for name in OUTPUTS:
                start_beat = totals[name]
                totals[name] += op["beats"][name]
                await with_timeout(sinks[name].receive(totals[name]), 10_000_000, "ns")
                got[name] = [hex(b) for b in sinks[name].beats[start_beat:totals[name]]]
            now = get_sim_time(unit="ns")
            since = sources["desc"].times[taken - 1]
            results.append(dict(got, cycles=round((now - since) / CLOCK_NS)))
        for source in sources.values():
            await source.wait()
        await ClockCycles(dut.clk, QUIET_CYCLES)
        for name in OUTPUTS:
            extra = len(sinks[name].beats) - totals[name]
            assert not extra, f"run {r}: {extra} {name} beats followed the last one"
        assert not int(dut.busy.value), f"run {r}: the unit is still busy after its last beat"
        for part in (*sources.values(), *sinks.values()):
            part.stop()
        watcher.cancel()
        return {"ops": results, "errors": errors}

    @cocotb.test()
    async def moe_runs(dut):
        meta = json.loads(Path(os.environ["MOEVIT_CASE"]).read_text())
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        await start(dut)
        summary = [await _run(dut, run, r) for r, run in enumerate(meta["runs"])]
        (out / "summary.json").write_text(json.dumps(summary))
