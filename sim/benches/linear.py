"""cocotb bench of the linear kernel (``moevit.hw.linear.LinearKernel``).

The case (``$MOEVIT_CASE``, an ``.npz`` written by :func:`write_case`) holds
the HwConfig, one or more operations (descriptor words and operands) run
back to back, and the pause patterns. The bench drives every stream with its
pattern, collects the outputs and writes ``y<k>.npy`` per operation and
``cycles.json`` (cycles per operation, from the first descriptor's
acceptance, or the previous operation's last beat, to the operation's last
beat) into ``$MOEVIT_SIM_OUT``; the pytest side compares with the golden
model.
"""

import json
import os
from pathlib import Path

import numpy as np

from moevit.sim.benches.common import CLOCK_NS

__all__ = ["write_case", "read_case", "CLOCK_NS"]


def write_case(path, hw, ops, *, gaps="none", stall="none", seed=0):
    """Write a case file.

    Parameters
    ----------
    path : path
    hw : HwConfig
    ops : list of dict
        Each with ``desc`` (LinearDescriptor) and ``x``, ``weight``, ``bias``,
        ``multiplier``, ``shift`` and optionally ``skip``.
    gaps, stall : str
        Pause kinds (:func:`moevit.sim.streams.pauses`) of the inputs and of
        the output.
    """
    arrays = {}
    meta = {"hw": hw.to_dict(), "gaps": gaps, "stall": stall, "seed": seed, "ops": []}
    for k, op in enumerate(ops):
        meta["ops"].append(op["desc"].pack())
        for name in ("x", "weight", "bias", "multiplier", "shift", "skip"):
            if op.get(name) is not None:
                arrays[f"{name}{k}"] = np.asarray(op[name])
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return Path(path)


def read_case(path):
    """``(hw, ops, meta)`` from a case file (ops as for :func:`write_case`)."""
    from moevit.hw.config import HwConfig
    from moevit.hw.descriptor import LinearDescriptor

    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        hw = HwConfig.from_dict(meta["hw"])
        ops = []
        for k, words in enumerate(meta["ops"]):
            op = {"desc": LinearDescriptor.unpack(hw, words)}
            for name in ("x", "weight", "bias", "multiplier", "shift", "skip"):
                if f"{name}{k}" in data:
                    op[name] = data[f"{name}{k}"]
            ops.append(op)
    return hw, ops, meta


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    from cocotb.utils import get_sim_time

    from moevit.hw.linear import linear_output, linear_streams
    from moevit.sim.benches.common import start
    from moevit.sim.streams import StreamSink, StreamSource, pauses

    @cocotb.test()
    async def linear_matches_golden(dut):
        hw, ops, meta = read_case(os.environ["MOEVIT_CASE"])
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        seed, gaps, stall = meta["seed"], meta["gaps"], meta["stall"]
        await start(dut)

        streams = [linear_streams(op["desc"], op["x"], op["weight"], op["bias"],
                                  op["multiplier"], op["shift"], op.get("skip"))
                   for op in ops]
        sources = {}
        for k, name in enumerate(("desc", "x", "w", "chan", "res")):
            pause = pauses(gaps, seed=seed * 16 + k) if name != "desc" else None
            sources[name] = StreamSource(dut, name, dut.clk, pause=pause,
                                         record_times=name == "desc")
        sink = StreamSink(dut, "y", dut.clk,
                          pause=None if stall == "none" else pauses(stall, seed=seed * 16 + 9))
        for s in streams:
            for name, source in sources.items():
                source.send(s[name])

        # Cycle counts: from the first descriptor's acceptance to each last beat.
        cycles, total, since = [], 0, None
        for k, op in enumerate(ops):
            beats = op["desc"].out_tiles * op["desc"].tokens
            total += beats
            await sink.receive(total)
            now = get_sim_time(unit="ns")
            since = sources["desc"].times[0] if since is None else since
            cycles.append(round((now - since) / CLOCK_NS))
            since = now
            y = linear_output(op["desc"], sink.beats[total - beats:total])
            np.save(out / f"y{k}.npy", y)
        for source in sources.values():
            await source.wait()
        (out / "cycles.json").write_text(json.dumps(cycles))
