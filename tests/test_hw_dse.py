"""The design-space search (hw/cost/dse.py): every board x model config on the reduced grid,
the same cycle model as `moevit hw cost`, the saved named HwConfigs, and bad input."""

import contextlib
import itertools
import json
import math
import re

import pytest

from moevit.cli import main
from moevit.errors import ConfigError
from moevit.hw.boards import BOARDS, get_board
from moevit.hw.config import HwConfig, get_hw_config, saved_hw_configs
from moevit.hw.cost.dse import (USABLE, Step, Workload, _fits, _window, dse_rows, predict,
                               routed_tokens, workload)

FIELDS = ("board", "config", "mac_units", "latency_ms", "fps_batch1", "best_fps", "best_batch",
          "gops", "dsp_efficiency", "binding_limit", "dsp", "bram36", "uram")


@pytest.fixture(scope="module")
def rows():
    return {(b, c): dse_rows(b, c, quick=True, progress=False)[0]
            for b in BOARDS for c in ("edge-moe", "m3vit-s")}


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("config", ["edge-moe", "m3vit-s"])
def test_search_fits_the_board_and_its_figures_agree(rows, board, config):
    row = rows[board, config]
    print(f"\n{board} {config}: {row['linear_mac_units']} + {row['attention_mac_units']} MAC "
          f"units, {row['latency_ms']:.2f} ms, {row['fps_batch1']:.1f} FPS, best "
          f"{row['best_fps']:.1f} at batch {row['best_batch']}, {row['gops']:.0f} GOPS, "
          f"limit {row['binding_limit']}, DSP {row['dsp']} BRAM {row['bram36']}")
    assert set(FIELDS) <= set(row)
    b = get_board(board)
    for name in ("dsp", "bram36", "uram", "lut", "ff"):
        assert row[name] <= getattr(b, name) * USABLE[name]
    hw = HwConfig.from_dict(row["hw"])
    # The figures are the chosen HwConfig's own (its memory ports, striper and lanes too).
    from moevit.hw.cost.resources import resources
    fitted = resources(hw)
    assert (row["dsp"], row["bram36"]) == (int(fitted.dsp), fitted.bram36)
    assert hw.clock_mhz == b.clock_mhz and row["mac_units"] == hw.macs + 2 * hw.score_lanes \
        * hw.heads_parallel * hw.row_lanes
    assert row["fps_batch1"] == pytest.approx(1e3 / row["latency_ms"])
    assert row["best_fps"] >= row["fps_batch1"] and row["best_batch"] >= 1
    assert row["gops"] == pytest.approx(2 * row["macs_per_image"] * row["fps_batch1"] / 1e9)
    assert row["compiles"] == (hw.max_tokens >= workload(config).tokens)
    assert row["binding_limit"] in ("bandwidth", "DSP", "BRAM", "URAM", "LUT", "FF") \
        or row["binding_limit"].startswith("compute: ")
    # Predicted at the board's memory latency, with the bursts in flight to carry it.
    assert row["memory_latency"] == math.ceil(250 * b.clock_mhz / 1e3) \
        and row["max_outstanding"] == hw.max_outstanding == 64
    if row["compiles"]:
        from moevit.model.config import get_config

        hw.check_model(get_config(config))
    # The top can be built on it: the linear engine takes its columns and bus.
    from moevit.hw.top.linear_engine import LinearEngine

    LinearEngine(hw)


@pytest.mark.parametrize("board, objective", [("zcu102", "latency"), ("u280", "throughput")])
def test_each_board_is_ranked_by_its_objective(rows, board, objective):
    """A Zynq board's points best first by batch-1 latency, the U280's by images/s at the best
    batch (each point's best batch predicted); the row says which, and why."""
    from moevit.hw.cost.dse import LATENCY_SLACK, OBJECTIVES, search

    row = rows[board, "edge-moe"]
    assert (row["objective"], row["objective_reason"]) == OBJECTIVES[get_board(board).host]
    assert row["objective"] == objective
    points = search(board, "edge-moe", quick=True, progress=False)
    assert len(points) > 1 and all(p.best_cycles_per_image > 0 for p in points)
    latency = [p.latency_cycles for p in points]
    per_image = [p.best_cycles_per_image for p in points]
    if objective == "latency":
        assert latency == sorted(latency) and latency[-1] <= latency[0] * (1 + LATENCY_SLACK)
    else:
        assert per_image == sorted(per_image)
    assert row["best_fps"] == pytest.approx(points[0].hw.clock_mhz * 1e6 / per_image[0])
    # What binds: in the run the objective ranks by.
    assert row["binding_batch"] == (1 if objective == "latency" else row["best_batch"])


def test_a_throughput_boards_ports_are_chosen_at_its_best_batch(rows):
    """The U280's chosen memory ports and weight ports: no other choice of the board's that
    fits gives more images a second at the best batch by more than the slack (a batch reads
    each expert's weights once for all its images, so batch 1's choice is not the one)."""
    from moevit.hw.cost.dse import (PORT_CHOICES, PORTS_SLACK, _best_batch, _fits,
                                    _port_counts, workload)
    from moevit.hw.cost.resources import resources

    board, row = get_board("u280"), rows["u280", "edge-moe"]
    hw, work = HwConfig.from_dict(row["hw"]), workload("edge-moe")
    chosen = _best_batch(work, hw, board, row["task"])[1]
    for ports in _port_counts(board, hw):
        for weights in [w for w in PORT_CHOICES if w <= ports]:
            other = hw.replace(memory_ports=ports, weight_ports=weights)
            if not _fits(resources(other), board):
                cycles = _best_batch(work, other, board, row["task"])[1]
                assert chosen <= cycles * (1 + PORTS_SLACK), (ports, weights, cycles, chosen)


def test_a_throughput_boards_window_is_chosen_at_its_best_batch(rows):
    """The U280's on-chip window: larger than the one batch 1 fills (a batch of 16 has 16
    times its activations), and no larger window of the search's that fits gives more
    images a second at any batch; what binds is judged without it (it fills the block RAM
    the rest leaves)."""
    from moevit.hw.cost.dse import (ONCHIP_CHOICES, _bandwidths, _batches, _fits, predict,
                                    workload)
    from moevit.hw.cost.resources import resources

    board, row = get_board("u280"), rows["u280", "edge-moe"]
    hw, work = HwConfig.from_dict(row["hw"]), workload("edge-moe")
    print(f"\nu280 window {hw.onchip_bytes:,} bytes (batch 1 fills {work.onchip_need():,}), "
          f"{row['best_fps']:.1f} images/s at batch {row['best_batch']}, "
          f"BRAM36 {row['bram36']}, binds: {row['binding_limit']}")
    assert hw.onchip_bytes > work.onchip_need()
    chosen = 1e6 * hw.clock_mhz / row["best_fps"]
    port, memory, latency = _bandwidths(board, hw)
    for size in (c for c in ONCHIP_CHOICES if c > hw.onchip_bytes):
        other = hw.replace(onchip_bytes=size)
        if _fits(resources(other), board):
            continue
        for batch in _batches(work.tokens, other):
            batched = workload("edge-moe", batch=batch)
            if size > batched.onchip_need():
                continue
            run = predict(batched.steps(row["task"], size), other, port, batch, memory, latency)
            assert chosen <= run.cycles / batch, (size, batch)
    assert row["binding_limit"] != "BRAM"


def test_a_throughput_boards_point_takes_two_issue_lanes_when_they_pay(rows):
    """The U280 point on two issue lanes (a batch's two halves, one's linear layers beside
    the other's attention): more images a second at its best batch than the same point on
    one lane by more than the slack, within the board's resources (the second lane's movers
    counted); a Zynq board's (batch 1: one stream) on two only with one image in token
    chunks."""
    from moevit.hw.cost.dse import PORTS_SLACK, _best_batch, _fits
    from moevit.hw.cost.resources import lane_overhead, resources

    board, row = get_board("u280"), rows["u280", "edge-moe"]
    hw, work = HwConfig.from_dict(row["hw"]), workload("edge-moe")
    assert row["issue_lanes"] == hw.issue_lanes == 2 and hw.memory_ports >= 2
    two = _best_batch(work, hw, board, row["task"])
    one = _best_batch(work, hw.replace(issue_lanes=1), board, row["task"])
    print(f"\nu280: {1e6 * hw.clock_mhz / two[1]:.1f} images/s on two lanes (batch {two[0]}), "
          f"{1e6 * hw.clock_mhz / one[1]:.1f} on one (batch {one[0]}); the second lane's "
          f"movers {lane_overhead(hw)}")
    assert two[1] < one[1] * (1 - PORTS_SLACK) and not _fits(resources(hw), board)
    assert lane_overhead(hw).lut > 0 and lane_overhead(hw.replace(issue_lanes=1)).lut == 0
    for board in ("zcu102", "zcu104"):
        zynq = HwConfig.from_dict(rows[board, "edge-moe"]["hw"])
        assert zynq.issue_lanes == 1 or zynq.token_chunks in (1, 2), board


def test_targets_are_checked_and_say_what_stops_them(rows):
    zcu102, u280 = rows["zcu102", "edge-moe"], rows["u280", "edge-moe"]
    assert [t["field"] for t in zcu102["targets"]] == ["mac_units", "latency_ms"]
    assert [t["field"] for t in u280["targets"]] == ["best_fps"]
    for row in (zcu102, u280):
        for t in row["targets"]:
            assert t["met"] == (t["predicted"] >= t["value"] if t["op"] == ">="
                                else t["predicted"] <= t["value"])
            assert t["met"] or row["binding_limit"] in t["limit"]



def test_memory_ports_trade_against_lanes():
    """A memory port count that does not fit beside a point's LayerNorm and COMBINE lanes is
    tried with fewer lanes (COMBINE first), not given up: on the ZCU102 with its HP ports
    clocked at 333 MHz, a 20x64/2 array (attention 1 x 4 x 64, 32 LayerNorm lanes) with 32
    COMBINE lanes fits 2 ports but 4 only with 16 lanes, and 4 ports with 16 lanes are the
    fastest (4.90 ms against 5.08; 21 rows until the LayerNorm's row banks grew, 2026-12-07);
    a point that fits with no lanes at all is None."""
    import dataclasses

    from moevit.hw.cost.dse import _fewer_lanes, _ports, batch1_runs
    from moevit.hw.cost.resources import _default_fit, resources

    board = dataclasses.replace(get_board("zcu102"), port_clock_mhz=333)
    work, fit = workload("edge-moe"), _default_fit()
    hw = get_hw_config("zcu102-edge-moe").replace(
        rows=20, max_tokens=2080, chain_depth=1, post_lanes=16, issue_lanes=1, token_chunks=0,
        memory_ports=1, weight_ports=1, chan_striped=0, combine_lanes=32, norm_lanes=32,
        heads_parallel=1,
        row_lanes=4, score_lanes=64, context_lanes=0)
    two = hw.replace(memory_ports=2, weight_ports=2)
    assert _fits(resources(two), board) is None
    assert _fits(resources(hw.replace(memory_ports=4, weight_ports=4)), board) == "lut"
    chosen, res, runs = _ports(work, hw, board, fit, True)
    cycles = max(r.cycles for r in runs.values())
    alone = max(r.cycles for r in batch1_runs(work, two, board).values())
    print(f"chosen: {chosen.memory_ports} ports, weights over {chosen.weight_ports}, "
          f"{chosen.combine_width} COMBINE lanes: {cycles / 2e5:.3f} ms; 2 ports with 32 "
          f"lanes {alone / 2e5:.3f} ms")
    assert (chosen.memory_ports, chosen.weight_ports, chosen.combine_width) == (4, 4, 16)
    assert _fits(res, board) is None and cycles < alone
    assert _fewer_lanes(hw.replace(rows=128, max_tokens=2176), board, fit, True) is None


def test_a_workload_of_the_attention_in_token_chunks():
    """``workload(lanes=2, chunks=2)``: the program with ``token_chunks`` 2, each block's
    attention two steps of the chunks' query rows (tiny's 65 tokens cut at 32) against
    every key; with ``chunks`` 1 one step of every row. A HwConfig with ``token_chunks`` 2
    is predicted from it: its attention takes more cycles in all (each chunk's loads every
    key and value again)."""
    from moevit.hw.cost.dse import batch1_runs

    rows = {chunks: [(s.values["tokens"], s.values["rows"])
                     for s in workload("tiny", lanes=2, chunks=chunks).in_order("semseg")
                     if s.mnemonic == "ATTENTION"] for chunks in (1, 2)}
    assert set(rows[1]) == {(65, 65)} and set(rows[2]) == {(65, 32), (65, 33)}
    assert len(rows[2]) == 2 * len(rows[1])
    hw = HwConfig.for_model("tiny").replace(max_tokens=256, memory_ports=2, issue_lanes=2)
    board, work = get_board("zcu102"), workload("tiny")
    one, two = (batch1_runs(work, hw.replace(token_chunks=c), board)["semseg"].units["attention"]
                for c in (1, 2))
    print(f"\ntiny's attention on two lanes at the ZCU102's memory: {one:,} cycles in all, "
          f"{two:,} in chunks of rows")
    assert two > one


def test_token_chunks_on_two_lanes_on_the_zcu102():
    """One image in token chunks on two issue lanes (``token_chunks``): the prediction is
    the chunked program's two-lane timeline. A 17x64 ZCU102 point (as saved before the
    linear kernel's shadow bank was loaded in place) runs so (its LayerNorm, routing,
    COMBINE and one chunk's attention beside the other chunk's linear layers), fits, and
    is faster than the same point on one lane and than its token-wise layers alone in
    chunks (each in the on-chip window the search gives it). The point saved since, a
    9x64 array in chains of 4 whose x beats bring a step's features (``wide_x``), in token
    chunks on two lanes, is faster still, and faster than on one lane."""
    from moevit.hw.cost.dse import batch1_runs
    from moevit.hw.cost.resources import resources

    saved = get_hw_config("zcu102-edge-moe")
    chunked = saved.replace(rows=17, max_tokens=2074, chain_depth=1, post_lanes=8,
                            norm_lanes=32, combine_lanes=16, issue_lanes=2, token_chunks=2,
                            onchip_bytes=524288)
    board, work = get_board("zcu102"), workload("edge-moe")
    hw = chunked.replace(issue_lanes=1, token_chunks=0)
    rowwise = _window(workload("edge-moe", lanes=2), chunked.replace(token_chunks=1), board,
                      None, True)
    one, layers, two, now, now_one = (
        max(r.cycles for r in batch1_runs(work, h, board).values())
        for h in (hw, rowwise, chunked, saved, saved.replace(issue_lanes=1, token_chunks=0)))
    steps = workload("edge-moe", lanes=2, chunks=2).in_order("semseg")
    norms = [s.values["tokens"] for s in steps if s.mnemonic == "LAYERNORM"]
    rows = [s.values["rows"] for s in steps if s.mnemonic == "ATTENTION"]
    print(f"17x64: {one:,} cycles on one lane, {layers:,} with its token-wise layers in "
          f"chunks on two, {two:,} with its attention too ({two / one - 1:+.1%}); LUT "
          f"{resources(chunked).lut:,.0f} of {get_board('zcu102').lut * USABLE['lut']:,.0f} "
          f"usable; the saved 17x64x2 {now:,} ({now_one:,} on one lane)")
    assert two < layers < one and set(norms) == set(rows) == {64, 65}
    assert _fits(resources(chunked), board) is None
    assert (saved.rows, saved.chain_depth, saved.wide_x, saved.issue_lanes,
            saved.token_chunks) == (9, 4, 1, 2, 2) and now < two and now < now_one


@pytest.mark.parametrize("board", BOARDS)
@pytest.mark.parametrize("config", ["edge-moe", "m3vit-s"])
def test_latency_floors_bound_the_prediction(rows, board, config):
    """The floors are lower bounds: the weights' reading and the least any fitting HwConfig
    could give <= any schedule of one image on the chosen point's units <= one instruction
    at a time, and that at least its least on any fitting HwConfig; the predicted latency
    at least the units' floor, and on one issue lane the floor of one at a time (two lanes
    in token chunks run instructions side by side: zcu102 m3vit-s on the quick grid, 442.7
    ms predicted, 479.1 one at a time)."""
    row = rows[board, config]
    print(f"\n{board} {config}: weights {row['weights_floor_ms']:.3f} ms, any fitting "
          f"point {row['lowest_floor_ms']:.3f} ms ({row['lowest_floor_binding']}, "
          f"{row['lowest_floor_array']}), these units {row['units_floor_ms']:.3f} ms "
          f"({row['units_binding']}), serial {row['serial_floor_ms']:.3f} ms, predicted "
          f"{row['latency_ms']:.3f} ms")
    assert 0 < row["weights_floor_ms"] <= row["units_floor_ms"]
    assert 0 < row["lowest_floor_ms"] <= row["units_floor_ms"] <= row["serial_floor_ms"]
    assert row["units_floor_ms"] <= row["latency_ms"]
    if row["hw"].get("issue_lanes", 1) == 1:
        assert row["serial_floor_ms"] <= row["latency_ms"]
    assert row["lowest_floor_ms"] <= row["lowest_serial_floor_ms"] <= row["serial_floor_ms"]


def test_the_weights_floor_is_every_weight_read_once(rows):
    """edge-moe's weights floor on ZCU102, counted again from the model's layers: each
    layer's weights and 8-byte channel constants, its outputs padded to whole array
    columns, once per image (balanced routing: every expert chosen), at the row's
    bandwidth; the latency target's limit names the schedule's floor it lies under, the
    MAC target's that no point of so many fits."""
    from moevit.model.config import get_config

    row, m = rows["zcu102", "edge-moe"], get_config("edge-moe")
    cols = row["hw"]["cols"]

    def layer(inputs, outputs):
        padded = -(-outputs // cols) * cols
        return padded * inputs + 8 * padded

    semseg = m.tasks[0].classes * m.patch ** 2
    total = (layer(m.patch_dim, m.dim) + layer(m.dim, semseg)
             + m.depth * (layer(m.dim, 3 * m.dim) + layer(m.dim, m.dim)))
    for i in range(m.depth):
        total += (layer(m.dim, m.experts) + m.experts * (layer(m.dim, m.expert_hidden)
                                                         + layer(m.expert_hidden, m.dim))
                  if m.is_moe(i) else layer(m.dim, m.mlp_hidden) + layer(m.mlp_hidden, m.dim))
    assert row["task"] == "semseg"
    assert row["weights_floor_ms"] == pytest.approx(total / (row["bandwidth_gbs"] * 1e6))
    latency = next(t for t in row["targets"] if t["field"] == "latency_ms")
    assert (f"{row['serial_floor_ms']:.2f} ms" in latency["limit"]) == \
        (latency["value"] < row["serial_floor_ms"])
    assert f"{row['lowest_serial_floor_ms']:.2f} ms at least" in latency["limit"]
    # Points of 4,000 MAC units fit the ZCU102 and could go under 2 ms on a schedule that
    # overlaps their units, not one instruction at a time; the MAC target says so.
    macs = next(t for t in row["targets"] if t["field"] == "mac_units")
    floor = row["mac_target_floor"]
    assert floor["ms"] < 2 < floor["serial_ms"] and floor["mac_units"] >= 4000
    assert (f"with 4,000 MAC units or more, no HwConfig of these kernels that fits goes under "
            f"{floor['ms']:.2f} ms") in macs["limit"]
    assert (f"under the 2 ms target, but not one instruction at a time "
            f"({floor['serial_ms']:.2f} ms at least)") in macs["limit"]


def test_the_zcu102_floors_of_these_kernels():
    """The least batch-1 latency of edge-moe on any HwConfig of these kernels that fits the
    ZCU102, counted again from the model's layers (the linear array's steps: every token
    tile of ``rows`` tokens by every tile of ``cols`` outputs takes ``in_features /
    chain_depth``; each expert its tokens under the search's routing; the weights read at
    the four HP ports' 64 bytes a cycle; the attention's QK and PV on its MAC units). On
    this top, one instruction at a time: over the issue's 2 ms on every point. On any
    schedule that respects the image's dependencies (each block's attention after every
    token's QKV, each MoE layer's experts after every token's gate; the layers between
    pipelined token by token, every weight read ahead): the linear array binding, on an
    array wider than a head in chains beside an attention kernel of four context
    requantizers, under 2 ms (1.52 ms at least, its QK packed two keys a DSP48E2; 1.60 ms
    before that packing, 2.02 ms before chains, when the LUTs of a fabric accumulator a MAC
    unit bound the arrays that fit). The points of 4,000 MAC units or more that fit left the
    attention kernel so few DSPs that it bound them, over 2 ms (2.03 ms at least; 5.49 ms
    before chains) until QK packed two keys a DSP48E2 and
    the search tried fewer context requantizers: now an array of 14x64 in chains of 4 beside
    a packed 1x4x64 attention kernel of two requantizers, the linear array binding, under 2
    ms (1.58 ms at least). Each point counted fits."""
    from moevit.hw.cost.dse import _base_hw, lowest_floor
    from moevit.hw.cost.resources import resources
    from moevit.model.config import get_config

    m, board, work = get_config("edge-moe"), get_board("zcu102"), workload("edge-moe")
    ms = board.clock_mhz * 1e3
    least = _base_hw(m, board).replace(expert_prefetch=0, combine_lanes=1, post_lanes=2)

    def recount(low, serial):
        rows, cols, chain, packing = re.fullmatch(r"(\d+)x(\d+)(?:x(\d))?/(\d)",
                                                  low["array"]).groups()
        rows, cols, chain, packing = map(int, (rows, cols, chain or 1, packing))
        heads, row_lanes, score_lanes, pairs = re.fullmatch(r"(\d+)x(\d+)x(\d+)(/2)?",
                                                            low["attention"]).groups()
        heads, row_lanes, score_lanes = map(int, (heads, row_lanes, score_lanes))
        hw = least.replace(rows=rows, cols=cols, dsp_packing=packing, chain_depth=chain,
                           max_tokens=rows,
                           heads_parallel=heads, row_lanes=row_lanes, score_lanes=score_lanes,
                           context_lanes=low["context_lanes"] % score_lanes,
                           score_packing=2 if pairs else 1)
        assert _fits(resources(hw), board) is None and low["mac_units"] == \
            hw.macs + hw.attention_macs

        def layer(inputs, outputs, tokens=m.tokens):     # (steps, the weights' reading)
            padded = -(-outputs // cols) * cols
            return -(-tokens // rows) * -(-outputs // cols) * -(-inputs // chain), \
                (padded * inputs + 8 * padded) / 64

        qkv = layer(m.dim, 3 * m.dim)
        experts = [job for n in routed_tokens(m.tokens, m.top_k, m.experts)
                   for job in (layer(m.dim, m.expert_hidden, n), layer(m.expert_hidden, m.dim, n))]
        attending = 2 * m.tokens ** 2 * m.dim / hw.attention_macs    # one block's
        # (the linear jobs, the attention's cycles) of each stretch between the joins
        segments = [([layer(m.patch_dim, m.dim), qkv], 0)]
        for i in range(m.depth):
            after = [qkv] if i + 1 < m.depth else [layer(m.dim, m.tasks[0].classes * m.patch ** 2)]
            if m.is_moe(i):
                segments += [([layer(m.dim, m.dim), layer(m.dim, m.experts)], attending),
                             (experts + after, 0)]
            else:
                segments.append(([layer(m.dim, m.dim), layer(m.dim, m.mlp_hidden),
                                  layer(m.mlp_hidden, m.dim)] + after, attending))
        jobs = [job for js, _ in segments for job in js]
        if serial:
            return (sum(max(steps, reading) for steps, reading in jobs)
                    + m.depth * attending) / ms, hw
        chain = sum(max(sum(steps for steps, _ in js), a) for js, a in segments)
        return max(chain, sum(reading for _, reading in jobs)) / ms, hw

    one_at_a_time = lowest_floor(work, board, "semseg", serial=True)
    any_schedule = lowest_floor(work, board, "semseg")
    big = lowest_floor(work, board, "semseg", mac_units=4000)
    print(f"\nzcu102 edge-moe: this top {one_at_a_time}; any schedule {any_schedule}; "
          f"4,000 MAC units or more {big}")
    assert one_at_a_time["ms"] == pytest.approx(recount(one_at_a_time, True)[0])
    assert one_at_a_time["ms"] > 2
    floor, hw = recount(any_schedule, False)
    assert any_schedule["ms"] == pytest.approx(floor, rel=0.005) and any_schedule["ms"] < 2
    assert any_schedule["binding"] == "linear" and hw.cols > m.head_dim and hw.chain_depth > 1
    assert hw.context_width < hw.score_lanes
    # (the recount's stretches are this test's reading of the joins: where the attention
    # kernel binds one they part from the search's `image_segments`: by 0.2 % above, where
    # it binds a few, and 1.4 % below, where it binds the image)
    floor, hw = recount(big, False)
    assert big["ms"] == pytest.approx(floor, rel=0.02) and big["ms"] < 2
    assert big["binding"] == "linear" and big["mac_units"] >= 4000 and hw.score_packing == 2


@pytest.mark.parametrize("bandwidth, onchip, prefetch", [(None, 0, 0), (1.0, 0, 0),
                                                         (1.0, 32768, 0), (None, 0, 1)])
def test_predict_is_the_cost_model_of_the_compiled_program(bandwidth, onchip, prefetch):
    """On tiny's own program and routing, the search's prediction equals `hw cost`'s
    compute per instruction and its total within 0.1 %, at a bus word a cycle and behind a
    memory of one byte a cycle (memory-bound: the overlap terms of both), and on a top with
    the sequencer's look-ahead (``expert_prefetch``: the same program, each instruction's
    issue cheaper in both); within 1 % with a 32 KiB on-chip window (the program compiled
    with it; the search's placement of the workload)."""
    import dataclasses

    import numpy as np

    from moevit.hw.cost.cycles import program_cycles
    from moevit.hw.cost.dse import compile_signal_model
    from moevit.model.config import get_config

    program = compile_signal_model(get_config("tiny"), onchip_bytes=onchip)
    program = dataclasses.replace(program, hw=program.hw.replace(expert_prefetch=prefetch))
    image = np.random.default_rng(0).integers(-128, 128, program.layout["input"].shape,
                                              dtype=np.int8)
    bandwidth = bandwidth or program.hw.bus_width / 8
    cost = program_cycles(program, image, 0, bandwidth=bandwidth)
    steps = workload("tiny").in_order("semseg", onchip)
    assert bool(onchip) == any(step.onchip for step in steps)
    # The program's own routing instead of the balanced one (from the bytes each EXPERT
    # writes, all of them in DRAM without the window).
    plain = program_cycles(compile_signal_model(get_config("tiny")), image, 0) if onchip \
        else cost
    actual = []
    for step, i in zip(steps, plain.instructions):
        if step.mnemonic == "EXPERT":
            f = step.values
            n = i.bytes_written // (f["hidden"] + f["dim"])
            step = Step(step.mnemonic, step.unit, step.fields, n, step.onchip)
        actual.append((step, 1))
    got = predict(actual, program.hw, bandwidth)
    # Within 0.1 % without the window (the search's issue cost was the look-ahead's only on
    # two lanes until 2026-12-03: +0.49 % on the prefetch's top).
    assert got.cycles == pytest.approx(cost.cycles, rel=0.01 if onchip else 0.001)
    print(f"\ntiny task 0: search {got.cycles:,} vs hw cost {cost.cycles:,}: "
          f"{got.cycles / cost.cycles - 1:+.3%}")
    by_unit = {}
    for i in cost.instructions:
        by_unit[i.unit] = by_unit.get(i.unit, 0) + i.cycles
    if not onchip:  # hw cost splits a window's reads over the movers in proportion
        assert got.units["attention"] == by_unit["attention"]
        assert got.units["layernorm"] == by_unit["layernorm"]


def test_predict_lanes_is_the_compiled_program_of_two_lanes():
    """On tiny's batch of two on two issue lanes, on a HwConfig not the workload's: the
    search's re-interleaving (:func:`lanes_order`) gives the very order and ``concurrent``
    flags the compiler gives it, and its prediction (:func:`predict_lanes`) gains over one
    lane what the cost model's two-lane timeline of the compiled program gains, within 2 %
    (the search routes every expert the same share of tokens, the program the image's way)."""
    import numpy as np

    from moevit.hw.cost.cycles import program_cycles
    from moevit.hw.cost.dse import (_signal_quantized, lanes_order, predict_lanes,
                                    step_fields)
    from moevit.hw.program.compiler import compile_program
    from moevit.model.config import get_config

    qmodel = _signal_quantized(get_config("tiny"))
    hw = HwConfig.for_model("tiny").replace(rows=8, max_tokens=2 * 72, post_lanes=8,
                                            memory_ports=2, issue_lanes=2)
    program = compile_program(qmodel, hw, batch=2)
    work = workload("tiny", batch=2, lanes=2)
    steps, concurrent = lanes_order(work, "semseg", hw)

    def shape(fields):
        return [(k, v) for k, v in fields if not k.endswith("_addr")]

    compiled = [(d.MNEMONIC, shape(step_fields(d))) for d in program.instructions]
    ordered = [(s.mnemonic, shape(s.fields)) for s in steps]
    gates = [k for k, d in enumerate(program.instructions) if d.MNEMONIC == "TASK_LINEAR"]
    # The workload holds each TASK_LINEAR resolved for its task (a LINEAR).
    assert [m for k, (m, _) in enumerate(ordered) if k in gates] == ["LINEAR"] * len(gates)
    assert [c for k, c in enumerate(compiled) if k not in gates] \
        == [o for k, o in enumerate(ordered) if k not in gates]
    assert concurrent == program.concurrent
    image = np.random.default_rng(0).integers(-128, 128, program.layout["input"].shape,
                                              dtype=np.int8)
    cost = program_cycles(program, image, 0).cycles
    one = program_cycles(compile_program(qmodel, hw.replace(issue_lanes=1), batch=2), image,
                         0).cycles
    got = predict_lanes(work, "semseg", hw, hw.bus_width / 8, 2).cycles
    got_one = predict(workload("tiny", batch=2).steps("semseg"), hw.replace(issue_lanes=1),
                      hw.bus_width / 8, 2).cycles
    print(f"\ntiny batch 2: two lanes / one lane {got / got_one:.4f} by the search "
          f"({got:,} / {got_one:,}), {cost / one:.4f} by hw cost ({cost:,} / {one:,})")
    assert got / got_one == pytest.approx(cost / one, rel=0.02) and cost < one


def test_batching_reads_the_weights_once_per_batch():
    """The batch's prediction is its compiled program's: four images through one body read
    each weight once, so fewer bytes than four runs of one image; the activations and the
    compute are four images'."""
    from moevit.hw.cost.dse import _best_batch

    hw = HwConfig.for_model("edge-moe").replace(max_tokens=4 * 136, clock_mhz=200.0)
    one = predict(workload("edge-moe").steps("semseg"), hw, 16.0)
    batched = workload("edge-moe", batch=4)
    # The same work but the balanced routing of 4 x 129 tokens (and 3 rows more for the
    # patch embedding and the head, whose results between the images are dropped).
    assert batched.batch == 4 and batched.macs["semseg"] == pytest.approx(
        4 * workload("edge-moe").macs["semseg"], rel=0.02)
    four = predict(batched.steps("semseg"), hw, 16.0, 4)
    # Per image only the patchify, the class token and the attention are instructions of
    # their own.
    mnemonics = [s.mnemonic for s in batched.tasks["semseg"]]
    single = [s.mnemonic for s in workload("edge-moe").tasks["semseg"]]
    for m in set(single):
        assert mnemonics.count(m) == single.count(m) * (
            4 if m in ("PATCHIFY", "COPY", "ATTENTION") else 1), m
    weights = one.bytes - four.bytes / 4
    print(f"\nedge-moe semseg at 16 B/cycle: batch 1 {one.cycles:,} cycles {one.bytes:,} bytes; "
          f"batch 4 {four.cycles / 4:,.0f} cycles {four.bytes / 4:,.0f} bytes per image")
    assert weights > 0.5 * one.bytes            # most of an image's bytes are weights
    assert four.cycles < 4 * one.cycles
    board = get_board("zcu102")
    batch, per_image, run = _best_batch(workload("edge-moe"), hw, board, "semseg")
    assert run.batch == batch and run.cycles == pytest.approx(batch * per_image)
    assert batch in (1, 2, 4) and per_image <= one.cycles


def test_saved_configs_load_and_are_accepted_by_hw_generate(capsys):
    names = saved_hw_configs()
    assert {f"{b}-{c}" for b in BOARDS for c in ("edge-moe", "m3vit-s")} <= set(names)
    for name in names:
        hw = get_hw_config(name)
        assert hw.name == name
    assert main(["hw", "generate", "--config", "zcu102-edge-moe", "--unit", "control"]) == 0
    assert "moevit_control.v" in capsys.readouterr().out


def _one_error_line(capsys, pattern):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moevit: error: "), err
    assert re.search(pattern, err[0]), err[0]


@pytest.mark.parametrize("argv, pattern", [
    (["--board", "zcu999", "--config", "edge-moe"], r"Unknown board 'zcu999'"),
    (["--board", "zcu102", "--config", "vit-h"], r"Unknown config 'vit-h'"),
    (["--board", "zcu102", "--config", "edge-moe", "--save", "--quick"], r"--save keeps"),
])
def test_command_bad_input(capsys, argv, pattern):
    assert main(["dse", *argv]) == 2
    _one_error_line(capsys, pattern)


def _board_file(tmp_path, **changes):
    from moevit.hw.boards import _board_files

    data = json.loads(_board_files()["zcu102"].read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key]["value"] = value
    path = tmp_path / "board.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("changes, pattern", [
    (dict(dsp=None), r"dsp is missing"),
    (dict(dsp=0), r"dsp must be at least 1, not 0"),
    (dict(bram36=-5), r"bram36 must be at least 1, not -5"),
])
def test_board_file_with_missing_or_impossible_resources(tmp_path, capsys, changes, pattern):
    assert main(["dse", "--board", _board_file(tmp_path, **changes), "--config",
                 "edge-moe"]) == 2
    _one_error_line(capsys, pattern)


def test_a_model_that_fits_no_design_point_says_what_does_not_fit(tmp_path, capsys):
    assert main(["dse", "--board", _board_file(tmp_path, bram36=40), "--config", "m3vit-s",
                 "--quick", "--quiet"]) == 2
    _one_error_line(capsys, r"Model 'm3vit-s' fits no design point on board zcu102: the "
                            r"smallest needs [\d,]+ BRAM36 of the 34 usable .*largest memory")


def test_a_packing_the_widths_do_not_allow(tmp_path, monkeypatch, capsys):
    import moevit.hw.config as config

    hw = dict(HwConfig.for_model("edge-moe").to_dict(), cols=3, post_lanes=1, dsp_packing=2)
    (tmp_path / "odd.json").write_text(json.dumps({"hw": hw, "config": "edge-moe"}))
    monkeypatch.setattr(config, "CONFIGS_FOLDER", tmp_path)
    with pytest.raises(ConfigError, match=r"^DSP packing 2 pairs neighbouring output columns; "
                                          r"3 array columns are odd"):
        get_hw_config("odd")
    assert main(["hw", "generate", "--config", "odd", "--unit", "control"]) == 2
    _one_error_line(capsys, r"DSP packing 2 pairs neighbouring output columns")


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{b}-{c}" for b in BOARDS for c in ("edge-moe", "m3vit-s")])
def test_regenerating_a_saved_config_gives_the_same(tmp_path, name):
    from moevit.hw.config import CONFIGS_FOLDER
    from moevit.hw.cost.dse import save_config

    board, config = name.split("-", 1)
    path = save_config(dse_rows(board, config, progress=False)[0], tmp_path)
    assert path.read_text() == (CONFIGS_FOLDER / f"{name}.json").read_text()


def test_two_kv_banks_where_they_take_no_block_ram(rows):
    """The search gives the attention a second bank of K and V, its heads pipelined, where
    its buffers hold it in the block RAM one bank takes (edge-moe's 144 tokens: every head
    after a descriptor's first loads behind the one before and follows its rows, fewer
    cycles), and not where it would take block RAM from the rest (m3vit-s's 1,216
    tokens)."""
    from moevit.hw.cost.dse import _kv_banks, _with_kv_banks
    from moevit.hw.cost.resources import unit_resources

    for (board, config), row in rows.items():
        hw = HwConfig.from_dict(row["hw"])
        one, two = (unit_resources("attention", _with_kv_banks(hw, k)) for k in (1, 2))
        assert row["kv_banks"] == hw.kv_banks == _kv_banks(hw) == (
            2 if one.bram36 == two.bram36 else 1)
        assert hw.kv_banks == (2 if config == "edge-moe" else 1), (board, config)
        assert hw.pipelined_heads == (hw.kv_banks == 2), (board, config)
    hw = HwConfig.from_dict(rows["zcu102", "edge-moe"]["hw"])
    steps = [(s, n) for s, n in workload("edge-moe").steps("semseg") if s.mnemonic == "ATTENTION"]
    one, two, sequential = (predict(steps, h, 64).cycles for h in (
        _with_kv_banks(hw, 1), hw, hw.replace(pipelined_heads=0)))
    print(f"\nzcu102 edge-moe's ATTENTION instructions: {one:,} cycles on one bank, "
          f"{sequential:,} on two ({sequential / one - 1:+.1%}), {two:,} with pipelined heads "
          f"({two / one - 1:+.1%})")
    assert two < sequential < one


def test_the_constants_striped_where_the_weights_bind():
    """zcu102-edge-moe (its activations in the on-chip window, its experts' weights streaming
    at the four ports' pace) with its constants dealt over the weights' ports too: its
    EXPERT instructions' cycles fall by more than 1.5 % (each port carries about a quarter
    of an expert's 4,608 bytes of constants, not one port all of them: -2.1 % on its 17x64
    array; on the 33x64 array saved before, -4.2 %, and simulated, its two first blocks'
    working EXPERTs -4.4 %) and so does its image's; the zcu104's point keeps them on
    their port (the striper is LUT RAM)."""
    from moevit.hw.cost.dse import batch1_runs

    hw = get_hw_config("zcu102-edge-moe").replace(chan_striped=0)
    assert hw.weight_ports == 4 and not get_hw_config("zcu104-edge-moe").chan_striped
    striped, own = (batch1_runs(workload("edge-moe"), h, get_board("zcu102"))["semseg"]
                    for h in (hw.replace(chan_striped=1), hw))
    print(f"\nzcu102 edge-moe's EXPERT instructions: {own.units['expert']:,} cycles, "
          f"{striped.units['expert']:,} with the constants striped "
          f"({striped.units['expert'] / own.units['expert'] - 1:+.1%}); its image "
          f"{own.cycles:,} -> {striped.cycles:,}")
    assert striped.units["expert"] < 0.985 * own.units["expert"] and striped.cycles < own.cycles


@pytest.mark.parametrize("name", saved_hw_configs())
def test_the_search_narrows_the_accumulators(name):
    """Every saved point's accumulators are as wide as its widest input's sums need
    (``products_width``: 25 bits for 768), and 32 bits would cost it about 1.4 LUT (an
    adder's bit and a share of the shadow's read multiplexer) and 2 FF (the accumulator's
    and the shadow's) a bit and MAC unit of its linear array more (the wide slices' fit;
    Yosys on the 6-row slice: 1.6 LUT and 1.9 FF)."""
    from moevit.hw.config import products_width
    from moevit.hw.cost.resources import resources

    hw = get_hw_config(name)
    assert hw.acc_width == products_width(hw.max_in) < 32
    wide, narrow = resources(hw.replace(acc_width=32)), resources(hw)
    bits = hw.rows * hw.cols * (32 - hw.acc_width)
    lut, ff = (wide.lut - narrow.lut) / bits, (wide.ff - narrow.ff) / bits
    print(f"{name}: {hw.acc_width} bits; 32 would take {lut:.2f} LUT and {ff:.2f} FF more a "
          f"bit and MAC unit, {wide.lut - narrow.lut:,.0f} and {wide.ff - narrow.ff:,.0f} in all")
    assert 1.2 < lut < 1.8 and 1.5 < ff < 2.5


def test_workload_is_the_compiled_program():
    work = workload("edge-moe")
    assert isinstance(work, Workload) and work.tokens == 129
    counts = {}
    for step in work.tasks["semseg"]:
        counts[step.mnemonic] = counts.get(step.mnemonic, 0) + 1
    assert counts["EXPERT"] == 6 * 16 and counts["ATTENTION"] == 12
    # Uniform routing: each MoE layer's experts get the quantiles of Binomial(129, 2 / 16).
    quantiles = routed_tokens(129, 2, 16)
    assert [s.routed for s in work.tasks["semseg"] if s.mnemonic == "EXPERT"] \
        == list(quantiles) * 6
    assert quantiles[0] == 9 and quantiles[-1] == 23 and abs(sum(quantiles) - 258) <= 2


def test_routed_tokens_are_the_binomial_quantiles():
    """Expert e's tokens are the least n with P(X <= n) >= (e + 1/2) / experts for X of
    Binomial(tokens, top_k / experts), checked with exact fractions."""
    from fractions import Fraction
    from math import comb

    for tokens, top_k, experts in ((129, 2, 16), (1032, 2, 16), (65, 1, 4), (197, 2, 8)):
        p = Fraction(top_k, experts)
        cdf = [Fraction(0)]
        for n in range(tokens + 1):
            cdf.append(cdf[-1] + comb(tokens, n) * p ** n * (1 - p) ** (tokens - n))
        for e, n in enumerate(routed_tokens(tokens, top_k, experts)):
            q = Fraction(2 * e + 1, 2 * experts)
            assert cdf[n] < q <= cdf[n + 1], (tokens, top_k, experts, e)


def test_stage_two_picks_the_fewest_layernorm_lanes_that_pay(rows):
    """The chosen point's LayerNorm lanes give its LayerNorm instructions their fewest
    cycles at the board's bandwidth unless twice as many do not fit, and half as many
    lanes would not; the lanes fit the model's width and the bus."""
    from moevit.hw.boards import get_board
    from moevit.hw.cost.cycles import board_bandwidth
    from moevit.hw.cost.resources import resources
    from moevit.model.config import get_config

    for (board, config), row in rows.items():
        hw = HwConfig.from_dict(row["hw"])
        lanes = row["norm_lanes"]
        assert hw.norm_lanes == lanes and get_config(config).dim % lanes == 0
        assert 8 * lanes <= hw.bus_width
        work = workload(config)
        norms = [(s, n) for s, n in work.steps(row["task"]) if s.mnemonic == "LAYERNORM"]
        bandwidth = board_bandwidth(get_board(board), hw)

        def cycles(n):
            return predict(norms, hw.replace(norm_lanes=n), bandwidth).cycles

        print(f"{board} {config}: {lanes} LayerNorm lanes, {cycles(lanes):,} LayerNorm cycles "
              f"(one lane: {cycles(1):,})")
        if lanes > 1:
            assert cycles(lanes // 2) > cycles(lanes) and cycles(1) > cycles(lanes)
        if 16 * lanes <= hw.bus_width and hw.max_in % (2 * lanes) == 0 \
                and get_config(config).dim % (2 * lanes) == 0:
            assert cycles(2 * lanes) >= cycles(lanes) or _fits(
                resources(hw.replace(norm_lanes=2 * lanes)), get_board(board))


def test_stage_two_picks_the_fewest_combine_lanes_that_pay(rows):
    """The chosen point's COMBINE lanes (a divisor of the columns) give its COMBINE
    instructions their fewest cycles at the board's bandwidth (as many as the columns do no
    better) unless twice as many do not fit, and half as many would not."""
    from moevit.hw.boards import get_board
    from moevit.hw.cost.cycles import board_bandwidth
    from moevit.hw.cost.resources import resources

    for (board, config), row in rows.items():
        hw = HwConfig.from_dict(row["hw"])
        lanes = row["combine_lanes"]
        assert hw.combine_width == lanes and hw.cols % lanes == 0
        combines = [(s, n) for s, n in workload(config).steps(row["task"])
                    if s.mnemonic == "COMBINE"]
        bandwidth = board_bandwidth(get_board(board), hw)

        def cycles(n):
            return predict(combines, hw.replace(combine_lanes=n), bandwidth).cycles

        print(f"{board} {config}: {lanes} COMBINE lanes of {hw.cols}, {cycles(lanes):,} "
              f"COMBINE cycles ({hw.cols} lanes: {cycles(hw.cols):,})")
        assert cycles(lanes) == cycles(hw.cols) or _fits(
            resources(hw.replace(combine_lanes=2 * lanes)), get_board(board))
        if lanes > 1:
            assert cycles(lanes // 2) > cycles(lanes)


def test_rows_fitted_to_the_tokens():
    """Beside each power of two the search tries the fewest rows that take the model's
    tokens in one token tile less, when that is at most 1/8 more rows: edge-moe's 129
    tokens in four tiles of 33 rather than five of 32 (the fifth holding one token), in one
    of 129; m3vit-s's 1,201 in nine of 134 rather than ten of 128; none beside 4 (129 in 32
    tiles of 5 rows is 1/4 more). On the saved ZCU102 point with 33 rows rather than 32,
    unchained (chained, its linear layers read their weights slower than they compute), the
    linear layers take about a ninth fewer cycles at the same memory."""
    from moevit.hw.cost.dse import ROWS, batch1_runs, fitted_rows

    assert fitted_rows(ROWS, 129) == (4, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129)
    assert fitted_rows(ROWS, 1201) == (4, 8, 9, 16, 17, 32, 33, 64, 67, 128, 134)
    assert fitted_rows(ROWS, 1024) == fitted_rows(ROWS, 2) == ROWS   # nothing to fit
    hw = get_hw_config("zcu102-edge-moe")
    assert hw.rows in fitted_rows(ROWS, 129) and hw.rows not in ROWS
    board, work = get_board("zcu102"), workload("edge-moe")
    linear = {rows: batch1_runs(work, hw.replace(rows=rows, max_tokens=rows * 64,
                                                 chain_depth=1), board)
              ["semseg"].units["linear"] for rows in (32, 33)}
    print(f"\nzcu102-edge-moe's linear layers: {linear[32]:,} cycles on 32 rows, "
          f"{linear[33]:,} on 33 ({linear[33] / linear[32] - 1:+.1%})")
    assert linear[33] < 0.9 * linear[32]


def _stage2_watched(monkeypatch, whole):
    """Stage 2's evaluated points, each with its :func:`~moevit.hw.cost.dse.stage2_bound` and
    what that bounds (a latency board's batch-1 cycles, a throughput board's cycles an image
    at its best batch) as stage 2 gave them; ``whole``: no bound leaves a candidate out."""
    from moevit.hw.cost import dse

    evaluate, seen = dse._stage2_point, []

    def watched(item):
        point = evaluate(item)
        if point is not None:
            s = dse._STAGE2
            latency = dse.OBJECTIVES[s["board"].host][0] == "latency"
            seen.append((dse.stage2_bound(s["work"], item[1], s["board"]),
                         point.latency_cycles if latency else point.best_cycles_per_image))
        return point

    monkeypatch.setattr(dse, "_stage2_point", watched)
    monkeypatch.setattr(dse, "_workers", lambda tasks: contextlib.nullcontext())  # one process
    if whole:
        monkeypatch.setattr(dse, "_still_open", lambda *args: True)
    return seen


@pytest.mark.parametrize("board, config", [("zcu102", "edge-moe"), ("zcu104", "m3vit-s"),
                                           ("u280", "edge-moe")])
def test_stage2_bounds_hold_and_leave_the_choice_as_it_was(monkeypatch, board, config):
    """Stage 2 evaluates its sized candidates the least bound first and stops where no later
    one can be chosen. The bound is below every point's own figure (zcu104 m3vit-s: no point
    holds a whole image, so every point is ranked), and the pruned search chooses what the
    whole one chooses, its largest point too."""
    from moevit.hw.cost import dse

    with monkeypatch.context() as m:
        pruned = _stage2_watched(m, whole=False)
        chosen = dse.search(board, config, quick=True, progress=False)[0]
    whole = _stage2_watched(monkeypatch, whole=True)
    expected = dse.search(board, config, quick=True, progress=False)[0]
    print(f"\n{board} {config}: {len(pruned)} points evaluated of {len(whole)}; bound / "
          f"figure up to {max(b / f for b, f in whole):.3f}")
    assert all(b <= f for b, f in whole) and len(pruned) < len(whole)
    assert chosen.hw == expected.hw and chosen.largest.hw == expected.largest.hw
