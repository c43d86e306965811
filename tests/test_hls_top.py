"""The HLS top (hls/src/top.cpp) in C simulation, running the compiled program of ``tiny`` as a
host runs the device, against the instruction-level interpreter (itself equal to the golden
model): each image's output region and the whole activation scratch, bit for bit, call after
call on one memory, with task switches and several images per call; and each bad program
stopped with the register map's error code, writing nothing outside its buffers.

Fast (``make test``): one task of ``tiny`` through the top, and the bad programs on the
program's first instructions. Slow: every task, a task switch, two images in one call, and a
seeded random sequence of calls (replay with ``MOEVIT_SEED=<seed>``).
"""

import dataclasses

import numpy as np
import pytest

from moevit.hls.csim import check_top, run_top, top_runs
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
        "descriptor": dict(good, program=_with(short, 1, tokens=200, token_tiles=50)),
        "program ": dict(good, program=_header(short, hw_hash_lo=1)),   # another HwConfig
        "program  ": dict(good, program=_header(short, bus_bits=256)),
        "program   ": dict(good, program=_header(short, version=1)),
    }
    runs = [good]
    for run in bad.values():
        runs += [run, good]
    got = run_top(short, runs)
    want = [0] + [code for name in bad for code in (CODES[name.strip()], 0)]
    assert [r.error for r in got] == want
    assert [(r.stray, r.weights_changed) for r in got] == [(0, 0)] * len(runs)
    # Where each stopped: the instruction (image 0), or nothing run for a header or task.
    stops = [(r.instruction, r.image) for r in got[1::2]]
    assert stops == [(1, 0), (0, 0), (0, 0), (0, 0), (2, 0), (1, 0), (0, 0), (0, 0), (0, 0)]
    # The bad calls wrote nothing the good ones do not write again: each good call leaves
    # the memory of one good run.
    reference = expected_runs(short, [(0, [image])])[0]
    scratch_at = program.layout.boundaries()["scratch_at"]
    for k in range(0, len(runs), 2):
        compare_images(got[k].outputs[0], reference["outputs"][0], f"call {k} output")
        compare_images(got[k].scratch, reference["scratch"], f"call {k} scratch",
                       program.layout, scratch_at)


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
    runs = [(int(rng.integers(len(program.tasks))),
             [rng.integers(-128, 128, image.shape, dtype=np.int8)
              for _ in range(int(rng.integers(1, 4)))]) for _ in range(4)]
    _check(program, runs)
