"""The HLS top (hls/src/top.cpp) in C simulation, running the compiled program of ``tiny`` as a
host runs the device, against the instruction-level interpreter (itself equal to the golden
model): each image's output region and the whole activation scratch, bit for bit, call after
call on one memory, with task switches and several images per call; and each bad program
stopped with the register map's error code, writing nothing outside its buffers.

Fast (``make test``): one task of ``tiny`` through the top, the bad programs, a changed
constant that must be seen, and the testbench's self-check (for Vitis HLS) on the program's
first instructions. Slow: every task, a task switch, two images in one call, a seeded random
sequence of calls (replay with ``MOEVIT_SEED=<seed>``), and the Vitis scripts' own case.
"""

import dataclasses
import subprocess

import numpy as np
import pytest

from moevit.hls.csim import TOP, build_testbench, check_top, run_top, top_runs, write_top_case
from moevit.hw.program.program import HEADER_FIELDS, HEADER_WORDS
from moevit.hw.program.regmap import ERROR_CODES
from moevit.sim.benches.engines import compare_images, replay_seed
from moevit.sim.benches.top import expected_runs

CODES = {name: code for name, (code, _) in ERROR_CODES.items()}


@pytest.fixture(scope="module")
def tiny():
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    program = compile_program(qmodel, DEFAULT_HW["tiny"])
    return program, golden.quantize_image(image, qmodel.scale("input"))


def _check(program, runs):
    rows = check_top(program, runs)
    for k, row in enumerate(rows):
        print(f"call {k}: task {row['task']}, {row['images']} image(s), {row['instructions']} "
              f"instructions, {row['bytes_compared']} bytes compared, {row['seconds']:.2f} s, "
              f"bit-exact {row['bit_exact']}")
    failed = [line for row in rows for line in row["mismatches"]]
    assert not failed, "\n".join(failed)
    return rows


def _with(program, index, **fields):
    """``program.bin`` with instruction ``index``'s fields (or ``opcode``) changed, unchecked."""
    data = bytearray(program.encode())
    desc = program.instructions[index]
    image = desc.to_int_with(**fields)
    words = np.array([(image >> (32 * k)) & 0xFFFFFFFF for k in range(desc.words())], "<u4")
    at = 4 * (HEADER_WORDS + sum(d.words() for d in program.instructions[:index]))
    data[at:at + 4 * len(words)] = words.tobytes()
    return bytes(data)


def _header(program, **fields):
    """``program.bin`` with header words changed (the top does not check the CRCs, as the RTL)."""
    data = bytearray(program.encode())
    for name, value in fields.items():
        at = 4 * HEADER_FIELDS.index(name)
        data[at:at + 4] = int(value).to_bytes(4, "little")
    return bytes(data)


def test_top_runs_one_task(tiny):
    program, image = tiny
    rows = _check(program, [(1, [image])])
    assert rows[0]["instructions"] == len(program.instructions) == 51


def test_top_on_an_array_wider_than_a_head():
    """tiny on 32 array columns, two of its 16-wide heads in each QKV output beat: both
    tasks bit-exact (the RTL top's run: tests/test_sim_top.py)."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    program = compile_program(qmodel, DEFAULT_HW["tiny"].replace(name="tiny-wide", cols=32))
    image = golden.quantize_image(image, qmodel.scale("input"))
    _check(program, [(0, [image]), (1, [image])])


def test_top_stops_on_bad_programs_and_recovers(tiny):
    """Every bad input: its error code, where it stopped, no byte written outside the output
    and scratch buffers; the good calls between them bit-exact (one memory for all)."""
    program, image = tiny
    short = dataclasses.replace(program, instructions=program.instructions[:3])  # PATCHIFY,
    end = program.layout.boundaries()["output_end"]                              # LINEAR, COPY
    good = {"task": 0, "images": [image]}
    bad = {
        "opcode": dict(good, program=_with(short, 1, opcode=0x7F)),
        "address": dict(good, program=_with(short, 0, y_addr=program.layout.size)),
        "task": dict(good, task=7),
        "program": dict(good, program=_header(short, magic=0)),
        # Below the output's end, but the copy runs past it: the relocation refuses it.
        "address ": dict(good, program=_with(short, 2, dst_addr=end - 4, length=16)),
        # A copy into a buffer the top only reads: the weights, the input.
        "address  ": dict(good, program=_with(short, 2, dst_addr=program.layout["cls"].offset)),
        "address   ": dict(good, program=_with(short, 2,
                                               dst_addr=program.layout["input"].offset)),
        "descriptor": dict(good, program=_with(short, 1, tokens=200, token_tiles=50)),
        "program ": dict(good, program=_header(short, hw_hash_lo=1)),   # another HwConfig
        "program  ": dict(good, program=_header(short, bus_bits=256)),
        "program   ": dict(good, program=_header(short, version=1)),
        # The body ends before the header's last instruction, or goes on past it.
        "program    ": dict(good, program=_header(short, instructions=4)),
        "program     ": dict(good, program=_header(short, instructions=2)),
        "program      ": dict(good, program=_header(short, input_at=0xFFFFFFFF)),  # order
    }
    runs = [good]
    for run in bad.values():
        runs += [run, good]
    got = run_top(short, runs + [dict(good, images=[])])
    nothing = got.pop()   # no image: no instruction runs, nothing is written, no error
    assert (nothing.error, nothing.instruction, nothing.image, nothing.stray) == (0, 0, 0, 0)
    compare_images(nothing.scratch, got[-1].scratch, "scratch after a call of no image")
    want = [0] + [code for name in bad for code in (CODES[name.strip()], 0)]
    assert [r.error for r in got] == want
    assert [(r.stray, r.weights_changed) for r in got] == [(0, 0)] * len(runs)
    # Where each stopped: the instruction (image 0), or nothing run for a header or task.
    stops = [(r.instruction, r.image) for r in got[1::2]]
    assert stops == [(1, 0), (0, 0), (0, 0), (0, 0), (2, 0), (2, 0), (2, 0), (1, 0), (0, 0),
                     (0, 0), (0, 0), (2, 0), (1, 0), (0, 0)]
    # The bad calls wrote nothing the good ones do not write again: each good call leaves
    # the memory of one good run.
    reference = expected_runs(short, [(0, [image])])[0]
    scratch_at = program.layout.boundaries()["scratch_at"]
    for k in range(0, len(runs), 2):
        compare_images(got[k].outputs[0], reference["outputs"][0], f"call {k} output")
        compare_images(got[k].scratch, reference["scratch"], f"call {k} scratch",
                       program.layout, scratch_at)


def test_changed_constant_is_seen(tiny):
    """The patch embedding's residual shift one more: its rows of the embedding differ, and
    nothing else (the comparison sees what the top computes)."""
    program, image = tiny
    short = dataclasses.replace(program, instructions=program.instructions[:3])
    linear = short.instructions[1]
    assert linear.residual
    spoiled = {"task": 0, "images": [image],
               "program": _with(short, 1, res_shift=linear.res_shift + 1)}
    got = run_top(short, [spoiled])[0]
    want = expected_runs(short, [(0, [image])])[0]
    assert got.error == 0
    scratch_at = program.layout.boundaries()["scratch_at"]
    differ = np.flatnonzero(got.scratch != want["scratch"]) + scratch_at
    rows = linear.y_addr, linear.y_addr + linear.tokens * linear.out_features
    assert differ.size and rows[0] <= differ.min() and differ.max() < rows[1]


def test_testbench_checks_itself(tiny, tmp_path):
    """With the interpreter's results beside the inputs (Vitis HLS's csim_design and
    cosim_design), tb_top compares them itself: exit 0 when bit-exact, 1 on one byte off."""
    program, image = tiny
    short = dataclasses.replace(program, instructions=program.instructions[:3])
    runs = [(0, [image]), (1, [image, image])]
    write_top_case(short, runs, tmp_path, expected=expected_runs(short, runs))
    binary = build_testbench(TOP, program.hw)
    done = subprocess.run([str(binary), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split(": ")[3].split()[0] for line in done.stdout.splitlines()] == \
        ["bit-exact", "bit-exact"]
    scratch = tmp_path / "run1-expected-scratch.bin"
    data = bytearray(scratch.read_bytes())
    data[100] ^= 1
    scratch.write_bytes(bytes(data))
    done = subprocess.run([str(binary), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stdout.splitlines()[1] == (
        "testbench: call 1: task 1, 2 image(s): MISMATCH (error 0, 0 output and 1 scratch "
        "bytes differ, 0 written elsewhere)")


@pytest.mark.slow
def test_scripts_case_passes_in_the_testbench(tmp_path):
    """The case that the Vitis HLS scripts hand csim_design and cosim_design: tiny's whole
    program, every task, a switch, two images in one call, checked by tb_top itself."""
    from moevit.hls.scripts import CASE, write_scripts
    from moevit.hw.config import get_hw_config

    scripts = write_scripts("tiny", "zcu102", tmp_path)
    binary = build_testbench(TOP, get_hw_config("tiny"))
    done = subprocess.run([str(binary), str(scripts.folder / CASE)], capture_output=True,
                          text=True)
    print(done.stdout)
    assert done.returncode == 0 and done.stdout.count(": bit-exact (error 0, 0 output") == 3


@pytest.mark.slow
def test_top_runs_tiny_every_task(tiny):
    """Every task, a task switch between calls, two images in one call."""
    program, image = tiny
    rows = _check(program, top_runs(program, image, seed=0))
    assert [(r["task"], r["images"]) for r in rows] == [(0, 1), (1, 1), (0, 2)]


@pytest.mark.slow
def test_top_random_calls(tiny):
    """A seeded random sequence of calls: random tasks, one to three random images each."""
    program, image = tiny
    rng = np.random.default_rng(replay_seed())
    tasks = rng.permutation(np.repeat(np.arange(len(program.tasks)), 2))
    runs = [(int(task), [rng.integers(-128, 128, image.shape, dtype=np.int8)
                         for _ in range(int(rng.integers(1, 4)))]) for task in tasks]
    _check(program, runs)


def _random_hw(rng, name):
    """A random design point that still holds ``tiny`` (65 tokens, 256-wide hidden rows,
    8 experts, 4 heads of 16: the columns divide its width, 64, and take a gate's 8
    logits; the head lanes are whole bus words)."""
    from moevit.hw.config import DEFAULT_HW

    rows, cols = int(rng.integers(1, 9)), int(rng.choice([8, 16, 32, 64]))
    heads_parallel = int(rng.choice([1, 2, 4]))
    # The head lanes' bytes are whole bus words (HwConfig.check_model).
    buses = [bus for bus in (64, 128, 256) if heads_parallel * 16 % (bus // 8) == 0]
    hw = DEFAULT_HW["tiny"].replace(
        name=name, rows=rows, cols=cols, post_lanes=int(rng.choice([1, 2, 4, 8])),
        max_tokens=rows * -(-int(rng.integers(65, 161)) // rows),
        max_in=int(rng.integers(256, 321)), score_lanes=int(rng.choice([1, 2, 4, 8, 16])),
        max_head_dim=int(rng.choice([16, 32])), kv_depth=int(rng.integers(65, 129)),
        heads_parallel=heads_parallel, bus_width=int(rng.choice(buses)))
    # The linear array's DSP packing and chains (drawn last: the earlier fields keep the
    # seeds' draws).
    packing = int(rng.choice([1, 2]))
    hw = hw.replace(dsp_packing=packing, chain_depth=int(rng.integers(
        1, (hw.MAX_PACKED_CHAIN if packing == 2 else hw.MAX_CHAIN_DEPTH) + 1)))
    # The attention's key pairs (score_packing) where its score lanes are even, drawn after.
    return hw.replace(score_packing=int(rng.choice([1, 2]))) if hw.score_lanes % 2 == 0 else hw


@pytest.mark.slow
@pytest.mark.parametrize("point", [0, 1])
def test_top_on_a_random_design_point(point):
    """tiny compiled for a random HwConfig (array, packing, chains, buffers, lanes, score
    packing, bus width) from the printed seed: its parameters.h, a testbench built for it,
    every task bit-exact."""
    from moevit.hw.program.compiler import compile_program
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    seed = replay_seed() + point
    hw = _random_hw(np.random.default_rng(seed), f"random-top-{point}")
    print(hw)
    qmodel, image = tiny_quantized(trained=False)
    program = compile_program(qmodel, hw)
    image = golden.quantize_image(image, qmodel.scale("input"))
    _check(program, [(task, [image]) for task in range(len(program.tasks))])


@pytest.mark.slow
def test_top_runs_onchip_activations(tiny):
    """A program with its activations in the on-chip window (HwConfig ``onchip_bytes``):
    the HLS top keeps the window in its own array and answers bit for bit, with a task
    switch; a header whose window is larger than the HwConfig's is ERROR_PROGRAM (slow:
    another HwConfig, another g++ build of the top)."""
    from moevit.hw.program.compiler import compile_program
    from moevit.sim.units import tiny_quantized

    program, image = tiny
    qmodel, _ = tiny_quantized(trained=False)
    onchip = compile_program(qmodel, program.hw.replace(onchip_bytes=32768))
    window = onchip.layout.onchip()
    assert window["tensors"] and window["window"] <= 32768
    rows = _check(onchip, [(0, [image]), (1, [image])])
    assert all(row["bit_exact"] for row in rows)
    bounds = onchip.layout.boundaries()
    got = run_top(onchip, [{"task": 0, "images": [image],
                            "program": _header(onchip, onchip_end=bounds["output_end"] + 32784)}])
    assert got[0].error == CODES["program"]


@pytest.mark.slow
def test_top_runs_a_batched_program(tiny):
    """A program of batch 2 (one body for two images): the top reads the header's batch word
    as any other and runs it by the regions' pitches: two calls (each task, then two
    batches in one call), output and whole scratch bit-exact with the interpreter, and each
    image's map the golden model's for that image alone."""
    from moevit.hw.config import DEFAULT_HW
    from moevit.hw.program.compiler import compile_program
    from moevit.hw.program.interpreter import head_map, image_output
    from moevit.model.integer import golden
    from moevit.sim.units import tiny_quantized

    qmodel, _ = tiny_quantized(trained=False)
    program = compile_program(qmodel, DEFAULT_HW["tiny"].replace(max_tokens=256), batch=2)
    _, image = tiny
    rng = np.random.default_rng(14)
    others = [rng.integers(-128, 128, image.shape, dtype=np.int8) for _ in range(3)]
    batches = [np.stack([image, others[0]]), np.stack([others[1], others[2]])]
    runs = [(0, [batches[0]]), (1, [batches[0], batches[1]])]
    rows = _check(program, runs)
    assert [r["images"] for r in rows] == [1, 2]     # runs of the body: batches
    got = run_top(program, runs)
    for (task, batch_list), call in zip(runs, got):
        for batch, out in zip(batch_list, call.outputs):
            for b, one in enumerate(batch):
                want = golden.run(qmodel, one, task, record=False).output
                head = image_output(program, out, task, b)
                assert np.array_equal(head_map(program, head, task), want), (task, b)
