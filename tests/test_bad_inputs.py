"""Every bad input of issue 10 §3, through the real command line: one line
``moevit: error: ...``, exit status 2, no traceback, and no file left behind.

One row per bad input: an id, the command line (``{name}`` fields are the
fixtures' paths, see :func:`paths`), the regex its message must match after
``moevit: error: ``, and the environment it runs in. The rows share their
inputs (a checkpoint, quantized files, small Cityscapes trees...), made once
for the module; no row trains more than three steps.
"""

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from moevit.cli import main
from moevit.model.checkpoint import save_checkpoint
from moevit.model.config import get_config
from moevit.model.data import SyntheticDataset
from moevit.model.importers import export_edge_moe, export_m3vit
from moevit.model.moevit import MoEViT
from moevit.model.onnx.qdq import export_qdq
from moevit.model.integer.quantize import load_quantized, quantize, save_quantized
from moevit.model.train import TrainOptions, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = get_config("tiny")
OTHER = TINY.replace(name="tiny-3x", experts=3, top_k=1)  # another config of the same image size
QUICK = "--steps 1 --batch-size 8 --train-size 16 --quiet --threads 1"


def cityscapes_tree(root, image=None, depth=None):
    """A Cityscapes tree in M³ViT's .npy layout for ``tiny`` (semseg 4 classes + depth),
    two samples per split; ``image`` / ``depth`` replace sample 0's arrays."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for n in range(2):
            arrays = {
                "image": rng.uniform(0, 1, (16, 32, 3)).astype(np.float32),
                "label_4": rng.integers(-1, 4, (16, 32)).astype(np.float32),
                "depth": rng.uniform(1, 50, (16, 32, 1)).astype(np.float32),
            }
            if n == 0 and image is not None:
                arrays["image"] = image
            if n == 0 and depth is not None:
                arrays["depth"] = depth
            for folder, array in arrays.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{n}.npy", array)
    return root


def checkpoint_with_config(path, source, **changes):
    """``source`` (a checkpoint) with its stored config edited, as a hand-edited file would be."""
    payload = torch.load(source, weights_only=True)
    payload["config"].update(changes)
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Every input the rows name, by field name."""
    root = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    model = MoEViT(TINY).eval()
    ckpt = save_checkpoint(root / "tiny.pt", model)
    images = SyntheticDataset(TINY, "train", size=2).images
    other = MoEViT(OTHER).eval()
    nan_model = MoEViT(TINY)
    with torch.no_grad():
        nan_model.blocks[1].attn.qkv.weight[3, 5] = float("nan")
    m3vit_own = root / "m3vit-own.pth"  # as M³ViT's training saves it: no moevit part
    torch.save({"state_dict": torch.load(export_m3vit(model, root / "m3vit.pth"), weights_only=True)["state_dict"]},
               m3vit_own)
    resumable = train(TINY, TrainOptions(steps=1, batch_size=8, checkpoint=str(root / "step1.pt")),
                      SyntheticDataset(TINY, "train", size=16), progress=False).checkpoint
    image = np.random.default_rng(1).uniform(0, 1, (16, 32, 3)).astype(np.float32)
    nan_image, inf_image = image.copy(), image.copy()
    nan_image[3, 4, 0], inf_image[5, 6, 1] = np.nan, np.inf
    unwritable = root / "read-only"
    unwritable.mkdir()
    unwritable.chmod(0o555)
    if os.access(unwritable, os.W_OK):  # root writes anywhere but in /sys
        unwritable = "/sys/moevit-test"
    fields = {
        "tmp": root,
        "file": root / "a-file",
        "unwritable": unwritable,
        "ckpt": ckpt,
        "q": save_quantized(root / "tiny.q.npz", quantize(model, images)),
        "q_other": save_quantized(root / "other.q.npz", quantize(other, images)),
        "qdq": export_qdq(load_quantized(root / "tiny.q.npz"), "semseg", root / "tiny-semseg.qdq.onnx"),
        "ckpt_other": save_checkpoint(root / "other.pt", other),
        "ckpt_nan": save_checkpoint(root / "nan.pt", nan_model),
        "ckpt_eps_negative": checkpoint_with_config(root / "eps-negative.pt", ckpt, layer_norm_eps=-1.0),
        "ckpt_eps_nan": checkpoint_with_config(root / "eps-nan.pt", ckpt, layer_norm_eps=float("nan")),
        "resumable": resumable,
        "m3vit_own": m3vit_own,
        "edge_own": export_edge_moe(model, root / "edge-moe", additions=False),
        "edge_nan": export_edge_moe(model, root / "edge-moe-nan"),
        "city": cityscapes_tree(root / "city"),
        "city_nan": cityscapes_tree(root / "city-nan", image=nan_image),
        "city_inf": cityscapes_tree(root / "city-inf", image=inf_image),
        "city_255": cityscapes_tree(root / "city-255", image=image * 255),
        "city_int16": cityscapes_tree(root / "city-int16", image=(image * 255).astype(np.int16)),
        "city_nan_depth": cityscapes_tree(root / "city-nan-depth", depth=np.full((16, 32, 1), np.nan, np.float32)),
        "city_no_depth": cityscapes_tree(root / "city-no-depth"),
    }
    for split in ("train", "val"):  # every depth invalid (0) in this one
        for n in range(2):
            np.save(root / "city-no-depth" / split / "depth" / f"{n}.npy", np.zeros((16, 32, 1), np.float32))
    fields["file"].write_text("not a folder")
    qkv = np.fromfile(root / "edge-moe-nan" / "l0_qkv_weight.float32.bin", "<f4").reshape(192, 64)
    qkv[1, 2] = np.nan
    qkv.tofile(root / "edge-moe-nan" / "l0_qkv_weight.float32.bin")
    yield {name: str(value) for name, value in fields.items()}
    if not isinstance(unwritable, str):
        unwritable.chmod(0o755)


BUILD_IS_A_FILE = {"MOEVIT_BUILD": "{file}"}

# (id, command line, message regex after "moevit: error: ", environment)
ROWS = [
    # Output paths ---------------------------------------------------------
    ("train-checkpoint-is-a-folder", f"train {QUICK} --checkpoint {{tmp}}",
     r"The checkpoint \S+ is a folder; give a file name"),
    ("train-checkpoint-unwritable", f"train {QUICK} --checkpoint {{unwritable}}/x.pt",
     r"Cannot write the checkpoint \S+/x\.pt: \S+ is not writable \(.+\)"),
    ("train-checkpoint-under-a-file", f"train {QUICK} --checkpoint {{file}}/x.pt",
     r"Cannot write the checkpoint \S+/a-file/x\.pt: \S+/a-file is a file, not a folder"),
    ("eval-png-is-a-folder", "eval --checkpoint {ckpt} --val-size 2 --quiet --png {tmp}",
     r"The prediction image \S+ is a folder; give a file name"),
    ("eval-png-extension", "eval --checkpoint {ckpt} --val-size 2 --quiet --png {tmp}/p.txt",
     r"The prediction image \S+/p\.txt has the extension '\.txt'; supported: \.jpeg, .*\.png, .*"),
    ("eval-png-without-extension", "eval --checkpoint {ckpt} --val-size 2 --quiet --png {tmp}/p",
     r"The prediction image \S+/p has the extension '\(none\)'; supported: \.jpeg, .*"),
    ("eval-png-unwritable", "eval --checkpoint {ckpt} --val-size 2 --quiet --png {unwritable}/p.png",
     r"Cannot write the prediction image \S+/p\.png: \S+ is not writable \(.+\)"),
    ("quantize-output-is-a-folder", "quantize --checkpoint {ckpt} --calibration 2 --quiet -o {tmp}",
     r"The quantized model \S+ is a folder; give a file name"),
    ("quantize-output-under-a-file", "quantize --checkpoint {ckpt} --calibration 2 --quiet -o {file}/q.npz",
     r"Cannot write the quantized model \S+: \S+/a-file is a file, not a folder"),
    ("export-onnx-output-is-a-folder", "export-onnx --task semseg --quiet -o {tmp}",
     r"The ONNX file \S+ is a folder; give a file name"),
    ("export-onnx-output-unwritable", "export-onnx --task semseg --quiet -o {unwritable}/m.onnx",
     r"Cannot write the ONNX file \S+/m\.onnx: \S+ is not writable \(.+\)"),
    ("export-m3vit-output-is-a-folder", "export m3vit {ckpt} -o {tmp}",
     r"The M³ViT checkpoint \S+ is a folder; give a file name"),
    ("export-edge-moe-folder-is-a-file", "export edge-moe {ckpt} -o {file}",
     r"The Edge-MoE dump folder \S+/a-file is a file, not a folder"),
    ("import-output-is-a-folder", "import edge-moe {edge_own} --config tiny --base {ckpt} -o {tmp}",
     r"The checkpoint \S+ is a folder; give a file name"),
    ("hw-generate-folder-is-a-file", "hw generate -o {file}",
     r"The Verilog folder \S+/a-file is a file, not a folder"),
    ("build-is-a-file-train", f"train {QUICK}", r"MOEVIT_BUILD=\S+/a-file is a file, not a folder", BUILD_IS_A_FILE),
    ("build-is-a-file-eval", "eval --checkpoint {ckpt} --val-size 2 --quiet",
     r"MOEVIT_BUILD=\S+ is a file, not a folder", BUILD_IS_A_FILE),
    ("build-is-a-file-quantize", "quantize --checkpoint {ckpt} --calibration 2 --quiet",
     r"MOEVIT_BUILD=\S+ is a file, not a folder", BUILD_IS_A_FILE),
    ("build-is-a-file-demo", "demo --steps 1 --batch-size 8 --train-size 16 --val-size 2 --quiet",
     r"MOEVIT_BUILD=\S+ is a file, not a folder", BUILD_IS_A_FILE),
    ("build-is-a-file-hw-generate", "hw generate", r"MOEVIT_BUILD=\S+ is a file, not a folder", BUILD_IS_A_FILE),
    # Non-finite numbers ---------------------------------------------------
    ("training-diverges", "train --steps 3 --batch-size 8 --train-size 16 --quiet --threads 1 --lr 1e6 "
     "--checkpoint {tmp}/diverged.pt",
     r"Training diverged (at|by) step [1-3] \(--lr 1e\+06\): (the \w+ loss is (nan|inf)|weight \S+: found (nan|inf)).*"),
    ("nan-pixels", "eval --checkpoint {ckpt} --data cityscapes --data-root {city_nan} --quiet --png {tmp}/p.png",
     r"\S+/city-nan/val/image/0\.npy: found nan at index \(3, 4, 0\)"),
    ("inf-pixels", "eval --checkpoint {ckpt} --data cityscapes --data-root {city_inf} --quiet --png {tmp}/p.png",
     r"\S+/city-inf/val/image/0\.npy: found inf at index \(5, 6, 1\)"),
    ("nan-depth", "eval --checkpoint {ckpt} --data cityscapes --data-root {city_nan_depth} --quiet --png {tmp}/p.png",
     r"\S+/val/depth/0\.npy: found nan at index \(0, 0\)"),
    ("nan-calibration-images", "quantize --checkpoint {ckpt} --data cityscapes --data-root {city_nan} --quiet "
     "-o {tmp}/q.npz", r"\S+/city-nan/train/image/0\.npy: found nan at index \(3, 4, 0\)"),
    ("layer-norm-eps-negative", "eval --checkpoint {ckpt_eps_negative} --val-size 2 --quiet",
     r"Checkpoint \S+ holds an invalid model config: LayerNorm epsilon must be a positive finite number, not -1\.0"),
    ("layer-norm-eps-nan", "eval --checkpoint {ckpt_eps_nan} --val-size 2 --quiet",
     r"Checkpoint \S+ holds an invalid model config: LayerNorm epsilon must be a positive finite number, not nan"),
    ("nan-weights", "eval --checkpoint {ckpt_nan} --val-size 2 --quiet",
     r"Checkpoint \S+/nan\.pt: blocks\.1\.attn\.qkv\.weight: found nan at index \(3, 5\)"),
    ("all-invalid-depth", "eval --checkpoint {ckpt} --data cityscapes --data-root {city_no_depth} --quiet "
     "--png {tmp}/p.png",
     r"Task 'depth' has no valid pixel in the 2 samples of <Cityscapes \S+ \(2 samples\)> "
     r"\(every depth is 0 \(invalid\)\): its metrics are undefined"),
    ("train-lr-nan", f"train {QUICK} --lr nan", r"argument --lr: must be a positive finite number, not 'nan'"),
    ("train-lr-inf", f"train {QUICK} --lr inf", r"argument --lr: must be a positive finite number, not 'inf'"),
    # Options that do nothing or are out of range --------------------------
    ("quantized-without-integer", "eval --checkpoint {ckpt} --quantized {q}", r"--quantized does nothing without --integer"),
    ("calibration-without-integer", "eval --checkpoint {ckpt} --calibration 8",
     r"--calibration does nothing without --integer"),
    ("calibration-with-quantized", "eval --checkpoint {ckpt} --integer --quantized {q} --calibration 8 --quiet",
     r"--calibration does nothing with --quantized \(the file is already calibrated\)"),
    ("data-root-without-data", f"train {QUICK} --data-root {{city}}",
     r"--data-root does nothing without --data NAME \(the synthetic set is rendered, not read\)"),
    ("quantize-data-root-without-data", "quantize --checkpoint {ckpt} --data-root {city}",
     r"--data-root does nothing without --data NAME \(the synthetic set is rendered, not read\)"),
    ("data-without-root", f"train {QUICK} --data cityscapes", r"--data cityscapes needs --data-root DIR, .*"),
    ("train-size-with-real-data", "train --steps 1 --data cityscapes --data-root {city} --train-size 4",
     r"--train-size applies to the synthetic set only, not to --data cityscapes"),
    ("data-seed-with-real-data", "eval --checkpoint {ckpt} --data cityscapes --data-root {city} --data-seed 3",
     r"--data-seed applies to the synthetic set only, not to --data cityscapes"),
    ("unknown-data", f"train {QUICK} --data imagenet", r"argument --data: invalid choice: 'imagenet' .*"),
    ("batch-with-quantized", "export-onnx --task semseg --quantized {q} --batch 2 -o {tmp}/m.onnx",
     r"--batch does nothing with --quantized: the quantized file fixes its batch \(1\)"),
    ("checkpoint-with-quantized", "export-onnx --task semseg --quantized {q} --checkpoint {ckpt} -o {tmp}/m.onnx",
     r"--checkpoint does nothing with --quantized: the quantized file fixes the weights"),
    ("seed-with-checkpoint", "export-onnx --task semseg --checkpoint {ckpt} --seed 3 -o {tmp}/m.onnx",
     r"--seed does nothing with --checkpoint: it seeds random weights only"),
    ("quantized-of-another-config", "eval --checkpoint {ckpt} --integer --quantized {q_other} --quiet",
     r"Quantized model \S+ holds model 'tiny-3x', which does not match 'tiny': .*"),
    ("export-onnx-quantized-of-another-config", "export-onnx --task semseg --quantized {q_other} -o {tmp}/m.onnx",
     r"Quantized model \S+ holds model 'tiny-3x', which does not match 'tiny': .*"),
    ("warmup-negative", f"train {QUICK} --warmup -1", r"argument --warmup: must be a non-negative integer, not '-1'"),
    ("checkpoint-every-negative", f"train {QUICK} --checkpoint-every -1",
     r"argument --checkpoint-every: must be a non-negative integer, not '-1'"),
    ("threads-zero", f"train {QUICK} --threads 0", r"argument --threads: must be a positive integer, not '0'"),
    ("demo-threads-zero", "demo --threads 0", r"argument --threads: must be a positive integer, not '0'"),
    ("train-batch-size-zero", "train --batch-size 0", r"argument --batch-size: must be a positive integer, not '0'"),
    ("eval-batch-size-zero", "eval --checkpoint {ckpt} --batch-size 0",
     r"argument --batch-size: must be a positive integer, not '0'"),
    ("seed-negative", f"train {QUICK} --seed -1", r"argument --seed: must be a non-negative integer, not '-1'"),
    ("data-seed-negative", "eval --checkpoint {ckpt} --data-seed -1",
     r"argument --data-seed: must be a non-negative integer, not '-1'"),
    ("export-onnx-seed-negative", "export-onnx --task semseg --seed -1 -o {tmp}/m.onnx",
     r"argument --seed: must be a non-negative integer, not '-1'"),
    ("check-onnx-checkpoint-for-qdq", "check-onnx {qdq} --checkpoint {ckpt}",
     r"ONNX file \S+ is a QDQ graph: its reference is a quantized model \(quantized\), not a checkpoint"),
    ("check-onnx-seed-negative", "check-onnx {tmp}/m.onnx --seed -1",
     r"Seed must be a non-negative integer, not -1"),
    ("steps-zero", "train --steps 0", r"argument --steps: must be a positive integer, not '0'"),
    ("steps-not-a-number", "train --steps many", r"argument --steps: must be a positive integer, not 'many'"),
    ("train-size-zero", "train --train-size 0", r"argument --train-size: must be a positive integer, not '0'"),
    ("calibration-zero", "quantize --checkpoint {ckpt} --calibration 0",
     r"argument --calibration: must be a positive integer, not '0'"),
    ("export-onnx-batch-zero", "export-onnx --task semseg --batch 0 -o {tmp}/m.onnx",
     r"argument --batch: must be a positive integer, not '0'"),
    ("bench-golden-repeat-zero", "bench golden --repeat 0", r"argument --repeat: must be a positive integer, not '0'"),
    ("bench-top-onchip-ragged", "bench top --onchip 8",
     r"On-chip activation memory must be a non-negative multiple of the 16-byte bus word, "
     r"not 8 bytes$"),
    ("bench-top-unknown-board", "bench top --board zcu999",
     r"Unknown board 'zcu999'; known boards: .*"),
    ("bench-top-board-and-latency", "bench top --board zcu102 --latency 5",
     r"--latency with --board: the board's memory has its own latency$"),
    ("nproc-zero", "train --nproc-per-node 0", r"argument --nproc-per-node: must be a positive integer, not '0'"),
    ("unknown-option", "train --epochs 3", r"unrecognized arguments: --epochs 3"),
    ("unknown-config", "info --config huge", r"Unknown config 'huge'; known configs are \[.*\]"),
    ("unknown-task", "info --config tiny --task normals", r"Model 'tiny' has no task 'normals'; its tasks are .*"),
    ("export-onnx-task-out-of-range", "export-onnx --task 7 -o {tmp}/m.onnx",
     r"Model 'tiny' has no task 7; task ids are 0\.\.1"),
    ("hw-estimate-unknown-unit", "hw estimate --unit adder", r"Unknown hardware unit 'adder'; units are \[.*\]"),
    ("hw-generate-packing-3", "hw generate --packing 3",
     r"argument --packing: invalid choice: 3 \(choose from 1, 2\)"),
    ("hw-generate-chain-9", "hw generate --chain 9",
     r"argument --chain: invalid choice: 9 \(choose from 1, 2, 3, 4, 5, 6, 7, 8\)"),
    ("hw-estimate-packed-chain-8", "hw estimate --config zcu102-edge-moe --chain 8",
     r"Chain depth 8 with DSP packing 2: the low product's field holds the sum of at most 7$"),
    ("missing-checkpoint", "eval --checkpoint {tmp}/nowhere.pt", r"Checkpoint \S+/nowhere\.pt does not exist"),
    # Data -------------------------------------------------------------------
    ("float-pixels-in-0-255", "eval --checkpoint {ckpt} --data cityscapes --data-root {city_255} --quiet "
     "--png {tmp}/p.png",
     r"\S+/val/image/0\.npy holds float pixels in [\d.]+\.\.[\d.]+; expected \[0, 1\] \(scale a 0\.\.255 image .*\)"),
    ("int16-pixels", "eval --checkpoint {ckpt} --data cityscapes --data-root {city_int16} --quiet --png {tmp}/p.png",
     r"\S+/val/image/0\.npy holds int16 pixels; expected floats in \[0, 1\] or uint8 in 0\.\.255"),
    ("calibration-data-without-the-tasks", "quantize --checkpoint {ckpt} --data pascal-context --data-root {city}",
     r"PASCAL-Context has 21 semseg classes; task 'semseg' of config 'tiny' has 4"),
    # Round trips ------------------------------------------------------------
    ("import-m3vit-without-heads", "import m3vit {m3vit_own} -o {tmp}/imported.pt",
     r"M³ViT checkpoint \S+ lacks the final norm, the heads of moevit's model: "
     r"take them from a moevit checkpoint of config 'tiny' \(--base CKPT\)"),
    ("import-edge-moe-without-heads", "import edge-moe {edge_own} --config tiny -o {tmp}/imported.pt",
     r"Edge-MoE dump folder \S+ lacks the final norm, the heads of moevit's model: "
     r"take them from a moevit checkpoint of config 'tiny' \(--base CKPT\)"),
    ("import-nan-weights", "import edge-moe {edge_nan} --config tiny -o {tmp}/imported.pt",
     r"Edge-MoE dump folder \S+: blocks\.0\.attn\.qkv\.weight: found nan at index \(1, 2\)"),
    ("import-base-of-another-config", "import m3vit {m3vit_own} --base {ckpt_other} -o {tmp}/imported.pt",
     r"The base model has config 'tiny-3x'; the weights are for 'tiny'"),
    ("resume-past-the-steps", f"train {QUICK} --resume {{resumable}} --checkpoint {{tmp}}/resumed.pt",
     r"Checkpoint \S+/step1\.pt is already at step 1; --steps 1 leaves nothing to train \(give more than 1 steps\)"),
    ("resume-of-another-config", f"train {QUICK} --config edge-moe --resume {{resumable}} --checkpoint {{tmp}}/r.pt",
     r"Checkpoint \S+ holds model 'tiny', which does not match 'edge-moe': .*"),
    # torchrun: a moevit error in a worker -----------------------------------
    ("nproc-under-torchrun", "train --nproc-per-node 4", r"--nproc-per-node 4 does nothing under a launcher that "
     r"started 2 processes per node \(torchrun's own --nproc-per-node decides\)",
     {"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}),
    ("worker-error-is-one-line", "train --nproc-per-node 2 --steps 1 --batch-size 3 --train-size 16 --quiet "
     "--threads 1 --checkpoint {tmp}/ddp.pt", r"Batch size 3 is not divisible by 2 processes"),
]


def files_under(*roots):
    return {path for root in roots for path in Path(root).rglob("*") if path.is_file()}


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(row, paths, tmp_path, monkeypatch, capfd):
    _, command, message, *env = row
    build = tmp_path / "build"
    monkeypatch.setenv("MOEVIT_BUILD", str(build))
    for name, value in (env[0] if env else {}).items():
        monkeypatch.setenv(name, value.format(**paths))
    argv = shlex.split(command.format(**paths))
    before = files_under(paths["tmp"], build)
    status = main(argv)
    out, err = capfd.readouterr()
    assert status == 2, (argv, out, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert re.fullmatch(rf"moevit: error: {message}( \(see: moevit[\w -]* --help\))?", err[:-1]), err
    assert files_under(paths["tmp"], build) == before, "a bad input left a file behind"


# What the users expect beside the errors ------------------------------------------
def test_uint8_images_are_scaled_like_floats_in_0_1(tmp_path):
    from moevit.model.datasets import cityscapes

    image = np.random.default_rng(2).integers(0, 256, (16, 32, 3)).astype(np.uint8)
    as_uint8 = cityscapes(cityscapes_tree(tmp_path / "u8", image=image), TINY, "val")[0]["image"]
    as_float = cityscapes(cityscapes_tree(tmp_path / "f", image=image / np.float32(255)), TINY, "val")[0]["image"]
    assert torch.allclose(as_uint8, as_float, rtol=0, atol=1e-6)


def test_quantize_calibrates_on_the_data_it_is_given(paths, tmp_path, capsys):
    from moevit.model.checkpoint import load_checkpoint
    from moevit.model.datasets import cityscapes

    out = tmp_path / "city.q.npz"
    argv = ["quantize", "--checkpoint", paths["ckpt"], "--data", "cityscapes", "--data-root", paths["city"],
            "-o", str(out), "--quiet"]
    assert main(argv) == 0
    assert "on 2 cityscapes calibration images" in capsys.readouterr().out
    model = load_checkpoint(paths["ckpt"])[0]
    train_images = torch.stack([sample["image"] for sample in cityscapes(paths["city"], TINY, "train")])
    expected = quantize(model, train_images)
    found = load_quantized(out)
    assert found.checksum() == expected.checksum()
    synthetic = quantize(model, SyntheticDataset(TINY, "train", size=2).images)
    assert found.scale("input") != synthetic.scale("input")


def test_import_with_a_base_takes_what_the_source_lacks(paths, tmp_path):
    from moevit.model.checkpoint import load_checkpoint

    out = tmp_path / "imported.pt"
    assert main(["import", "m3vit", paths["m3vit_own"], "--base", paths["ckpt"], "-o", str(out)]) == 0
    imported, meta = load_checkpoint(out)
    base = load_checkpoint(paths["ckpt"])[0]
    assert meta["extra"]["imported_from"]["base"] == paths["ckpt"]
    for name, value in base.state_dict().items():  # paths["m3vit_own"] is this model's backbone
        assert torch.equal(imported.state_dict()[name], value), name


def test_library_calls_name_the_first_non_finite_value():
    from moevit.errors import NonFiniteError
    from moevit.model.evaluate import evaluate

    model = MoEViT(TINY).eval()
    data = SyntheticDataset(TINY, "val", size=2)
    data.images[1, 0, 5, 6] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^Calibration images: found inf at index \(1, 0, 5, 6\)$"):
        quantize(model, data.images)
    with pytest.raises(NonFiniteError, match=r"^Images: found inf at index \(1, 0, 5, 6\)$"):
        evaluate(model, data)
    with pytest.raises(NonFiniteError, match=r"^Training images of step 1: found inf at index \(\d, 0, 5, 6\)$"):
        train(TINY, TrainOptions(steps=1, batch_size=2), data, progress=False)
