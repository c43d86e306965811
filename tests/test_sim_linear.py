"""The linear kernel in simulation, bit for bit against the golden model.

Fast (Icarus, ``make test``): random shapes that are not multiples of the
tile sizes, back to back, with random/fixed gaps on the inputs and
back-pressure on the output, fused GELU and residual add, a reduction
shorter than the array's drain (stalls). Slow (``make sim``): every linear
layer of a trained, quantized ``tiny`` model, and the same random cases on
Verilator.
"""

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.descriptor import LinearDescriptor
from moevit.hw.generate import verilog_file
from moevit.hw.linear import linear_reference
from moevit.model import intops
from moevit.sim.benches.linear import write_case
from moevit.sim.runner import default_simulator, run_cocotb, sim_folder


def random_op(hw, rng, tokens, in_features, out_features, *, gelu=False, residual=False):
    """A random operation whose outputs spread over the int8 range (no saturation only)."""
    x = rng.integers(-128, 128, (tokens, in_features), dtype=np.int8)
    weight = rng.integers(-128, 128, (out_features, in_features), dtype=np.int8)
    spread = 74.0 * 74.0 * np.sqrt(in_features)  # the accumulator's standard deviation
    bias = rng.integers(-int(spread), int(spread) + 1, out_features).astype(np.int32)
    mult, shift = intops.quantize_multiplier(40.0 / spread * rng.uniform(0.5, 2.0, out_features))
    # The extremes of the contract's ranges on a few channels.
    mult[0], shift[0] = 2**15 - 1, 47
    if out_features > 1:
        mult[1], shift[1] = 1, 1
    fields = dict(tokens=tokens, in_features=in_features, out_features=out_features)
    if gelu:
        b, c = intops.gelu_constants(0.05)
        gm, gs = intops.quantize_multiplier(1.0 / (2 * c))
        fields.update(gelu=1, gelu_b=b, gelu_c=c, gelu_mult=int(gm), gelu_shift=int(gs))
    skip = None
    if residual:
        ma, mb, rs = intops.residual_constants(0.05, 0.04, 0.06)
        fields.update(residual=1, res_mult_y=ma, res_mult_skip=mb, res_shift=rs)
        skip = rng.integers(-128, 128, (tokens, out_features), dtype=np.int8)
    desc = LinearDescriptor(hw, **fields)
    return dict(desc=desc, x=x, weight=weight, bias=bias, multiplier=mult, shift=shift, skip=skip)


def run_ops(hw, ops, test_id, *, gaps="none", stall="none", seed=0, simulator=None):
    """Simulate ``ops`` back to back; assert each output equals the golden one in full."""
    simulator = simulator or default_simulator()
    folder = sim_folder(f"{test_id}-{simulator}")
    case = write_case(folder.parent / f"{folder.name}.npz", hw, ops, gaps=gaps, stall=stall,
                      seed=seed)
    result = run_cocotb(toplevel="moevit_linear", sources=[verilog_file("linear", hw)],
                        test_module="moevit.sim.benches.linear", test_id=f"{test_id}-{simulator}",
                        simulator=simulator, env={"MOEVIT_CASE": case})
    for k, op in enumerate(ops):
        got = np.load(result.output(f"y{k}.npy"))
        want = linear_reference(op["desc"], op["x"], op["weight"], op["bias"], op["multiplier"],
                                op["shift"], op.get("skip"))
        assert got.dtype == np.int8 and got.shape == want.shape
        bad = np.argwhere(got != want)
        assert bad.size == 0, (f"op {k}: {len(bad)} of {want.size} outputs differ, first at "
                               f"{bad[0].tolist()}: {got[tuple(bad[0])]} != {want[tuple(bad[0])]}")
    return result


# The fast cases: small, ragged, with every stream pattern.
RANDOM_CASES = {
    # id: (ops as (tokens, in, out, gelu, residual), gaps, stall)
    "ragged-back-to-back-random": ([(13, 37, 41, 0, 0), (6, 23, 17, 0, 0)], "random", "random"),
    "gelu-residual-fixed": ([(9, 20, 35, 1, 1)], "fixed", "fixed"),
    "short-reduction-stalls": ([(11, 3, 20, 0, 1), (5, 1, 16, 1, 0)], "none", "random"),
}


@pytest.mark.parametrize("case_id", list(RANDOM_CASES), ids=list(RANDOM_CASES))
def test_random_shapes(case_id):
    hw = DEFAULT_HW["tiny"]
    shapes, gaps, stall = RANDOM_CASES[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    ops = [random_op(hw, rng, t, i, o, gelu=g, residual=r) for t, i, o, g, r in shapes]
    run_ops(hw, ops, f"linear-{case_id}", gaps=gaps, stall=stall, seed=len(case_id))
