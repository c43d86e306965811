"""The linear kernel in simulation, bit for bit against the golden model.

Fast (``$SIM``, Icarus unless set; ``make test``): random shapes that are
not multiples of the tile sizes, back to back, with random/fixed gaps on the
inputs and back-pressure on the output, fused GELU and residual add, a
reduction shorter than the array's drain (stalls), the cycle count against
the cost model, another array shape at its buffer limits, and the regression
of the back-to-back bug on the ``m3vit-s`` array (issue 11), and the fast
cases again with two MACs per DSP48E2 (``dsp_packing = 2``, one simulation).
The randomized suite is ``test_sim_linear_random.py``. Slow (``make
sim``): every linear layer of a trained, quantized ``tiny`` model (and its
residual adds fused into the projections before them), twelve
random shapes up to the buffer limits, and the fast cases on Verilator, each
with one and with two MACs per DSP48E2.
"""

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.program.descriptor import LinearDescriptor
from moevit.hw.units.linear import linear_reference
from moevit.model.config import get_config
from moevit.sim.linear_cases import check_runs, random_op
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_linear, tiny_quantized


def run_ops(hw, ops, test_id, *, gaps="none", stall="none", seed=0, simulator=None):
    """Simulate ``ops`` back to back; assert each output equals the golden one in full
    (and, without pauses, the cycles the cost model's)."""
    simulator = simulator or default_simulator()
    runs = [dict(ops=ops, gaps=gaps, stall=stall, seed=seed)]
    results, _ = run_linear(hw, runs, test_id=f"{test_id}-{simulator}", simulator=simulator)
    check_runs(runs, results, test_id)
    return results[0]


# The fast cases: small, ragged, with every stream pattern.
RANDOM_CASES = {
    # id: (ops as (tokens, in, out, gelu, residual[, x_max]), gaps, stall); x_max: narrow
    # activations, where an accumulator a few units off moves most outputs (random_op).
    "ragged-back-to-back-random": ([(13, 37, 41, 0, 0), (6, 23, 17, 0, 0), (7, 45, 30, 0, 0, 4)],
                                   "random", "random"),
    "gelu-residual-fixed": ([(9, 20, 35, 1, 1)], "fixed", "fixed"),
    "short-reduction-stalls": ([(11, 3, 20, 0, 1), (5, 1, 16, 1, 0)], "none", "random"),
    # No pauses: the cycles must match the cost model (LinearDescriptor.sequence_cycles).
    "cost-model-no-pauses": ([(21, 40, 50, 0, 0), (8, 6, 33, 1, 1), (5, 29, 20, 1, 0, 4)],
                             "none", "none"),
}


def random_case(case_id, packing=1):
    """``(hw, ops, gaps, stall)`` of one of the ``RANDOM_CASES``, seeded by its id, on the
    tiny array with ``packing`` MACs per DSP48E2."""
    hw = DEFAULT_HW["tiny"].replace(dsp_packing=packing)
    shapes, gaps, stall = RANDOM_CASES[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    ops = [random_op(hw, rng, t, i, o, gelu=g, residual=r, x_max=(*narrow, 128)[0])
           for t, i, o, g, r, *narrow in shapes]
    return hw, ops, gaps, stall


@pytest.mark.parametrize("case_id", list(RANDOM_CASES), ids=list(RANDOM_CASES))
def test_random_shapes(case_id):
    hw, ops, gaps, stall = random_case(case_id)
    run_ops(hw, ops, f"linear-{case_id}", gaps=gaps, stall=stall, seed=len(case_id))


def run_cases(packing, test_id, simulator=None):
    """Every one of the ``RANDOM_CASES`` as a run of one simulation (one build)."""
    simulator = simulator or default_simulator()
    cases = [random_case(case_id, packing) for case_id in RANDOM_CASES]
    runs = [dict(ops=ops, gaps=gaps, stall=stall, seed=len(case_id))
            for case_id, (_, ops, gaps, stall) in zip(RANDOM_CASES, cases)]
    hw = cases[0][0]
    results, _ = run_linear(hw, runs, test_id=f"{test_id}-{simulator}", simulator=simulator)
    assert check_runs(runs, results, test_id) == 1  # the cost-model case, timed


def test_random_shapes_packed():
    """The same cases, operands and pauses with two MACs per DSP48E2 (one simulation)."""
    run_cases(2, "linear-cases-packed")


@pytest.mark.slow
@pytest.mark.parametrize("packing", [1, 2])
def test_random_shapes_verilator(packing):
    run_cases(packing, f"linear-cases-packing{packing}", simulator="verilator")


def test_another_array_shape_at_its_buffer_limits():
    """3 x 8 array, one chunk per row (post_lanes = cols), the smallest output FIFO (3); the
    descriptors fill the token and feature buffers exactly."""
    hw = HwConfig(rows=3, cols=8, post_lanes=8, max_tokens=9, max_in=40, out_depth=3)
    rng = np.random.default_rng(7)
    ops = [random_op(hw, rng, 9, 40, 19, gelu=True, residual=True),
           random_op(hw, rng, 7, 40, 8), random_op(hw, rng, 1, 1, 1)]
    run_ops(hw, ops, "linear-array-3x8-limits", gaps="random", stall="random", seed=3)


def test_gate_then_expert_back_to_back_on_m3vit_s():
    """Regression (issue 11): on the 8 x 32 array with 8 post lanes, the MoE gate on the
    last 177-token chunk (one out tile, 1 valid row in its last token tile) followed by
    a 16 x 384 -> 64 operation gave wrong outputs in the second operation's first tile
    (214 of 1,024 with these operands, 238 with the review's): it issued on the gate's
    weight bank, still marked full while its padding rows drained, before its own
    weights arrived. Icarus: the fast suite's simulator (Verilator: the random suite)."""
    hw = DEFAULT_HW["m3vit-s"]
    rng = np.random.default_rng(11)
    # Then 8 x 64 -> 64, whose weight load the previous padding drain used to delay
    # (simulated 258 cycles, modelled 244); no pauses: the cost model is checked too.
    ops = [random_op(hw, rng, 177, 384, 16), random_op(hw, rng, 16, 384, 64),
           random_op(hw, rng, 8, 64, 64)]
    run_ops(hw, ops, "linear-m3vit-s-gate-then-expert", simulator="icarus")


def test_cost_model_where_channel_loads_and_short_tiles_dominate():
    """The issue's shapes on the 3 x 8 array with 8 post lanes, where the per-channel
    constants (cols + 1 cycles per out tile) outlast short tiles: the cost model was
    short by 3, 7 and 13 cycles; checked back to back, no pauses (run_ops)."""
    hw = HwConfig(rows=3, cols=8, post_lanes=8, max_tokens=9, max_in=40, out_depth=3)
    rng = np.random.default_rng(30)
    ops = [random_op(hw, rng, *shape) for shape in ((2, 2, 30), (1, 1, 64), (3, 4, 64))]
    run_ops(hw, ops, "linear-array-3x8-cost")


@pytest.mark.slow
@pytest.mark.parametrize("packing", [1, 2])
def test_many_random_shapes(packing):
    """Twelve seeded random shapes back to back, up to the tiny buffers' limits."""
    hw = DEFAULT_HW["tiny"].replace(dsp_packing=packing)
    rng = np.random.default_rng(2024)
    ops = [random_op(hw, rng, int(rng.integers(1, hw.max_tokens + 1)),
                     int(rng.integers(1, hw.max_in + 1)), int(rng.integers(1, 100)),
                     gelu=bool(rng.integers(2)), residual=bool(rng.integers(2)))
           for _ in range(12)]
    run_ops(hw, ops, f"linear-many-random-packing{packing}", gaps="random", stall="random",
            seed=11)


# Every linear layer of a trained, quantized tiny model ------------------------
def _layer_op(hw, name, x, weight, bias, mult, shift, gelu, residual=None):
    fields = dict(tokens=x.shape[0], in_features=x.shape[1], out_features=weight.shape[0])
    if residual is not None:
        fields.update(residual=1, **residual)
    if gelu is not None:
        fields.update(gelu=1, gelu_b=gelu.b, gelu_c=gelu.c, gelu_mult=gelu.mult,
                      gelu_shift=gelu.shift)
    return dict(name=name, desc=LinearDescriptor(hw, **fields), x=x, weight=weight, bias=bias,
                multiplier=mult, shift=shift)


def _fused_residuals(hw, qmodel, result, ops):
    """The golden model's residual adds, fused into the linear layer before them.

    ``add1 = residual_add(x, proj(...), Ma, Mb, S)`` becomes the projection with
    ``res_mult_skip = Ma`` on the skip ``x`` and ``res_mult_y = Mb`` on its own
    output; the same for ``fc2`` and ``add2`` in the dense blocks. Each fused
    op's expected output is the golden tensor ``add{1,2}.out``.
    """
    config, t = qmodel.config, result.tensors
    records = {rec.name: rec for rec in result.linears}
    fused = []
    for i in range(config.depth):
        p = f"blocks.{i}"
        skip1 = t["embed.out"] if i == 0 else t[f"blocks.{i - 1}.add2.out"]
        pairs = [(f"{p}.attn.proj", f"{p}.add1", skip1)]
        if not config.is_moe(i):
            pairs.append((f"{p}.mlp.fc2", f"{p}.add2", t[f"{p}.add1.out"]))
        for linear, add, skip in pairs:
            rec = records[linear]
            ma, mb, shift = (int(v) for v in qmodel[add])
            op = _layer_op(hw, f"{linear}+{add}", rec.x, rec.weight, rec.bias, rec.mult,
                           rec.shift, rec.gelu,
                           residual=dict(res_mult_y=mb, res_mult_skip=ma, res_shift=shift))
            op["skip"] = skip
            op["expected"] = t[f"{add}.out"]
            fused.append(op)
    ops.extend(fused)


def tiny_model_ops(hw):
    """Every linear layer of the tiny model as it ran in the golden model (both tasks),
    plus the experts that no token of the image selected, on its first 8 tokens, plus
    the residual adds fused into the layers before them (task 0)."""
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized()
    config = qmodel.config
    ops, seen = [], set()
    for task in range(len(config.tasks)):
        result = golden.run(qmodel, image, task)
        if task == 0:
            _fused_residuals(hw, qmodel, result, ops)
        for rec in result.linears:
            if rec.name not in seen:
                seen.add(rec.name)
                ops.append(_layer_op(hw, rec.name, rec.x, rec.weight, rec.bias, rec.mult,
                                     rec.shift, rec.gelu))
        for block in config.moe_blocks:
            x = result.tensors[f"blocks.{block}.norm2.out"][:8]
            for e in range(config.experts):
                name = f"blocks.{block}.mlp.experts.{e}"
                if f"{name}.fc1" in seen:
                    continue
                for layer in ("fc1", "fc2"):
                    full = f"{name}.{layer}"
                    w, b, m, s = (qmodel[f"{full}.{p}"] for p in ("weight", "bias", "mult", "shift"))
                    gelu = (golden.GeluConsts(*(int(v) for v in qmodel[f"{full}.gelu"]))
                            if f"{full}.gelu" in qmodel.arrays else None)
                    ops.append(_layer_op(hw, full, x, w, b, m, s, gelu))
                    seen.add(full)
                    x = golden.linear(x, w, b, m, s, gelu)
    return ops


@pytest.mark.slow
@pytest.mark.parametrize("packing", [1, 2])
def test_every_layer_of_the_tiny_model(packing):
    hw = DEFAULT_HW["tiny"].replace(dsp_packing=packing)
    ops = tiny_model_ops(hw)
    names = {op["name"] for op in ops}
    config = get_config("tiny")
    dense = config.depth - len(config.moe_blocks)
    # Patch embedding, 4 x (qkv, proj), 2 dense MLPs, a gate per task and MoE block,
    # every expert's two layers, a head per task; then proj + add1 in every block and
    # fc2 + add2 in the dense ones.
    assert len(names) == (1 + 2 * config.depth + 2 * dense
                          + len(config.tasks) * len(config.moe_blocks)
                          + 2 * config.experts * len(config.moe_blocks) + len(config.tasks)
                          + config.depth + dense)
    for op in ops:  # the fused ops' reference is the golden model's own add
        if "expected" in op:
            want = linear_reference(op["desc"], op["x"], op["weight"], op["bias"],
                                    op["multiplier"], op["shift"], op["skip"])
            assert np.array_equal(want, op["expected"]), op["name"]
    run_ops(hw, ops, f"linear-tiny-model-packing{packing}", gaps="random", stall="random",
            seed=5)
