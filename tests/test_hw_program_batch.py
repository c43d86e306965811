"""Batched programs (hw/program/compiler.py, ``batch``): one body runs B images of one task,
each weight read once per batch; every image's result equals the golden model's for that
image alone, bit for bit, in full."""

import re

import numpy as np
import pytest

from moevit.errors import ConfigError
from moevit.hw.config import DEFAULT_HW
from moevit.hw.program.compiler import compile_program, largest_batch, memory_tensors
from moevit.hw.program.interpreter import (bytes_by_region, image_output, image_tensor,
                                           output_map, read_tensor, run_image, run_images)
from moevit.hw.program.program import ProgramError, decode, read_program, write_program
from moevit.model.integer import golden
from moevit.model.integer.quantize import save_quantized

#: tiny's instance with a token buffer for three images (3 x 65 rows).
HW = DEFAULT_HW["tiny"].replace(max_tokens=256)


@pytest.fixture(scope="module")
def tiny():
    from moevit.sim.units import tiny_quantized

    qmodel, image = tiny_quantized(trained=False)
    # Distinct images: the one of the fixture, mirrored, and rolled.
    images = [image, np.ascontiguousarray(image[..., ::-1]), np.roll(image, 9, -2)]
    return qmodel, images


def _golden(qmodel, images, task):
    return [golden.run(qmodel, image, task) for image in images]


def _compare_batch(program, qmodel, images, task):
    """Run the batched program once on ``images`` and compare every golden tensor it keeps
    in memory, image by image, in full; returns the stats."""
    results = _golden(qmodel, images, task)
    batch = np.stack([r.tensors["input"] for r in results])
    memory, stats = run_images(program, batch, task)
    config = qmodel.config
    for b, result in enumerate(results):
        def same(name, got):
            np.testing.assert_array_equal(got, result.tensors[name],
                                          err_msg=f"task {task}, image {b}: {name}")

        for name in memory_tensors(config):
            if name in result.tensors and ".experts." not in name:
                same(name, image_tensor(program, memory, name, b)
                     .astype(result.tensors[name].dtype))
        same("input", image_tensor(program, memory, "input", b))
        same(f"heads.{task}.out", image_output(
            program, read_tensor(program, memory, "output"), task, b))
        np.testing.assert_array_equal(output_map(program, memory, task, b), result.output)
    # Each expert ran once on the batch's tokens: its hidden rows are the images' own,
    # image after image, and its outputs each image's.
    tokens = config.tokens
    for block in config.moe_blocks:
        p = f"blocks.{block}.mlp"
        top = read_tensor(program, memory, f"{p}.gate.topk").astype(np.int64)
        slots = read_tensor(program, memory, f"{p}.slots")
        for e in range(config.experts):
            rows, picks = np.nonzero(top == e)
            hidden = [r.tensors[f"{p}.experts.{e}.fc1.out"] for r in results
                      if f"{p}.experts.{e}.fc1.out" in r.tensors]
            if not rows.size:
                assert not hidden
                continue
            np.testing.assert_array_equal(
                read_tensor(program, memory, f"{p}.experts.{e}.fc1.out",
                            (rows.size, config.expert_hidden)), np.concatenate(hidden))
            for b, result in enumerate(results):
                mine = rows // tokens == b
                if mine.any():
                    np.testing.assert_array_equal(slots[rows[mine], picks[mine]],
                                                  result.tensors[f"{p}.experts.{e}.fc2.out"])
    return memory, stats


@pytest.mark.parametrize("batch", [2, 3])
@pytest.mark.parametrize("task", [0, 1])
def test_each_image_of_a_batch_equals_the_golden_model_alone(tiny, batch, task):
    qmodel, images = tiny
    program = compile_program(qmodel, HW, batch=batch)
    memory, stats = _compare_batch(program, qmodel, images[:batch], task)
    config = qmodel.config
    # One body for the batch: per image only the patchify, the class token and attention.
    one = compile_program(qmodel, HW)
    per_image = {"PATCHIFY", "COPY", "ATTENTION"}
    for mnemonic in {d.MNEMONIC for d in one.instructions}:
        count = sum(d.MNEMONIC == mnemonic for d in one.instructions)
        assert stats[mnemonic] == count * (batch if mnemonic in per_image else 1), mnemonic
    # ... so each weight is read once per batch (an expert's, when a token chose it).
    read = bytes_by_region(program, stats)
    for region in program.layout.of_kind("weights"):
        if region.name in ("cls", "pos_embed") or ".table" in region.name:
            continue
        task_of = re.search(r"(gates|heads)\.(\d+)\.", region.name)
        if task_of and int(task_of[2]) != task:
            expected = (0,)                          # another task's gate or head
        else:
            expected = (0, region.size) if ".experts." in region.name else (region.size,)
        assert read.get(region.name, 0) in expected, region.name
    alone = run_image(one, golden.quantize_image(images[0], qmodel.scale("input")), task)[1]
    print(f"\ntiny batch {batch} task {task}: {len(program.instructions)} instructions "
          f"({len(one.instructions)} for one image), {stats['bytes_read']:,} bytes read "
          f"({stats['bytes_read'] / batch:,.0f} per image; one image alone: "
          f"{alone['bytes_read']:,})")
    assert config.tokens * batch <= HW.max_tokens


def test_batch_one_is_the_one_image_program(tiny):
    qmodel, _ = tiny
    one, default = compile_program(qmodel, HW, batch=1), compile_program(qmodel, HW)
    assert one.encode() == default.encode() and one.weights == default.weights
    assert one.batch == 1 and decode(one.encode(), HW)[1]["batch"] == 1


def test_batched_program_round_trip_and_listing(tiny, tmp_path, capsys):
    from moevit.cli import main

    qmodel, _ = tiny
    program = compile_program(qmodel, HW, batch=3)
    _, header = decode(program.encode(), HW)
    assert header["batch"] == 3 and program.layout["input"].shape == (3, 3, 64, 64)
    write_program(program, tmp_path)
    back = read_program(tmp_path)
    assert back.batch == 3 and back.encode() == program.encode()
    assert "# batch: 3 images per run" in (tmp_path / "program.lst").read_text()
    assert main(["hw", "disassemble", str(tmp_path)]) == 0
    assert "batch 3 image(s) per run" in capsys.readouterr().out
    # layout.json and program.bin must agree on the batch.
    meta = (tmp_path / "layout.json").read_text().replace('"batch": 3', '"batch": 2')
    (tmp_path / "layout.json").write_text(meta)
    with pytest.raises(ProgramError, match=r"program\.bin does not match layout\.json "
                                           r"\(memory size, tasks, bus width, batch"):
        read_program(tmp_path)


def test_the_onchip_window_serves_a_batch(tiny):
    """Liveness over the batched tensors: the window still holds a batch's activations."""
    qmodel, images = tiny
    program = compile_program(qmodel, HW.replace(onchip_bytes=65536), batch=2)
    onchip = program.layout.onchip()
    assert onchip["tensors"] > 20 and onchip["window"] <= 65536
    results = _golden(qmodel, images[:2], 0)
    memory, stats = run_images(program, np.stack([r.tensors["input"] for r in results]), 0)
    for b, result in enumerate(results):
        np.testing.assert_array_equal(output_map(program, memory, 0, b), result.output)
    assert bytes_by_region(program, stats)["onchip"] > 0


def test_a_batch_larger_than_the_token_buffer_names_the_largest_that_fits(tiny):
    qmodel, _ = tiny
    assert largest_batch(qmodel.config, HW) == 3
    with pytest.raises(ConfigError, match=re.escape(
            "A batch of 4 images has 260 token rows; hardware 'tiny' holds 256 (max_tokens: "
            "the token buffer and the MoE unit's lists): the largest batch that fits is 3")):
        compile_program(qmodel, HW, batch=4)
    with pytest.raises(ConfigError, match=r"^Batch must be a positive number of images, "
                                          r"not 0$"):
        compile_program(qmodel, HW, batch=0)


def test_compile_command_batch(tiny, tmp_path, capsys):
    from moevit.cli import main

    qmodel, _ = tiny
    path = tmp_path / "tiny.npz"
    save_quantized(path, qmodel)
    assert main(["hw", "compile", "--quantized", str(path), "--batch", "2", "-o",
                 str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (
        "moevit: error: A batch of 2 images has 130 token rows; hardware 'tiny' holds 128 "
        "(max_tokens: the token buffer and the MoE unit's lists): the largest batch that fits "
        "is 1")
    assert not (tmp_path / "p" / "program.bin").exists()
