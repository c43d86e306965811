"""The integer LayerNorm unit in simulation, bit for bit against ``intops.layernorm``.

Fast (Icarus): rows built for the corners (a constant row with and without
``eps``, int8 extremes, one outlier) with seeded gaps and back-pressure, one
lane and eight, and the ``tiny`` model's first LayerNorm with untrained
weights. Slow (``$SIM``): every LayerNorm of the trained tiny model, one lane
and four; and per lane count (1, 2, 4, 8, 16) random design points on
Verilator (:mod:`moevit.sim.randomized`: random widths, rows back to back,
random gaps and back-pressure, seeds printed), each whose cycles with no pauses
equal :func:`~moevit.hw.units.layernorm.layernorm_cycles`.
"""

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.descriptor import DescriptorError, LayerNormDescriptor
from moevit.hw.units.layernorm import LayerNorm
from moevit.model.integer import intops
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_layernorm, tiny_quantized

HW = DEFAULT_HW["tiny"]


@pytest.mark.parametrize("eps, lanes", [(0, 1), (5000, 1), (5000, 8)])
def test_corner_rows_icarus(eps, lanes):
    rng = np.random.default_rng(eps)
    dim = 24
    x = rng.integers(-128, 128, (6, dim))
    x[1] = 7  # constant: variance 0, sigma = max(isqrt(eps), 1)
    x[2] = np.where(np.arange(dim) % 2, 127, -128)
    x[3] = -128
    x[4] = 0
    x[4, 5] = 127  # one outlier: the largest normalised value, sqrt(D - 1)
    gamma = rng.integers(-2**15 + 1, 2**15, dim)
    beta = rng.integers(-2**30, 2**30, dim)
    shift = 20
    hw = HW.replace(norm_lanes=lanes)
    run = run_layernorm(hw, x, eps, gamma, beta, shift, test_id=f"layernorm-corners-{eps}-{lanes}",
                        simulator="icarus", gaps="random", stall="random", seed=6)
    assert run.out.min() == -128 and run.out.max() == 127  # saturation reached too


def test_the_largest_normalised_value_icarus():
    """The widest rows' extremes: one 1 among 1,023 zeros normalises to 2**17 (Q.12: 32,
    the largest ``n_i``: ``test_layernorm_reaches_its_bound``), and -128 among -127s to
    -2**17; with gamma 1 and a shift of 11 the outlier's output is +-64, which a normalised
    value one bit narrower than its 19 would wrap to the other sign."""
    dim = 1024
    x = np.zeros((2, dim), np.int64)
    x[0, 3] = 1
    x[1] = -127
    x[1, 700] = -128
    gamma, beta, shift = np.ones(dim, np.int64), np.zeros(dim, np.int64), 11
    expected = intops.layernorm(x, 0, gamma, beta, shift)
    assert expected[0, 3] == 64 and expected[1, 700] == -64
    run = run_layernorm(HW.replace(max_in=dim, norm_lanes=8), x, 0, gamma, beta, shift,
                        test_id="layernorm-largest", simulator="icarus", seed=8)
    np.testing.assert_array_equal(run.out, expected)


def _norms(qmodel, tensors):
    """``(name, input, output)`` of every LayerNorm the golden model ran."""
    depth = qmodel.config.depth
    for i in range(depth):
        block_in = tensors["embed.out"] if i == 0 else tensors[f"blocks.{i - 1}.add2.out"]
        yield f"blocks.{i}.norm1", block_in, tensors[f"blocks.{i}.norm1.out"]
        yield f"blocks.{i}.norm2", tensors[f"blocks.{i}.add1.out"], tensors[f"blocks.{i}.norm2.out"]
    yield "norm", tensors[f"blocks.{depth - 1}.add2.out"], tensors["norm.out"]


def _run_norm(qmodel, name, x, y, test_id, simulator, hw=HW):
    eps, gamma, beta, shift = (qmodel[f"{name}.{p}"] for p in ("eps", "gamma", "beta", "shift"))
    run = run_layernorm(hw, x, int(eps), gamma, beta, int(shift), test_id=test_id,
                        simulator=simulator, seed=7)
    np.testing.assert_array_equal(run.out, y)


def test_tiny_model_first_norm_icarus():
    """The untrained signal model's first LayerNorm (the trained model's are slow)."""
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized(trained=False)
    result = golden.run(qmodel, image, 0)
    name, x, y = next(_norms(qmodel, result.tensors))
    _run_norm(qmodel, name, x, y, "layernorm-tiny-norm1", "icarus")


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 4])
def test_tiny_model_every_norm(lanes):
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized()
    result = golden.run(qmodel, image, 1)
    for name, x, y in _norms(qmodel, result.tensors):
        _run_norm(qmodel, name, x, y, f"layernorm-tiny-{name}-{lanes}-{default_simulator()}",
                  None, HW.replace(norm_lanes=lanes))


#: Random design points per lane count in the slow set.
LANE_POINTS = 3


def _seeds_with_lanes(lanes, count, first=5000):
    """The first ``count`` seeds from ``first`` whose random LayerNorm case has ``lanes``
    lanes (a draw is cheap; the seed alone replays the case)."""
    from moevit.sim.randomized import draw

    seeds, seed = [], first
    while len(seeds) < count:
        if draw("layernorm", seed, large=True).hw.norm_lanes == lanes:
            seeds.append(seed)
        seed += 1
    return seeds


@pytest.mark.slow
@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16])
def test_random_design_points_per_lanes_verilator(lanes):
    from test_sim_random_units import run_case

    for seed in _seeds_with_lanes(lanes, LANE_POINTS):
        run_case("layernorm", seed, large=True, simulator="verilator")


def test_bad_width():
    with pytest.raises(TypeError, match=r"^LayerNorm width must be an integer in 1\.\.1024, "
                       r"not 2048$"):
        LayerNorm(max_dim=2048)
    with pytest.raises(TypeError, match=r"^LayerNorm lanes must be a power of two in 1\.\.128, "
                       r"not 6$"):
        LayerNorm(max_dim=24, lanes=6)
    with pytest.raises(ValueError, match=r"^LayerNorm lanes 4 do not divide the width 30$"):
        LayerNorm(max_dim=30, lanes=4)
    with pytest.raises(DescriptorError, match=r"^LayerNorm descriptor width 30 is not a multiple "
                       r"of the 4 LayerNorm lanes of hardware 'tiny'$"):
        LayerNormDescriptor(HW.replace(norm_lanes=4), tokens=1, dim=30)
    with pytest.raises(DescriptorError, match=r"^LayerNorm descriptor width 300 exceeds the "
                       r"256-feature buffer of hardware 'tiny'$"):
        LayerNormDescriptor(HW, tokens=1, dim=300)


def test_compiling_for_lanes_that_do_not_divide_a_row_is_a_clear_error():
    from moevit.errors import ConfigError
    from moevit.hw.program.compiler import compile_program

    qmodel, _ = tiny_quantized(trained=False)
    with pytest.raises(ConfigError, match=r"^LayerNorm lanes 128 do not divide the width 64 of "
                       r"model 'tiny''s LayerNorm rows$"):
        compile_program(qmodel, HW.replace(norm_lanes=128, bus_width=1024))
