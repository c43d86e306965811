"""Programs for a top of two issue lanes (HwConfig ``issue_lanes = 2``): the compiler splits a
batch into two half batches, or one image's token-wise layers into two chunks of rows, and
interleaves them, marking ``concurrent`` the instructions
that do not depend on the one last issued to the other lane. Checked: every image's map is
the golden model's; no two instructions that may run at once touch the same bytes (one
writing them), by the interpreter's own log of every read and write; the check fails on a
wrongly marked instruction; the flags survive the binary and are refused on one lane."""

import itertools
import random

import numpy as np
import pytest

from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.compiler import (compile_program, interleave, running_with,
                                        segments_of)
from moevit.hw.program.interpreter import head_map, image_output, run_images, run_instructions
from moevit.hw.program.isa import LANE_OF
from moevit.hw.program.program import ProgramError, decode
from moevit.model.integer import golden
from moevit.sim.benches.engines import replay_seed

TWO_LANES = DEFAULT_HW["tiny"].replace(max_tokens=256, memory_ports=2, issue_lanes=2)
CHUNKS = TWO_LANES.replace(token_chunks=1)


@pytest.fixture(scope="module")
def tiny():
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    return qmodel, golden.quantize_image(image, qmodel.scale("input"))


def _images(image, batch):
    rng = np.random.default_rng(replay_seed())
    others = [rng.integers(-128, 128, image.shape, dtype=np.int8) for _ in range(batch - 1)]
    return np.stack([image, *others])


def _footprints(program, images, task):
    """Per instruction, ``(reads, writes)``: its byte intervals, merged, run by run in
    program order on the interpreter."""
    memory = program.memory_image()
    region = program.layout["input"]
    memory[region.offset:region.end] = images.reshape(-1).view(np.uint8)
    result = []
    for d in program.instructions:
        stats = run_instructions(memory, program.hw, [d], task)
        result.append(tuple(_merged(stats[kind]) for kind in ("reads", "writes")))
    return result


def _merged(accesses):
    spans = sorted((addr, addr + size) for addr, size in accesses if size)
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _overlap(a, b) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][0] < b[j][1] and b[j][0] < a[i][1]:
            return True
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return False


def _conflicts(program, images, task):
    """Pairs ``(k, i)`` of instructions that may run at once (:func:`running_with`) where
    one writes bytes the other reads or writes."""
    prints = _footprints(program, images, task)
    bad = []
    for k, (first, last) in enumerate(running_with(program)):
        # The one before it on the other lane, if it is concurrent; those after it.
        for i in [first] * (first < k) + list(range(k + 1, last + 1)):
            (reads_k, writes_k), (reads_i, writes_i) = prints[k], prints[i]
            if _overlap(writes_k, reads_i + writes_i) or _overlap(writes_i, reads_k):
                bad.append((min(k, i), max(k, i)))
    return sorted(set(bad))


@pytest.mark.parametrize("batch, onchip, chunks", [(1, 0, 1), (1, 32768, 1), (1, 0, 2),
                                                   (1, 32768, 2), (2, 0, 0), (3, 0, 0),
                                                   (2, 32768, 0)])
def test_two_streams_compute_each_image_and_never_touch_each_others_bytes(tiny, batch, onchip,
                                                                          chunks):
    qmodel, image = tiny
    hw = TWO_LANES.replace(max_tokens=64 * (-(-batch * qmodel.config.tokens // 64)),
                           onchip_bytes=onchip, token_chunks=chunks)
    program = compile_program(qmodel, hw, batch=batch)
    images = _images(image, batch)
    marked = sum(program.concurrent)
    lanes = [LANE_OF[d.MNEMONIC] for d in program.instructions]
    print(f"\nbatch {batch}, window {onchip}: {len(program.instructions)} instructions, "
          f"{marked} concurrent, {lanes.count('main')} on the main lane; "
          f"{program.layout.onchip() if onchip else ''}")
    assert len(program.concurrent) == len(program.instructions) and marked > 0
    # The engines take bus-aligned addresses only (the second half's routing rows would not be
    # in one tensor with the first's).
    word = hw.bus_width // 8
    assert [(k, name) for k, d in enumerate(program.instructions)
            for name, value in d.to_dict().items() if name.endswith("_addr") and value % word] \
        == []
    for task in (0, 1):
        memory, _ = run_images(program, images, task)
        output = memory[program.layout["output"].offset:program.layout["output"].end]
        for b in range(batch):
            got = head_map(program, image_output(program, output, task, b), task)
            assert np.array_equal(got, golden.run(qmodel, images[b], task, record=False).output)
    assert _conflicts(program, images, 0) == []


def test_the_check_finds_a_wrongly_marked_instruction(tiny):
    """Mark concurrent each instruction that waits for its own stream's last one on the
    other lane and touches its bytes (in turn): the footprint check names the pair."""
    qmodel, image = tiny
    program = compile_program(qmodel, TWO_LANES, batch=2)
    images = _images(image, 2)
    prints = _footprints(program, images, 0)
    lanes = [LANE_OF[d.MNEMONIC] for d in program.instructions]
    tried = 0
    for k in range(1, len(program.instructions) - 1):
        other = [i for i in range(k) if lanes[i] != lanes[k]]
        if program.concurrent[k] or not other:
            continue
        (reads_k, writes_k), (reads_i, writes_i) = prints[k], prints[other[-1]]
        if not (_overlap(writes_k, reads_i + writes_i) or _overlap(writes_i, reads_k)):
            continue   # in its stream, but independent of it (a COPY after the embedding)
        flags = list(program.concurrent)
        flags[k] = True
        wrong = type(program)(**{**vars(program), "concurrent": tuple(flags)})
        assert (other[-1], k) in _conflicts(wrong, images, 0), k
        tried += 1
        if tried == 3:
            break
    assert tried == 3


def test_one_image_on_two_lanes_runs_its_token_wise_layers_in_two_chunks(tiny):
    """One image on two lanes: between the layers that need every token (the patch
    embedding, the attention, the experts, the head: joint, each waiting for both lanes),
    two streams of the same layers on two chunks of rows. tiny's 65 tokens are cut at row
    32: its routing rows of 2 bytes start on 64 bytes every 32 rows, and 32 is the nearest
    such row to the middle."""
    qmodel, _ = tiny
    program = compile_program(qmodel, CHUNKS)
    tokens = qmodel.config.tokens
    segments = segments_of(program.streams)
    assert [kind for kind, _ in segments][:2] == ["joint", "split"] and len(segments) > 8
    chunked = set()
    for kind, parts in segments:
        code = [[program.instructions[k] for k in part] for part in parts]
        if kind == "joint":
            assert not any(program.concurrent[k] for k in parts[0])
            assert {d.MNEMONIC for d in code[0]} <= {"PATCHIFY", "LINEAR", "COPY", "ATTENTION",
                                                     "EXPERT", "TASK_LINEAR"}
            assert all(d.tokens in (tokens, tokens - 1) for d in code[0] if hasattr(d, "tokens"))
            continue
        first, second = code
        assert [d.MNEMONIC for d in first] == [d.MNEMONIC for d in second]
        assert {d.tokens for d in first} == {32} and {d.tokens for d in second} == {tokens - 32}
        chunked |= {d.MNEMONIC for d in first}
    assert chunked == {"LAYERNORM", "LINEAR", "TASK_LINEAR", "ROUTE", "COMBINE"}


def test_the_attention_in_chunks_of_query_rows(tiny):
    """``token_chunks`` 2: each block's attention cut at the chunks' row too, each chunk's
    query rows against every key; the first chunk's alone once both chunks' K and V are in,
    the second chunk's first in its stream of the segment after, beside the first chunk's
    projection (on the other lane). Every other instruction as with ``token_chunks`` 1."""
    qmodel, _ = tiny
    tokens = qmodel.config.tokens
    rows = compile_program(qmodel, CHUNKS.replace(token_chunks=2))
    whole = compile_program(qmodel, CHUNKS)
    attention = [(k, d) for k, d in enumerate(rows.instructions) if d.MNEMONIC == "ATTENTION"]
    assert len(attention) == 2 * qmodel.config.depth
    for (k, first), (i, second) in zip(attention[::2], attention[1::2]):
        assert (first.tokens, first.rows, rows.streams[k]) == (tokens, 32, -1)
        assert (second.tokens, second.rows, rows.streams[i]) == (tokens, tokens - 32, 1)
        assert second.k_addr == first.k_addr and second.v_addr == first.v_addr
        assert second.q_addr == first.q_addr + 32 * first.row_pitch
        assert second.out_addr == first.out_addr + 32 * first.heads * first.head_dim
        # The second chunk's attention is its stream's first of its segment; the first
        # chunk's projection (LINEAR on the other lane) runs beside it.
        stream = [j for j in range(k + 1, len(rows.streams)) if rows.streams[j] == 1]
        assert stream[0] == i
        beside = [j for j in range(k + 1, len(rows.streams)) if rows.streams[j] == 0][0]
        assert rows.instructions[beside].MNEMONIC == "LINEAR" and rows.concurrent[max(i, beside)]
    others = [d for d in rows.instructions if d.MNEMONIC != "ATTENTION"]
    assert sorted(map(repr, others)) == sorted(repr(d) for d in whole.instructions
                                               if d.MNEMONIC != "ATTENTION")


def test_token_chunks_are_the_compilers_alone():
    """``token_chunks`` is kept with the HwConfig but is not hardware: the RTL and a
    program's fingerprint are the two-lane top's, so one top runs both programs."""
    from moevit.hw.program.program import hw_hash

    assert CHUNKS.to_dict()["token_chunks"] == 1 and "token_chunks" not in TWO_LANES.to_dict()
    assert CHUNKS.rtl() == TWO_LANES and hw_hash(CHUNKS) == hw_hash(TWO_LANES)
    assert hw_hash(TWO_LANES.replace(issue_lanes=1)) != hw_hash(TWO_LANES)


def test_one_lane_or_one_image_unchunked_marks_nothing(tiny):
    qmodel, _ = tiny
    assert compile_program(qmodel, TWO_LANES).concurrent == ()
    one_lane = TWO_LANES.replace(issue_lanes=1)
    assert compile_program(qmodel, one_lane).concurrent == ()
    # Chunks compile the batch as without them (its halves are the streams).
    assert compile_program(qmodel, CHUNKS.replace(max_tokens=192), batch=2).instructions \
        == compile_program(qmodel, TWO_LANES.replace(max_tokens=192), batch=2).instructions
    assert compile_program(qmodel, one_lane, batch=2).concurrent == ()
    # The same instructions but for the order: the two halves of the batch.
    two = compile_program(qmodel, TWO_LANES, batch=2)
    one = compile_program(qmodel, one_lane, batch=2)
    count = {}
    for d in two.instructions:
        count[d.MNEMONIC] = count.get(d.MNEMONIC, 0) + 1
    for d in one.instructions:   # per image, and the head over the batch: once each
        once = d.MNEMONIC in ("PATCHIFY", "COPY", "ATTENTION") \
            or getattr(d, d.OUTPUT) == one.layout["output"].offset
        count[d.MNEMONIC] -= 1 if once else 2
    assert set(count.values()) == {0}


def test_the_flags_survive_the_files_and_one_lane_refuses_them(tiny, tmp_path):
    from moevit.hw.program.program import read_program, write_program

    qmodel, _ = tiny
    program = compile_program(qmodel, TWO_LANES, batch=2)
    instructions, header = decode(program.encode(), program.hw)
    assert instructions == program.instructions and header["concurrent"] == program.concurrent
    assert "|" in program.listing()
    # The streams each instruction computes (the head after both), in layout.json.
    assert set(program.streams) == {0, 1, -1} and program.streams[-1] == -1
    write_program(program, tmp_path)
    again = read_program(tmp_path)
    assert (again.concurrent, again.streams) == (program.concurrent, program.streams)
    # The same binary for a top of one lane (its own fingerprint): refused.
    one = type(program)(**{**vars(program), "hw": program.hw.replace(issue_lanes=1)})
    with pytest.raises(ProgramError, match=r"^Program instruction \d+ \(\w+\) is marked "
                                           r"concurrent; hardware 'tiny' has one issue lane"):
        decode(one.encode(), one.hw)


def test_two_lanes_need_two_memory_ports():
    from moevit.errors import ConfigError

    with pytest.raises(ConfigError, match="^Two issue lanes need at least 2 memory ports"):
        DEFAULT_HW["tiny"].replace(issue_lanes=2)
    with pytest.raises(ConfigError, match="^Issue lanes must be 1 or 2, not 3"):
        TWO_LANES.replace(issue_lanes=3)
    with pytest.raises(ConfigError, match=r"^Token chunks run one chunk beside the other on two "
                       r"issue lanes; this HwConfig has one \(issue_lanes 1\)$"):
        TWO_LANES.replace(issue_lanes=1, token_chunks=1)
    with pytest.raises(ConfigError, match="^Token chunks must be 0, 1 or 2, not 3$"):
        TWO_LANES.replace(token_chunks=3)


def _span(streams, order):
    """When the last of ``streams``' instructions ends in ``order`` on two issue lanes (each
    lane in program order; an instruction waits for the other lane unless the instruction
    last given to it is the other stream's), and the flags that rule gives."""
    free, last, ready, issued, flags = {"main": 0, "side": 0}, {}, [0, 0], 0, []
    for k, i in order:
        lane, cycles = streams[k][i]
        other = "side" if lane == "main" else "main"
        concurrent = last.get(other, k) != k
        issued = max(issued, free[lane], ready[k], 0 if concurrent else free[other])
        free[lane] = ready[k] = issued + cycles
        last[lane] = k
        flags.append(concurrent)
    return max(free.values()), tuple(flags)


def test_interleave_finds_the_shortest_merge():
    """Random pairs of streams of up to 6 instructions: the order keeps each stream's own,
    its flags are the lanes' rule, and no merge of the two ends sooner (all tried)."""
    rng = random.Random(replay_seed())
    for _ in range(100):
        streams = [[(rng.choice(("main", "side")), rng.randint(1, 60))
                    for _ in range(rng.randint(1, 6))] for _ in range(2)]
        n, m = map(len, streams)
        order, flags = interleave(streams)
        assert [i for k, i in order if k == 0] == list(range(n))
        assert [j for k, j in order if k == 1] == list(range(m))
        span, rule = _span(streams, order)
        assert flags == rule
        assert span == min(_span(streams, merge)[0] for merge in _merges(n, m)), streams


def _merges(n, m):
    """Every order of two streams of ``n`` and ``m`` instructions that keeps each one's."""
    for firsts in map(set, itertools.combinations(range(n + m), n)):
        heads, order = [0, 0], []
        for t in range(n + m):
            k = int(t not in firsts)
            order.append((k, heads[k]))
            heads[k] += 1
        yield order


def test_the_u280_batch_keeps_the_linear_kernel_busy():
    """The u280's saved point at a batch of 16: its two half batches interleaved take at
    most 12 % more cycles than the linear kernel's lane alone (34 % more in the greedy order
    before 2026-12-04), on the cycles the compiler orders by."""
    from moevit.hw.config import get_hw_config
    from moevit.hw.cost.dse import interleave_cycles, workload

    hw = get_hw_config("u280-edge-moe")
    work = workload("edge-moe", batch=16, lanes=2, progress=False)
    steps = work.in_order("semseg", hw.onchip_bytes)
    (kind, parts), *_ = segments_of(work.streams)
    streams = [[(LANE_OF[steps[k].mnemonic], interleave_cycles(steps[k], hw)) for k in part]
               for part in parts]
    busy = sum(cycles for stream in streams for lane, cycles in stream if lane == "main")
    span, _ = _span(streams, interleave(streams)[0])
    print(f"u280 batch 16: span {span:,} cycles, the linear kernel's {busy:,} "
          f"(+{span / busy - 1:.1%})")
    assert kind == "split" and span <= 1.12 * busy


def test_running_with_by_hand():
    """The instructions each may run beside, on a made-up order of lanes and flags: L main,
    A side (attention), N side (LayerNorm); ``|`` concurrent."""
    from types import SimpleNamespace

    def made_up(marks):
        code = [SimpleNamespace(MNEMONIC={"L": "LINEAR", "A": "ATTENTION",
                                          "N": "LAYERNORM"}[m[0]]) for m in marks]
        return SimpleNamespace(instructions=code, concurrent=tuple(m.endswith("|")
                                                                   for m in marks))

    #                  0    1     2     3    4     5    6
    program = made_up(["L", "A|", "N|", "L", "A|", "N", "L|"])
    assert running_with(program) == [(0, 2), (0, 1), (0, 2), (3, 4), (3, 4), (5, 6), (5, 6)]
    # One lane (no flags): each instruction alone.
    assert running_with(made_up(["L", "A", "L"])) == [(0, 0), (1, 1), (2, 2)]
