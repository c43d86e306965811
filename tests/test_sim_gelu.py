"""The integer GELU unit in simulation, bit for bit against the golden model.

Fast (Icarus): every int8 value under two input scales, with seeded gaps and
back-pressure, and the ``tiny`` model's first MLP GELU (its ``fc1.pre`` to
``fc1.out``) with untrained weights. Slow (``$SIM``): the same with the
trained model, and the smallest and largest scales ``intops.gelu_constants``
accepts.
"""

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.units.gelu import Gelu
from moevit.model.integer import intops
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_gelu, tiny_quantized


def _consts(scale, out_scale):
    b, c = intops.gelu_constants(scale)
    mult, shift = intops.quantize_multiplier(scale / (2 * c) / out_scale)
    return b, c, int(mult), int(shift)


@pytest.mark.parametrize("scale", [2.0**-5, 0.11])
def test_every_int8_icarus(scale):
    x = np.arange(-128, 128)
    run = run_gelu(DEFAULT_HW["tiny"], x, _consts(scale, scale / 2), test_id=f"gelu-all-{scale}",
                   simulator="icarus", seed=3)
    assert run.out.min() < 0 < run.out.max()  # GELU's dip below zero and its linear part


@pytest.mark.parametrize("trained", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["trained", "signal"])
def test_tiny_model_mlp(trained):
    from moevit.model.integer import golden

    qmodel, image = tiny_quantized(trained)
    result = golden.run(qmodel, image, 0)
    consts = golden.GeluConsts(*(int(v) for v in qmodel["blocks.0.mlp.fc1.gelu"]))
    pre = result.tensors["blocks.0.mlp.fc1.pre"]
    run = run_gelu(DEFAULT_HW["tiny"], pre, consts, test_id=f"gelu-tiny-{trained}",
                   simulator="icarus" if not trained else None, seed=4)
    np.testing.assert_array_equal(run.out.reshape(pre.shape),
                                  result.tensors["blocks.0.mlp.fc1.out"])


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.4e-3, 0.5])
def test_scale_extremes(scale):
    x = np.arange(-128, 128)
    run_gelu(DEFAULT_HW["tiny"], x, _consts(scale, scale), test_id=f"gelu-{scale}-"
             f"{default_simulator()}", gaps="random", stall="fixed", seed=5)


def test_bad_lanes():
    with pytest.raises(TypeError, match=r"^Lanes must be a positive integer, not -1$"):
        Gelu(lanes=-1)
