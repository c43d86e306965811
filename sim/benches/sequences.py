"""cocotb bench: sequences of operations back to back, for any unit built on streams.

One bench serves the attention kernel, softmax, LayerNorm and GELU. The case
(written by :func:`moevit.sim.units.write_sequences`) names the unit's input
and output streams and holds, per operation, the beats of every stream: the
inputs to send (the descriptor is one of them) and the golden model's outputs.
The operations are grouped into sequences; each sequence sets its constant
ports, sends all its operations at once (so they run back to back) and gives
every stream its own pause pattern (gaps on the inputs, the descriptor
included; back-pressure on the outputs). Sequences run one after the other in
the same simulation, each once the previous one's last output has left.

For each operation the bench records the cycle of its last output beat,
counted from the sequence's first beat on the ``origin`` stream (the
descriptor, or the first input), and compares every output beat with the
golden model's, in full. Per sequence it counts, for each output under
pauses, the cycles the unit held a beat that back-pressure kept from leaving
(``valid`` and not ``ready``), so a test can tell that back-pressure really
stopped the unit, and fails if ``busy`` is ever low while a beat waits. After the last sequence it waits and checks that nothing
follows the last beat, and that ``busy`` (where the unit has one) has
fallen.
"""

import json
import os
from pathlib import Path

__all__ = ["Switch", "pause_pattern"]

# Cycles the bench watches the outputs after the last expected beat.
QUIET_CYCLES = 64


def pause_pattern(spec, seed):
    """The endless pause pattern of a spec ``{"kind": ..., "pattern": [...]}``."""
    from moevit.sim.streams import pauses

    return pauses(spec["kind"], seed=seed, pattern=tuple(spec.get("pattern") or (False, True)))


class Switch:
    """A pause pattern that the bench changes between sequences (an iterator of bool)."""

    def __init__(self):
        self.pattern = iter(())
        self.set({"kind": "none"}, 0)

    def set(self, spec, seed):
        self.pattern = pause_pattern(spec, seed)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.pattern)


try:
    import cocotb
except ImportError:  # imported outside a simulation
    cocotb = None

if cocotb is not None:
    import numpy as np
    from cocotb.triggers import ClockCycles, RisingEdge
    from cocotb.utils import get_sim_time

    from moevit.sim.benches.common import CLOCK_NS, check, start
    from moevit.sim.streams import StreamSink, StreamSource

    async def watch(dut, outputs, held, idle_with_beat):
        """Until cancelled: count, per output, the cycles a beat waits on back-pressure,
        and the cycles ``busy`` is low while an output still holds a beat."""
        ports = {name: (getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready"))
                 for name in outputs}
        busy = getattr(dut, "busy", None)
        edge = RisingEdge(dut.clk)
        while True:
            await edge
            for name, (valid, ready) in ports.items():
                if int(valid.value) and not int(ready.value):
                    held[name] += 1
                    if busy is not None and not int(busy.value):
                        idle_with_beat.append(get_sim_time("ns"))

    @cocotb.test()
    async def sequences_match_golden(dut):
        case = json.loads(os.environ["MOEVIT_CASE"])
        arrays = np.load(case["data"], allow_pickle=False)
        await start(dut)
        switches = {name: Switch() for name in case["inputs"] + case["outputs"]}
        sources = {name: StreamSource(dut, name, dut.clk, pause=switches[name],
                                      record_times=name == case["origin"])
                   for name in case["inputs"]}
        sinks = {name: StreamSink(dut, name, dut.clk, pause=switches[name])
                 for name in case["outputs"]}
        received = {name: 0 for name in case["outputs"]}
        cycles, held = [], []
        for number, sequence in enumerate(case["sequences"]):
            held.append({name: 0 for name in case["outputs"]})
            # Only an output under pauses can be held (watching wakes the bench every cycle).
            paused = [name for name in case["outputs"]
                      if sequence["pauses"][name]["kind"] != "none"]
            idle_with_beat = []
            watcher = (cocotb.start_soon(watch(dut, paused, held[-1], idle_with_beat))
                       if paused else None)
            for port, value in sequence.get("ports", {}).items():
                getattr(dut, port).value = value
            for k, name in enumerate(switches):
                switches[name].set(sequence["pauses"][name], case["seed"] * 1009 + number * 31 + k)
            origin = len(sources[case["origin"]].times)
            for op in sequence["ops"]:
                for name, source in sources.items():
                    source.send(int(b) for b in arrays[f"{name}.{op}"])
            ends = []
            for op in sequence["ops"]:
                for name, sink in sinks.items():
                    want = [int(b) for b in arrays[f"{name}.{op}.expected"]]
                    await sink.receive(received[name] + len(want))
                    got = sink.beats[received[name]:received[name] + len(want)]
                    received[name] += len(want)
                    check(got, want, f"sequence {number} operation {op} stream {name}")
                ends.append(get_sim_time("ns"))
            if watcher:
                watcher.cancel()
            assert not idle_with_beat, (
                f"sequence {number}: busy low while an output still held a beat, "
                f"{len(idle_with_beat)} cycles from {idle_with_beat[0]} ns")
            t0 = sources[case["origin"]].times[origin]
            cycles.append([round((t - t0) / CLOCK_NS) for t in ends])
            for source in sources.values():
                await source.wait()
        for switch in switches.values():
            switch.set({"kind": "none"}, 0)
        await ClockCycles(dut.clk, QUIET_CYCLES)
        for name, sink in sinks.items():
            extra = len(sink.beats) - received[name]
            assert not extra, f"stream {name}: {extra} beats after the last expected one"
        if hasattr(dut, "busy"):
            assert not int(dut.busy.value), "busy still high after the last output"
        out = Path(os.environ["MOEVIT_SIM_OUT"])
        (out / "cycles.json").write_text(json.dumps(cycles))
        (out / "held.json").write_text(json.dumps(held))
        np.savez(out / "beats.npz", **{name: np.array([str(b) for b in sink.beats], dtype=str)
                                      for name, sink in sinks.items()})
