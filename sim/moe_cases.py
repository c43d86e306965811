"""Cases of the MoE unit: golden layers, random ones from one seed, the run and the check.

An *operation* is a :class:`~moevit.hw.program.descriptor.MoeDescriptor`, the gate
logits and each selected expert's fc2 output; its expected result is the
golden model's (:func:`~moevit.hw.units.moe.moe_reference`, or the tensors a
recorded ``golden.run`` kept). :func:`run_moe` simulates runs of operations
(:mod:`moevit.sim.benches.moe`), :func:`check_runs` compares every ``lists``
and ``y`` beat in full and, on runs without pauses, the cycles with
:meth:`~moevit.hw.program.descriptor.MoeDescriptor.expected_cycles`.
"""

import numpy as np

from moevit.hw.config import HwConfig
from moevit.hw.program.descriptor import MoeDescriptor
from moevit.hw.units.moe import (MoeReference, decode_lists, moe_reference,
                                 moe_streams)
from moevit.model.integer import intops
from moevit.sim.streams import PAUSE_KINDS

__all__ = ["make_op", "golden_ops", "random_hw", "random_logits", "random_op", "random_run",
           "run_moe", "check_runs"]


def make_op(desc, logits, expert_out, expected: MoeReference = None) -> dict:
    """An operation: its streams, its beat counts and the result it must give."""
    expected = expected or moe_reference(desc, logits, expert_out)
    order = sorted(expected.tokens)
    entries = desc.tokens * desc.top_k
    return {"desc": desc, "logits": logits, "expert_out": expert_out,
            "streams": moe_streams(desc, logits, expert_out, order),
            "beats": {"lists": len(order) + entries, "y": desc.out_tiles * desc.tokens},
            "expected": expected}


def golden_ops(hw, qmodel, image, tasks=None) -> list:
    """One operation per MoE layer and task, from a recorded golden run: the logits,
    the experts' fc2 outputs and the expected tensors are the golden model's own
    (``gate.topk``, ``gate.weights``, ``experts.{e}.tokens``, ``mlp.out``)."""
    from moevit.model.integer import golden

    config = qmodel.config
    ops = []
    for task in range(len(config.tasks)) if tasks is None else tasks:
        tensors = golden.run(qmodel, image, task).tensors
        for block in (i for i in range(config.depth) if config.is_moe(i)):
            p = f"blocks.{block}.mlp"
            desc = MoeDescriptor.for_layer(hw, qmodel, block, task)
            out = {e: tensors[f"{p}.experts.{e}.fc2.out"] for e in range(config.experts)
                   if f"{p}.experts.{e}.tokens" in tensors}
            tokens = {e: tensors[f"{p}.experts.{e}.tokens"] for e in out}
            expected = MoeReference(tensors[f"{p}.gate.topk"], tensors[f"{p}.gate.weights"],
                                    tokens, tensors[f"{p}.out"])
            op = make_op(desc, tensors[f"{p}.gate.logits"], out, expected)
            op["name"] = f"{p} task {task}"
            ops.append(op)
    return ops


def random_hw(rng, name="random") -> HwConfig:
    """A small design point: 1..32 lanes (the most experts), 1..48 tokens, outputs
    up to 3 beats wide."""
    cols = int(rng.choice([1, 2, 3, 4, 8, 16, 32]))
    rows = int(rng.integers(1, 5))
    post_lanes = int(rng.choice([p for p in (1, 2, 4) if cols % p == 0]))
    return HwConfig(name=name, rows=rows, cols=cols, post_lanes=post_lanes,
                    max_tokens=rows * int(rng.integers(1, 13)),
                    max_in=int(rng.integers(1, 3 * cols + 1)), out_depth=4)


def random_logits(rng, tokens, experts):
    """Gate logits with ties and the int8 extremes as often as ordinary values."""
    kind = rng.integers(4, size=tokens)
    logits = rng.integers(-128, 128, (tokens, experts))
    few = rng.choice([-128, -1, 0, 127, int(rng.integers(-128, 128))], (tokens, experts))
    logits = np.where((kind == 1)[:, None], few, logits)                  # many ties
    logits = np.where((kind == 2)[:, None], rng.choice([-128, 127]), logits)  # all equal
    return logits.astype(np.int8)


def random_op(hw, rng, *, tokens=None, dim=None, experts=None, top_k=None) -> dict:
    """A random operation within ``hw``: shape (the sizes not given), gate rule
    (vmoe when ``experts`` and ``top_k`` are given, the anchors' rule), constants
    (the extremes of their ranges some of the time), logits, fc2 outputs."""
    renorm = int(rng.integers(2)) if experts is None else 0
    experts = experts or int(rng.integers(1, hw.cols + 1))
    top_k = top_k or int(rng.integers(1, experts + 1))
    tokens = tokens or int(rng.integers(1, hw.max_tokens + 1))
    dim = dim or int(rng.integers(1, hw.max_in + 1))
    sm_mult, sm_shift = intops.softmax_constants(float(rng.choice([0.004, 0.02, 0.1, 0.3])))
    if rng.random() < 0.2:
        sm_mult, sm_shift = int(rng.choice([1, 2**15 - 1])), int(rng.choice([1, 47]))
    out_mult, out_shift = (int(v) for v in intops.quantize_multiplier(
        rng.uniform(0.3, 3.0) * 2.0**-intops.PROB_FRAC))
    if rng.random() < 0.2:
        out_mult, out_shift = int(rng.choice([1, 2**15 - 1])), int(rng.choice([1, 47]))
    desc = MoeDescriptor(hw, tokens=tokens, experts=experts, top_k=top_k,
                         renorm=renorm, dim=dim, sm_mult=int(sm_mult),
                         sm_shift=int(sm_shift), out_mult=out_mult, out_shift=out_shift)
    logits = random_logits(rng, tokens, experts)
    top = intops.topk(logits, top_k)
    out = {e: rng.integers(-128, 128, (int((top == e).sum()), dim)).astype(np.int8)
           for e in range(experts)}
    return make_op(desc, logits, out)


def random_run(hw, rng, *, ops=(1, 3), pauses=True) -> dict:
    run = dict(ops=[random_op(hw, rng) for _ in range(int(rng.integers(ops[0], ops[1] + 1)))],
               seed=int(rng.integers(2**31)))
    if pauses:
        run.update(gaps=str(rng.choice(PAUSE_KINDS)), stall=str(rng.choice(PAUSE_KINDS)),
                   gap_probability=round(float(rng.uniform(0.1, 0.7)), 2),
                   stall_probability=round(float(rng.uniform(0.1, 0.8)), 2))
    return run


def run_moe(hw, runs, *, test_id, simulator=None):
    """Simulate runs of operations on one build; returns the bench's summary."""
    from moevit.hw.generate import verilog_file
    from moevit.sim.benches.moe import write_case
    from moevit.sim.runner import run_cocotb, sim_folder

    folder = sim_folder(test_id)
    case = write_case(folder.parent / f"{folder.name}.json", hw, runs)
    result = run_cocotb(toplevel="moevit_moe", sources=[verilog_file("moe", hw)],
                        test_module="moevit.sim.benches.moe", test_id=test_id,
                        simulator=simulator, env={"MOEVIT_CASE": str(case)})
    return result.json("summary.json"), result


def _decode_y(desc, beats):
    from moevit.hw.units.linear import linear_output

    # The y beats are laid out as the linear kernel's output: its decoder checks
    # the last flag and the zero padding lanes.
    from moevit.hw.program.descriptor import LinearDescriptor

    shape = LinearDescriptor(desc.hw, tokens=desc.tokens, in_features=1, out_features=desc.dim)
    return linear_output(shape, beats)


def check_op(op, got, where):
    """The operation's ``lists`` and ``y`` beats equal to the golden result, in full."""
    desc, want = op["desc"], op["expected"]
    lists = decode_lists(desc, [int(b, 16) for b in got["lists"]])
    assert list(lists) == sorted(want.tokens), (
        f"{where}: listed experts {list(lists)} != {sorted(want.tokens)}")
    for e, (tokens, weights) in lists.items():
        np.testing.assert_array_equal(tokens, want.tokens[e], err_msg=f"{where}: expert {e} tokens")
        slots = np.argmax(want.topk[tokens] == e, axis=1)
        np.testing.assert_array_equal(weights, want.weights[tokens, slots],
                                      err_msg=f"{where}: expert {e} gate weights")
    y = _decode_y(desc, [int(b, 16) for b in got["y"]])
    bad = np.argwhere(y != want.out)
    assert bad.size == 0, (f"{where}: {len(bad)} of {y.size} outputs differ, first at "
                           f"{bad[0].tolist()}: {y[tuple(bad[0])]} != {want.out[tuple(bad[0])]}")
    return lists


def check_runs(runs, summary, what) -> int:
    """Every operation of every run checked (:func:`check_op`); on runs without
    pauses each operation's cycles equal the cost model's. Returns the number of
    operations timed."""
    timed = 0
    for r, (run, got) in enumerate(zip(runs, summary)):
        good = [op for op in run["ops"] if "bad" not in op]
        assert len(got["ops"]) == len(good), f"{what} run {r}: {len(got['ops'])} operations"
        quiet = run.get("gaps", "none") == "none" and run.get("stall", "none") == "none"
        for k, (op, result) in enumerate(zip(good, got["ops"])):
            where = f"{what} run {r} (seed {run.get('seed', 0)}) op {k} {op.get('name', '')}"
            lists = check_op(op, result, where)
            if quiet:
                model = op["desc"].expected_cycles(len(lists))
                assert result["cycles"] == model, (
                    f"{where}: simulated {result['cycles']} cycles != model {model}")
                timed += 1
    return timed
