"""Chains of multipliers in the linear array (``HwConfig.chain_depth``): each position
multiplies ``chain_depth`` input features a step and sums them along a chain of links
(:class:`~moevit.hw.units.linear.ChainLink`, one DSP48E2 each) before its accumulator.

The rule on the depth; a link is one DSP slice's datapath (Yosys packs it whole into a
7 series DSP48E1, the only DSP it packs post-adders into) and the estimate counts it as
one DSP48E2; the deepest packed chain on its extreme products and the first out tile
waiting for the activations, both simulated. Random chained design points are in
``test_sim_linear_random.py``."""

import json
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module, Signal, signed
from amaranth.sim import Simulator

from moevit.errors import ConfigError
from moevit.hw.config import HwConfig
from moevit.hw.estimate import _yosys, estimate_verilog
from moevit.hw.generate import verilog_file
from moevit.hw.units.linear import ChainLink, pack_pair, unpack_pair
from moevit.sim.linear_cases import check_runs, random_op
from moevit.sim.runner import default_simulator
from moevit.sim.units import run_linear

from test_hw_linear_packing import POST_LANE_DSP


@pytest.mark.parametrize("depth", [0, 9, -1, "2", 2.0, True])
def test_a_chain_depth_out_of_range_is_refused(depth):
    with pytest.raises(ConfigError, match="Chain depth must be an integer from 1 to 8"):
        HwConfig(chain_depth=depth)


def test_a_packed_chain_holds_at_most_seven_links():
    HwConfig(dsp_packing=2, chain_depth=7)
    with pytest.raises(ConfigError, match="holds the sum of at most 7"):
        HwConfig(dsp_packing=2, chain_depth=8)


def test_a_chain_has_depth_times_the_mac_units_and_fewer_steps():
    hw = HwConfig(rows=4, cols=16, max_in=256, chain_depth=3)
    assert (hw.macs, hw.max_steps) == (4 * 16 * 3, 86)


class _Chain(Elaboratable):
    """``depth`` packed links on constant operands, the last one's sum split."""

    def __init__(self, depth, a, w_lo, w_hi):
        self.links = [ChainLink(packed=True, first=k == 0) for k in range(depth)]
        self.operands = a, w_lo, w_hi
        self.lo, self.hi = Signal(signed(24)), Signal(signed(24))

    def elaborate(self, platform):
        m = Module()
        a, w_lo, w_hi = (Signal(signed(8), init=v) for v in self.operands)
        for k, link in enumerate(self.links):
            m.submodules[f"link{k}"] = link
            m.d.comb += [link.a.eq(a), link.w.eq(pack_pair(w_lo, w_hi))]
            if k:
                m.d.comb += link.cin.eq(self.links[k - 1].p)
        lo, hi = unpack_pair(self.links[-1].p)
        m.d.comb += [self.lo.eq(lo), self.hi.eq(hi)]
        return m


def _chain_sums(depth, a, w_lo, w_hi):
    dut = _Chain(depth, a, w_lo, w_hi)
    sums = []

    async def bench(ctx):
        await ctx.tick().repeat(depth + 2)    # every link's operands held: settled
        sums.extend([ctx.get(dut.lo), ctx.get(dut.hi)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return sums


@pytest.mark.parametrize("a, w_lo, w_hi", [(-128, -128, -128), (-128, 127, -128),
                                           (127, -128, 127), (-128, -128, 127)])
def test_seven_packed_links_split_exactly_and_eight_do_not(a, w_lo, w_hi):
    """Why a packed chain stops at 7: the extreme products summed over 7 links split into
    their two sums exactly; over 8, 8 x (-128)**2 = 2**17, with the first link's offset
    2**18, wraps the low field."""
    assert _chain_sums(7, a, w_lo, w_hi) == [7 * a * w_lo, 7 * a * w_hi]
    if a * w_lo == 2**14:
        assert _chain_sums(8, a, w_lo, w_hi) != [8 * a * w_lo, 8 * a * w_hi]


def _synth(tmp_path, name, source, family):
    """Yosys ``synth_xilinx -family family`` of Verilog ``source``: its cells by type."""
    (tmp_path / f"{name}.v").write_text(source)
    (tmp_path / f"{name}.ys").write_text(
        f"read_verilog -sv {name}.v\nsynth_xilinx -family {family} -top {name} -flatten\n"
        f"tee -q -o {name}.json stat -json\n")
    subprocess.run([_yosys(), "-q", "-s", f"{name}.ys"], cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL)
    cells = json.loads((tmp_path / f"{name}.json").read_text())["design"]["num_cells_by_type"]
    return {k: n for k, n in cells.items() if not k.endswith("BUF") and k != "BUFG"}


def test_a_chain_link_is_one_dsp_slice(tmp_path):
    """A link past a chain's first (product register, post-adder on the cascade, output
    register) is one DSP48E1 and nothing in fabric where Yosys packs post-adders (the 7
    series), and leaves its adder and registers in fabric on UltraScale+ (hence the black
    box of the estimate). The packed link's 27-bit weights need the DSP48E2's 27 x 18
    multiplier: two DSP48E1 (25 x 18), one DSP48E2."""
    plain = verilog.convert(ChainLink(packed=False, first=False), name="link")
    assert _synth(tmp_path, "link", plain, "xc7") == {"DSP48E1": 1}
    assert set(_synth(tmp_path, "link", plain, "xcup")) > {"DSP48E2", "FDRE"}
    packed = verilog.convert(ChainLink(packed=True, first=False), name="packed")
    assert _synth(tmp_path, "packed", packed, "xcup")["DSP48E2"] == 1


def test_the_estimate_counts_each_link_as_one_dsp48e2(tmp_path):
    """A 2 x 4 array of packed chains of 3: its 24 MAC units are 12 links (12 DSP48E2),
    beside the post-processing's own."""
    hw = HwConfig(rows=2, cols=4, post_lanes=2, max_tokens=4, max_in=12, out_depth=4,
                  dsp_packing=2, chain_depth=3)
    got = estimate_verilog("linear", verilog_file("linear", hw), "moevit_linear", tmp_path)
    print(f"2x4x3 packed: DSP48E2 {got.dsp}, LUT {got.lut}, FF {got.ff}")
    assert got.dsp == hw.macs // 2 + POST_LANE_DSP * hw.post_lanes
    assert sum(n for cell, n in got.cells.items() if ".link" in cell) == hw.macs // 2


def _simulate(hw, ops, test_id):
    runs = [dict(ops=ops, seed=1)]
    results, _ = run_linear(hw, runs, test_id=f"{test_id}-{default_simulator()}")
    assert check_runs(runs, results, f"{test_id} ({hw})") == 1   # exact, and timed
    return results[0]


def test_the_deepest_packed_chain_sums_its_extreme_products():
    """Seven links of packed pairs: token 0's activations all -128 and, on pair 0, both
    weights -128 (7 x 2**14 a step in the low field, 2**17 being one too many) and on pair
    1 a low weight of 127 (7 x -16,256): with a multiplier of 1 and a shift of 1 their
    outputs saturate at 127 and -128, and a wrapped low field would flip them."""
    hw = HwConfig(rows=2, cols=4, post_lanes=2, max_tokens=4, max_in=21, out_depth=4,
                  dsp_packing=2, chain_depth=7)
    op = random_op(hw, np.random.default_rng(7), 3, 21, 4)
    op["x"][0] = -128
    op["weight"][0] = op["weight"][1] = -128
    op["weight"][2] = 127
    op["multiplier"][:3], op["shift"][:3], op["bias"][:3] = 1, 1, 0
    got = _simulate(hw, [op], "linear-chain-extremes")
    assert got["outputs"][0][0, :3].tolist() == [127, 127, -128]


def test_a_chain_waits_for_its_activations_on_the_first_out_tile():
    """A chain of 4 takes 32 features in 8 steps, but the activations come a feature a
    cycle: 3 token tiles of one out tile end at cycle 1 + 3 x 32 = 97 at the earliest,
    not at the issue's own pace (11 cycles a tile), then the tile's way out (4 + 4 stages
    to the shadow bank, 2 cycles of drain, 14 to the FIFO, 2 through it): 123 cycles."""
    hw = HwConfig(rows=2, cols=4, post_lanes=4, max_tokens=6, max_in=32, out_depth=4,
                  chain_depth=4)
    op = random_op(hw, np.random.default_rng(4), 6, 32, 4)
    assert op["desc"].expected_cycles() == 123
    assert _simulate(hw, [op], "linear-chain-x-bound")["cycles"] == [123]


def test_wide_x_keeps_a_chain_at_its_own_pace():
    """The same operation with the x stream bringing a step's 4 features a beat
    (``wide_x``): its first weight bank is full at cycle 34 (32 beats from cycle 1, one to
    settle), the first token tile's 8 steps end at cycle 41 and the two after at the issue's
    pace (11 cycles a tile) at 63, before the activations' last beat could hold them, then
    the same way out: 89 cycles."""
    hw = HwConfig(rows=2, cols=4, post_lanes=4, max_tokens=6, max_in=32, out_depth=4,
                  chain_depth=4, wide_x=1)
    op = random_op(hw, np.random.default_rng(4), 6, 32, 4)
    assert (op["desc"].x_beats, op["desc"].expected_cycles()) == (8, 89)
    assert _simulate(hw, [op], "linear-chain-wide-x")["cycles"] == [89]


def test_wide_w_loads_a_bank_a_step_a_cycle():
    """... and with its w beats bringing a step's 4 features too (``wide_w``): the bank is
    full at cycle 10 (8 beats, or the 4 channels' constants, whichever is longer, from cycle
    1, one to settle), the three token tiles end at 17, 28 and 39, and the way out as above:
    65 cycles."""
    hw = HwConfig(rows=2, cols=4, post_lanes=4, max_tokens=6, max_in=32, out_depth=4,
                  chain_depth=4, wide_x=1, wide_w=1)
    op = random_op(hw, np.random.default_rng(4), 6, 32, 4)
    assert (op["desc"].w_beats, op["desc"].expected_cycles()) == (8, 65)
    assert _simulate(hw, [op], "linear-chain-wide-w")["cycles"] == [65]


#: Yosys (moevit.hw.estimate, links as black boxes) on slices of zcu102-edge-moe's array:
#: (rows, chain_depth) -> (DSP48E2, LUT, FF, BRAM36), 2026-12-07; (6, 1) is a fit point.
#: The chained slices measured again once the chains' sums were cut to the bits their
#: products need (27,895, 27,988 and 40,221 LUT before).
_SLICES = {(2, 1): (192, 26_347, 26_321, 33.5), (2, 2): (256, 26_256, 25_422, 41.0),
           (2, 4): (384, 26_388, 29_372, 42.0), (6, 1): (321, 35_454, 43_384, 35.0),
           (6, 2): (513, 35_481, 38_326, 43.0)}


def _slice(rows, depth):
    return HwConfig(rows=rows, cols=64, post_lanes=16, max_tokens=-(-64 // rows) * rows,
                    max_in=768, out_depth=64, dsp_packing=2, weight_streaming=1, acc_width=25,
                    chain_depth=depth)


@pytest.mark.parametrize("rows, depth", sorted(_SLICES))
def test_the_resource_model_of_chains_against_yosys(rows, depth):
    """The linear unit's formula (the fit, and `chain_resources` past one multiplier a
    position) against Yosys's counts of the slices: DSP48E2 exact, BRAM36 within one,
    LUT and FF within 4 % (the fit's own error on the 2-row slice is +1.8 %). LUT a MAC
    unit a row: 36 at one multiplier a position, 18 at chains of 2, 9 at 4 (the chain
    shares its accumulator)."""
    from moevit.hw.cost.resources import unit_resources

    dsp, lut, ff, bram = _SLICES[rows, depth]
    got = unit_resources("linear", _slice(rows, depth))
    print(f"{rows} rows, chains of {depth}: DSP {got.dsp} / {dsp}, LUT {got.lut:,.0f} / "
          f"{lut:,} ({got.lut / lut - 1:+.1%}), FF {got.ff:,.0f} / {ff:,} "
          f"({got.ff / ff - 1:+.1%}), BRAM36 {got.bram36} / {bram}")
    assert got.dsp == dsp and abs(got.bram36 - bram) <= 1
    assert got.lut == pytest.approx(lut, rel=0.04) and got.ff == pytest.approx(ff, rel=0.04)


@pytest.mark.slow
def test_yosys_counts_a_chained_slice_as_recorded(tmp_path):
    """The 2-row slice with chains of 2 synthesized again (about 5 minutes; Yosys's counts
    move with the modules' names, so the slices were measured by this same path)."""
    from moevit.hw.generate import module_name

    got = estimate_verilog("linear", verilog_file("linear", _slice(2, 2), tmp_path),
                           module_name("linear"), tmp_path)
    dsp, lut, ff, bram = _SLICES[2, 2]
    assert (got.dsp, got.lut, got.ff, got.bram) == (dsp, lut, ff, bram)


def test_generate_takes_a_chain(tmp_path, capsys):
    """``hw generate --chain 3``: the instance's HwConfig in chains of 3 beside the Verilog,
    whose array has three links a position; the default folder names the change."""
    from moevit.cli import main
    from moevit.hw.commands import _hw_and_name
    from moevit.hw.config import get_hw_config

    assert main(["hw", "generate", "--config", "tiny", "--unit", "linear", "--chain", "3",
                 "--packing", "2", "-o", str(tmp_path)]) == 0
    hw = get_hw_config("tiny").replace(dsp_packing=2, chain_depth=3)
    assert json.loads((tmp_path / "hw.json").read_text()) == hw.to_dict()
    text = (tmp_path / "moevit_linear.v").read_text()
    # One module per link, each with its one multiply: three a pair of columns and row.
    assert text.count("$signed(a) * $signed(w)") == hw.macs // 2
    assert str(tmp_path / "moevit_linear.v") in capsys.readouterr().out
    args = type("Args", (), dict(config="tiny", packing=2, chain=3, score_packing=None))
    assert _hw_and_name(args) == (hw, "tiny-packing2-chain3")
    args.score_packing = 2
    assert _hw_and_name(args) == (hw.replace(score_packing=2),
                                  "tiny-packing2-chain3-score-packing2")
