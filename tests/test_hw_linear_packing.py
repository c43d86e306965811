"""Two int8 MACs per DSP48E2 (``HwConfig.dsp_packing = 2``): the packed multiply of the
linear kernel (:class:`~moevit.hw.units.linear.PairMultiplier`) in Amaranth's simulator
over every (activation, weight) pair in both positions, and the rule on ``cols``.

The kernel with packing against the golden model is in the cocotb suites
(``test_sim_linear.py``, ``test_sim_linear_random.py``, ``test_sim_engines_linear.py``);
its DSP48E2 count by Yosys here (slow)."""

import json

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal, signed
from amaranth.sim import Simulator

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW, HwConfig
from moevit.hw.estimate import estimate_verilog
from moevit.hw.generate import verilog_file
from moevit.hw.units.linear import PAIR_SHIFT, PAIR_WIDTH, PairMultiplier, pack_pair

INT8 = np.arange(-128, 128)


class _Pairs(Elaboratable):
    """256 pair multipliers on one shared activation, multiplier ``k``'s weights held at
    ``(w_lo[k], w_hi[k])`` and packed by :func:`pack_pair` as the kernel packs them."""

    def __init__(self, w_lo, w_hi):
        self.a = Signal(signed(8))
        self.w_lo, self.w_hi = w_lo, w_hi
        self.pairs = [PairMultiplier() for _ in w_lo]

    def elaborate(self, platform):
        m = Module()
        for k, pair in enumerate(self.pairs):
            m.submodules[f"pair{k}"] = pair
            lo, hi = Signal(signed(8), init=int(self.w_lo[k])), Signal(signed(8), init=int(self.w_hi[k]))
            m.d.comb += [pair.a.eq(self.a), pair.w.eq(pack_pair(lo, hi))]
        return m


def _products(w_lo, w_hi):
    """``(lo, hi)``: arrays ``[a + 128, k]`` of what multiplier ``k`` gave for activation ``a``,
    every int8 ``a`` in turn, one a cycle."""
    dut = _Pairs(w_lo, w_hi)
    lo = np.zeros((256, len(w_lo)), np.int64)
    hi = np.zeros_like(lo)

    async def bench(ctx):
        for a in INT8:
            ctx.set(dut.a, int(a))
            await ctx.tick()
            lo[a + 128] = [ctx.get(pair.lo) for pair in dut.pairs]
            hi[a + 128] = [ctx.get(pair.hi) for pair in dut.pairs]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return lo, hi


def test_every_pair_in_both_positions():
    """Every (a, w) pair of int8 values in the low position and in the high one (65,536
    each, ``-128 * -128`` included), the other weight of the pair a permutation of the
    int8 values (so the low product's sign meets high products of both signs): both
    products exact, the low one's borrow corrected."""
    w_lo = INT8
    w_hi = (INT8 * 37 + 11) % 256 - 128          # a bijection of the int8 values
    assert sorted(w_hi) == list(INT8)
    lo, hi = _products(w_lo, w_hi)
    np.testing.assert_array_equal(lo, np.multiply.outer(INT8, w_lo))
    np.testing.assert_array_equal(hi, np.multiply.outer(INT8, w_hi))
    # Without the correction the high product of a negative low one is one short:
    # this set of operands would catch it.
    assert (np.multiply.outer(INT8, w_lo) < 0).sum() > 30000


def test_packed_weights_fit_the_27_bit_side():
    extremes = [pack_pair(lo, hi) for lo in (-128, 127) for hi in (-128, 127)]
    assert all(-2**(PAIR_WIDTH - 1) <= w < 2**(PAIR_WIDTH - 1) for w in extremes)
    assert pack_pair(-1, 1) == 2**PAIR_SHIFT - 1


def test_packing_needs_even_columns():
    with pytest.raises(ConfigError, match=r"^DSP packing 2 pairs neighbouring output columns; "
                                          r"5 array columns are odd$"):
        HwConfig(rows=2, cols=5, post_lanes=1, max_tokens=4, dsp_packing=2)
    with pytest.raises(ConfigError, match=r"^DSP packing must be 1 or 2 int8 MACs per DSP48E2, "
                                          r"not 4$"):
        HwConfig(dsp_packing=4)


def test_generate_takes_packing(tmp_path, capsys):
    """``hw generate --packing 2``: the instance's HwConfig with two MACs per DSP48E2 beside
    the Verilog, whose array multiplies 8 x 27 bits, one multiply per pair and row."""
    assert main(["hw", "generate", "--config", "tiny", "--unit", "linear", "--packing", "2",
                 "-o", str(tmp_path)]) == 0
    hw = DEFAULT_HW["tiny"]
    assert json.loads((tmp_path / "hw.json").read_text()) == hw.replace(dsp_packing=2).to_dict()
    text = (tmp_path / "moevit_linear.v").read_text()
    # One module per PairMultiplier, each with its one multiply.
    assert text.count("$signed(a) * $signed(w)") == hw.macs // 2
    assert str(tmp_path / "moevit_linear.v") in capsys.readouterr().out


#: DSP48E2 of one post-processing lane (tests/test_hw_estimate.py): requantize 2, GELU
#: t*t and q*f 1 each, GELU requantize 2, residual 2.
POST_LANE_DSP = 8


@pytest.mark.slow
def test_yosys_maps_a_pair_of_macs_to_one_dsp48e2(tmp_path):
    """Yosys synth_xilinx on the 4 x 16 array: 64 DSP48E2 for the 64 MAC units, 32 with
    packing (one per pair), and the post-processing's own; printed side by side."""
    hw = HwConfig(rows=4, cols=16, post_lanes=4, max_tokens=8, max_in=32, out_depth=4)
    counts = {}
    for packing in (1, 2):
        point = hw.replace(dsp_packing=packing)
        counts[packing] = estimate_verilog(
            "linear", verilog_file("linear", point), "moevit_linear", tmp_path / f"p{packing}")
        print(f"4x16, packing {packing}: DSP48E2 {counts[packing].dsp}, "
              f"LUT {counts[packing].lut}, FF {counts[packing].ff}")
        assert counts[packing].dsp == hw.macs // packing + POST_LANE_DSP * hw.post_lanes
