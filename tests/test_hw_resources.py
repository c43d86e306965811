"""The resource formulas (hw/cost/resources.py) against the Yosys points they are fitted to.

The fast tests read the committed points (hw/cost/yosys_points.json); the slow one runs
Yosys again on the held-out point, and on its two-row slice to check the extrapolation of
`moevit dse --confirm`. The errors are printed (pytest -s)."""

import json
import re

import pytest

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.hw.cost.resources import (FIT_POINTS, HELD_OUT, POINTS_FILE, bram36, fit_rows,
                                      load_points, memories, resources, unit_resources,
                                      _point_hw)

#: The LUT/FF formulas' largest error on a fitted point (they are least squares in a few
#: features; Yosys's counts move with its own mapping choices).
FABRIC_BOUND = 0.15
#: ... and on the held-out point, which no coefficient saw.
HELD_OUT_BOUND = 0.25


@pytest.fixture(scope="module")
def rows():
    rows = fit_rows()
    for r in rows:
        print(f"\n{r['unit']:<10} {r['hw']}: DSP {r['dsp']}/{r['dsp_formula']} LUT "
              f"{r['lut']}/{r['lut_formula']} ({r['lut_error']:+.1%}) FF {r['ff']}/"
              f"{r['ff_formula']} ({r['ff_error']:+.1%}) BRAM {r['bram36']}/"
              f"{r['bram36_formula']}", end="")
    return rows


def test_points_file_says_when_and_how_it_was_made():
    data = json.loads(POINTS_FILE.read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", data["date"])
    assert data["command"].startswith("moevit hw resources --measure")
    assert [(p["unit"], p["hw"]) for p in data["points"]] == [*FIT_POINTS, HELD_OUT]


def test_dsp_is_exact_on_every_point(rows):
    for r in rows:
        assert r["dsp_formula"] == r["dsp"], r


def test_bram_and_uram_are_exact_on_every_point(rows):
    for r in rows:
        assert r["bram36_formula"] == r["bram36"] and r["uram_formula"] == r["uram"] == 0, r


def test_lut_and_ff_within_the_bound(rows):
    for r in rows:
        assert abs(r["lut_error"]) <= FABRIC_BOUND and abs(r["ff_error"]) <= FABRIC_BOUND, r


@pytest.mark.parametrize("changes, counted", [
    (dict(score_lanes=16, max_head_dim=64, kv_depth=16), (70, 7_951, 6_831)),
    (dict(score_lanes=16, max_head_dim=64, kv_depth=16, row_lanes=2, context_lanes=2),
     (80, 8_471, 13_912))])
def test_the_attention_formula_beyond_its_points(changes, counted):
    """Two attention kernels of 64-wide heads (the fit's points go to 16), one of two row
    lanes whose context beats pass two requantizers, counted by Yosys (2026-12-05: DSP48E2,
    LUT, FF) and in no fit: the DSPs exact, LUT and FF within 5 %."""
    from moevit.hw.config import HwConfig

    got = unit_resources("attention", HwConfig(name="beyond", **changes))
    dsp, lut, ff = counted
    assert got.dsp == dsp
    assert got.lut == pytest.approx(lut, rel=0.05) and got.ff == pytest.approx(ff, rel=0.05)


@pytest.mark.parametrize("name, counted", [
    ("tiny", ((39, 5_378, 6_396, 9), (35, 5_456, 6_577, 9))),
    ("zcu102-edge-moe", ((544, 34_677, 33_700, 64), (416, 38_381, 38_072, 94)))])
def test_packed_qk_is_what_yosys_counted(name, counted):
    """QK two keys a DSP48E2 (``score_packing`` 2) on tiny's attention and on the saved
    ZCU102 point's (4 row pipelines of 64 score lanes, two banks of 144 tokens), counted by
    Yosys unpacked and packed (2026-12-07: DSP48E2, LUT, FF, BRAM36): QK's DSPs halved and
    the block RAM of K split in two (shallow buffers take more) exact, LUT and FF within 5 %
    (the packing's fabric, :data:`PACKED_QK_LANE`, from these two points)."""
    from moevit.hw.config import get_hw_config

    hw = get_hw_config(name)
    for packing, (dsp, lut, ff, bram) in zip((1, 2), counted):
        got = unit_resources("attention", hw.replace(score_packing=packing))
        assert (got.dsp, got.bram36) == (dsp, bram), (packing, got)
        assert got.lut == pytest.approx(lut, rel=0.05) and got.ff == pytest.approx(ff, rel=0.05)


@pytest.mark.parametrize("width, depth, expected", [
    (8, 128, 0.0),         # 1 Kib: LUT RAM
    (64, 64, 0.0),         # 64 deep: LUT RAM
    (36, 1024, 1.0),       # one RAMB36 (two RAMB18 of 1Kx18)
    (72, 512, 1.0),        # one RAMB36 (two RAMB18 of 512x36)
    (16, 1024, 0.5),       # one RAMB18
    (8, 4096, 1.0),        # two RAMB18 of 2Kx9
    (64, 4096, 8.0),       # 16 RAMB18 whichever shape
])
def test_bram_tiling(width, depth, expected):
    assert bram36(width, depth) == expected


def test_packing_halves_the_arrays_dsps_only():
    hw = _point_hw(dict(rows=8, cols=32, post_lanes=8, max_tokens=136, max_in=768))
    one, two = unit_resources("linear", hw), unit_resources("linear", hw.replace(dsp_packing=2))
    assert one.dsp - two.dsp == 8 * 32 // 2
    assert (one.bram36, one.lut) == (two.bram36, two.lut)


def test_memories_follow_the_buffers():
    hw = _point_hw(dict(rows=8, cols=32, post_lanes=8, max_tokens=256, max_in=768))
    x = dict((n, (w, d)) for n, w, d, _ in memories("linear", hw))["x"]
    assert x == (64, 256 // 8 * 768)     # the token buffer holds max_tokens x max_in bytes
    assert resources(hw).bram36 > resources(hw.replace(max_tokens=128)).bram36


def test_command_prints_the_error_per_point(capsys):
    assert main(["hw", "resources"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert rows.count("linear") == sum(u == "linear" for u, _ in FIT_POINTS) + 1
    assert out.count("(held out)") == 1
    assert "(y = Yosys, f = formula; points measured" in out
    assert main(["hw", "resources", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(load_points()["points"]) and {"dsp_error", "lut_error"} <= set(rows[0])


def test_bad_points_file(tmp_path):
    path = tmp_path / "points.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match=r"^Cannot read the resource points .*points"):
        load_points(path)


def test_command_output_needs_measure(capsys):
    assert main(["hw", "resources", "--output", "x.json"]) == 2
    assert "--output needs --measure" in capsys.readouterr().err
    assert main(["hw", "resources", "--unit", "attention"]) == 2
    assert "--unit needs --measure" in capsys.readouterr().err


def test_measure_one_unit_keeps_the_others(monkeypatch, tmp_path):
    """``--measure --unit``: that unit's points synthesized again (here a stand-in for
    Yosys that counts 7 DSP48E2), dated; the others kept as committed, in the same order."""
    import moevit.hw.estimate as estimate
    import moevit.hw.generate as generate
    from moevit.hw.cost.resources import measure

    class Counts:
        dsp, lut, ff, bram, uram = 7, 100, 200, 0.0, 0

    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(generate, "verilog_file", lambda unit, hw, folder: folder / "x.v")
    monkeypatch.setattr(estimate, "estimate_verilog", lambda unit, path, top, folder: Counts)
    committed = load_points()
    data = measure(unit="control", output=tmp_path / "points.json", progress=False,
                   command="moevit hw resources --measure --unit control")
    assert json.loads((tmp_path / "points.json").read_text()) == data
    assert [(p["unit"], p["hw"]) for p in data["points"]] == [*FIT_POINTS, HELD_OUT]
    for old, new in zip(committed["points"], data["points"]):
        if old["unit"] == "control":
            assert (new["dsp"], new["lut"], new["date"]) == (7, 100, data["date"])
        else:
            assert new == dict(old, date=old.get("date", committed["date"]))
    with pytest.raises(ConfigError, match="No unit 'bogus' to measure"):
        measure(unit="bogus", progress=False)


@pytest.mark.slow
def test_held_out_point_and_the_confirm_slice(tmp_path):
    from moevit.hw.cost.confirm import extrapolate, slice_of
    from moevit.hw.cost.resources import measure

    hw = _point_hw(HELD_OUT[1])
    data = measure([HELD_OUT, ("linear", dict(HELD_OUT[1], rows=2, max_tokens=32))],
                   folder=tmp_path, progress=False)
    whole, part = data["points"]
    got = unit_resources("linear", hw)
    lut_error, ff_error = got.lut / whole["lut"] - 1, got.ff / whole["ff"] - 1
    print(f"\nheld out {HELD_OUT[1]}: DSP {whole['dsp']}/{got.dsp} BRAM {whole['bram36']}/"
          f"{got.bram36} LUT {whole['lut']}/{got.lut:.0f} ({lut_error:+.1%}) FF "
          f"{whole['ff']}/{got.ff:.0f} ({ff_error:+.1%})")
    assert got.dsp == whole["dsp"] and got.bram36 == whole["bram36"]
    assert abs(lut_error) <= HELD_OUT_BOUND and abs(ff_error) <= HELD_OUT_BOUND
    assert slice_of(hw).rows == 2
    estimated = extrapolate(hw, part)
    assert estimated["dsp"] == whole["dsp"] and estimated["bram36"] == whole["bram36"]


def test_confirm_synthesizes_a_shallow_slice_and_extrapolates(monkeypatch, tmp_path):
    """dse --confirm on the saved zcu102 point, Yosys replaced by the slice's formula plus
    one BRAM36: two rows and a 64-token buffer go to Yosys (the whole 2,080-token buffer
    made the WASM Yosys fail); the whole's DSP adds the other rows' DSP48E2, its BRAM is the
    formula's corrected by the slice's error (17 rows: one more for the descriptor check's
    token_tiles x 17, a shift at the slice's two)."""
    import moevit.hw.estimate as estimate
    import moevit.hw.generate as generate
    from moevit.hw.config import get_hw_config
    from moevit.hw.cost.confirm import SLICE_TOKENS, confirm

    hw = get_hw_config("zcu102-edge-moe")
    seen = []

    class Slice:
        def __init__(self, part):
            self.part = unit_resources("linear", part)

        def row(self):
            return {"dsp": self.part.dsp, "bram": self.part.bram36 + 1, "uram": self.part.uram}

    def verilog_file(unit, part, folder):
        seen.append(part)
        return folder / "linear.v"

    monkeypatch.setenv("MOEVIT_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(generate, "verilog_file", verilog_file)
    monkeypatch.setattr(estimate, "estimate_verilog",
                        lambda unit, path, top, folder: Slice(seen[-1]))
    got = confirm({"name": hw.name, "hw": hw.to_dict()}, progress=False)
    part, = seen
    assert (part.rows, part.max_tokens, part.cols, part.max_in, part.dsp_packing) == \
        (2, SLICE_TOKENS, hw.cols, hw.max_in, hw.dsp_packing)
    whole = unit_resources("linear", hw)
    assert got["slice"] == "2x64" and got["predicted"]["dsp"] == whole.dsp
    assert got["estimated"] == {"dsp": unit_resources("linear", part).dsp
                                + (hw.rows - 2) * hw.cols * hw.chain_depth // hw.dsp_packing + 1,
                                "bram36": whole.bram36 + 1, "uram": whole.uram}
    assert got["estimated"]["dsp"] == whole.dsp


def test_the_onchip_window_is_counted_in_block_ram():
    """The on-chip activation window (``onchip_bytes``) is one bus-word-wide RAM: 32 KiB at
    128 bits is 2,048 words, fifteen 9-bit x 2,048 RAMB18E2 side by side = 7.5 RAMB36E2
    (hand count of the cheapest tiling); none without a window."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.cost.resources import memories, resources

    hw = DEFAULT_HW["tiny"]
    assert memories("onchip", hw) == []
    window = hw.replace(onchip_bytes=32 * 1024)
    assert memories("onchip", window) == [("window", 128, 2048, 1)]
    assert resources(window).bram36 - resources(hw).bram36 == 7.5


def test_the_second_issue_lane_costs_what_yosys_counted():
    """The second issue lane's resources on the point Yosys measured both ways (tiny's top,
    bus 128, 2 ports: 55,548 -> 60,033 LUT, 33,338 -> 34,425 FF, 2026-12-03) are the
    difference it counted; none on one lane."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.cost.resources import resources

    one = DEFAULT_HW["tiny"].replace(max_tokens=256, memory_ports=2)
    added = resources(one.replace(issue_lanes=2)) + resources(one) * -1
    assert (round(added.lut), round(added.ff), added.dsp, added.bram36) == (4_485, 1_087, 0, 0)


@pytest.mark.parametrize("cols, lanes, prefetch, counted", [
    (16, 0, 0, (257, 54_848, 33_385, 38.5)), (32, 0, 0, (401, 68_711, 42_488, 42.5)),
    (32, 8, 0, (281, 56_204, 40_951, 42.5)), (16, 0, 1, (262, 55_671, 33_574, 38.5))])
def test_the_whole_top_is_what_yosys_counted(cols, lanes, prefetch, counted):
    """tiny's whole top (bus 128, 2 ports, max_tokens 256) at 16 and 32 array columns, at
    32 with 8 COMBINE lanes and at 16 with the expert prefetch, counted by Yosys flattened
    (DSP48E2, LUT, FF, BRAM36; the first two on 2026-12-06, the last two as the first two
    then plus what the lanes and the prefetch changed in the counts of 2026-12-03, 70,869
    -> 58,362 and 55,548 -> 56,371 LUT: the shadow bank's change is in the array alone,
    which they do not touch): the units' formulas, the port's arbiter, the
    COMBINE engine's lanes (:data:`COMBINE_LANE`), the prefetch (:data:`PREFETCH`, from the
    last count) and :data:`TOP_OVERHEAD` + :data:`TOP_PER_COL` add up to them. The block
    RAM exactly, from the structure, and the DSPs (the prefetch's from its count); LUT and
    FF within 20, their lane's share taken from the second and third counts and the rest
    from the first two. The DSPs are two more than those counts since each LayerNorm lane's
    ``c_i*R`` is ``x_i*(D*R) - s1*R`` (2026-12-07: Yosys's DSP mapping of the first top,
    ``synth_xilinx -run :map_luts``, 257; 254 on the RTL before, 255 before the normalised
    value took 19 bits; the one LayerNorm of each top, 7 -> 10 alone)."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.cost.resources import resources

    total = resources(DEFAULT_HW["tiny"].replace(max_tokens=256, memory_ports=2, cols=cols,
                                                 combine_lanes=lanes, expert_prefetch=prefetch))
    dsp, lut, ff, bram36 = counted
    assert (total.dsp, total.bram36) == (dsp, bram36)
    assert total.lut == pytest.approx(lut, abs=20) and total.ff == pytest.approx(ff, abs=20)


@pytest.mark.slow
def test_the_packed_weights_are_what_yosys_counts(tmp_path):
    """``wide_w``'s ``w`` fetch (the bus beats packed into 256-byte words before a FIFO of
    512 beats' worth) against the fetch of 64-byte beats, both synthesized by Yosys
    (``synth_xilinx -family xcup``, ~6 minutes): the model's difference (:func:`packed_w`,
    :func:`read_ahead_fifo`) within 5 % on LUT and FF, its BRAM36 exact."""
    from amaranth.back import verilog

    from moevit.hw.config import get_hw_config
    from moevit.hw.cost.resources import packed_w, read_ahead_fifo
    from moevit.hw.estimate import estimate_verilog
    from moevit.hw.top.linear_engine import Fetch, LinearEngine

    hw = get_hw_config("zcu102-edge-moe").replace(wide_w=1)
    counted = []
    for name, out, packed in (("plain", hw.cols, False),
                              ("packed", hw.cols * hw.w_features, True)):
        fetch = Fetch(hw.bus_width, out, chunk=LinearEngine.w_chunk(hw),
                      depth=LinearEngine.w_depth(hw), packed=packed)
        source = tmp_path / f"{name}.v"
        source.write_text(verilog.convert(fetch, name=name))
        counted.append(estimate_verilog("fetch", source, name, tmp_path / name))
    lut, ff, bram = (getattr(counted[1], k) - getattr(counted[0], k)
                     for k in ("lut", "ff", "bram"))
    model = packed_w(hw) + read_ahead_fifo(hw) + read_ahead_fifo(hw.replace(wide_w=0)) * -1
    print(f"\npacked w: LUT +{lut:,} (model +{model.lut:,.0f}), FF +{ff:,} (model "
          f"+{model.ff:,.0f}), BRAM36 +{bram} (model +{model.bram36})")
    assert model.bram36 == bram
    assert model.lut == pytest.approx(lut, rel=0.05) and model.ff == pytest.approx(ff, rel=0.05)
