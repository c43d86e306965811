"""The integer golden model against the float model, its names and records,
and the quantized-model file with each way it can be wrong."""

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from moevit.errors import CheckpointError, ConfigError
from moevit.model.integer import golden, intops, quantize
from moevit.model.config import get_config
from moevit.model.data import SyntheticDataset
from moevit.model.integer.evaluate import signal_model
from moevit.model.integer.intops import QuantizationError
from moevit.model.moevit import MoEViT


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    model = signal_model(config)
    data = SyntheticDataset(config, "val", size=12)
    qmodel = quantize.quantize(model, data.images[:8])
    return model, qmodel, data


# Whole model -----------------------------------------------------------------
@pytest.mark.parametrize("task", ["semseg", "depth"])
def test_integer_model_follows_the_float_model(tiny, task):
    model, qmodel, data = tiny
    errors, agree = [], []
    for index in range(8, 12):  # images outside the calibration set
        result = golden.run(qmodel, data.images[index].numpy(), task)
        with torch.no_grad():
            expected = model(data.images[index : index + 1], task)[0].double().numpy()
        assert result.output.dtype == np.int8 and result.prediction.shape == expected.shape
        errors.append(np.sqrt(np.mean((result.prediction - expected) ** 2)) / expected.std())
        if task == "semseg":
            agree.append(np.mean(result.prediction.argmax(0) == expected.argmax(0)))
    # measured: 3.4 % relative RMSE, 98 % of the pixels with the same class
    assert max(errors) < 0.08
    if agree:
        assert min(agree) > 0.93


def test_every_documented_tensor_is_named(tiny):
    _, qmodel, data = tiny
    config = qmodel.config
    result = golden.run(qmodel, data.images[9].numpy(), "depth")
    names = result.tensors
    T, P, D = config.tokens, config.patches, config.dim
    assert names["input"].shape == (3, 64, 64) and names["patch_embed.in"].shape == (P, config.patch_dim)
    assert names["embed.out"].shape == (T, D) and names["embed.out"].dtype == np.int8
    for i in range(config.depth):
        p = f"blocks.{i}"
        assert names[f"{p}.attn.qkv.out"].shape == (T, 3 * D)
        for h in range(config.heads):
            assert names[f"{p}.attn.scores.h{h}"].shape == (T, T)
            probs = names[f"{p}.attn.probs.h{h}"]
            assert probs.min() >= 0 and probs.max() <= 2**15
        for part in ("norm1", "attn.ctx", "attn.proj", "add1", "norm2", "mlp", "add2"):
            key = f"{p}.{part}" if part == "attn.ctx" else f"{p}.{part}.out"
            assert names[key].shape == (T, D) and names[key].dtype == np.int8, key
        if config.is_moe(i):
            assert names[f"{p}.mlp.gate.logits"].shape == (T, config.experts)
            assert names[f"{p}.mlp.gate.topk"].shape == (T, config.top_k)
            assert names[f"{p}.mlp.gate.probs"].shape == (T, config.experts)
            assert names[f"{p}.mlp.gate.weights"].shape == (T, config.top_k)
        else:
            assert names[f"{p}.mlp.fc1.pre"].shape == names[f"{p}.mlp.fc1.out"].shape == (T, config.mlp_hidden)
    assert names["norm.out"].shape == (T, D)
    assert names["heads.1.out"].shape == (P, config.patch**2)
    assert np.array_equal(names["heads.1.map"], result.output)
    # every int8 tensor has its scale in the model, under its own name but for
    # three (see the golden module's doc)
    aliases = {"patch_embed.in": "input", "heads.1.map": "heads.1.out"}
    for i in range(config.depth):
        aliases[f"blocks.{i}.attn.qkv.out"] = f"blocks.{i}.attn.q"
        aliases[f"blocks.{i}.mlp.gate.logits"] = f"blocks.{i}.mlp.gates.1.out"
    for name, value in names.items():
        if value.dtype == np.int8:
            assert qmodel.scale(aliases.get(name, name)) > 0, name


def test_only_the_selected_experts_run(tiny):
    _, qmodel, data = tiny
    config = qmodel.config
    result = golden.run(qmodel, data.images[10].numpy(), "semseg")
    ran = {record.name for record in result.linears}
    for i in config.moe_blocks:
        p = f"blocks.{i}"
        top = result.tensors[f"{p}.mlp.gate.topk"]
        chosen = set(np.unique(top).tolist())
        assert {e for e in range(config.experts) if f"{p}.mlp.experts.{e}.fc1" in ran} == chosen
        for e in chosen:
            tokens = result.tensors[f"{p}.mlp.experts.{e}.tokens"]
            assert tokens.tolist() == [t for t in range(config.tokens) if e in top[t]]
            assert result.tensors[f"{p}.mlp.experts.{e}.fc2.out"].shape == (len(tokens), config.dim)
        for e in set(range(config.experts)) - chosen:
            assert f"{p}.mlp.experts.{e}.tokens" not in result.tensors
        assert f"{p}.mlp.gates.0" in ran and f"{p}.mlp.gates.1" not in ran
    assert "heads.0" in ran and "heads.1" not in ran


def test_the_moe_combine_is_the_weighted_sum_of_expert_outputs(tiny):
    _, qmodel, data = tiny
    result = golden.run(qmodel, data.images[10].numpy(), "semseg")
    p = f"blocks.{qmodel.config.moe_blocks[0]}"
    top = result.tensors[f"{p}.mlp.gate.topk"]
    weights = result.tensors[f"{p}.mlp.gate.weights"]
    acc = result.tensors[f"{p}.mlp.combine.acc"]
    for token in (0, 17, 64):
        total = np.zeros(qmodel.config.dim, np.int64)
        for slot, e in enumerate(top[token]):
            rows = result.tensors[f"{p}.mlp.experts.{e}.tokens"].tolist()
            out = result.tensors[f"{p}.mlp.experts.{e}.fc2.out"][rows.index(token)]
            total += int(weights[token, slot]) * out.astype(np.int64)
        assert acc[token].tolist() == total.tolist()
    mult, shift = (int(v) for v in qmodel[f"{p}.mlp.combine"])
    assert np.array_equal(result.tensors[f"{p}.mlp.out"], intops.requantize(acc, mult, shift))


def test_the_gate_follows_the_config_rule(tiny):
    """V-MoE (tiny): the integer softmax over all E logits, the selected keep theirs;
    the same arrays under "renorm": the integer softmax over the k selected logits."""
    _, qmodel, data = tiny
    image = data.images[9].numpy()
    vmoe = golden.run(qmodel, image, "depth").tensors
    renorm = golden.run(quantize.QuantizedModel(qmodel.config.replace(gate="renorm"), qmodel.arrays), image, 1).tensors
    k = qmodel.config.top_k
    for i in qmodel.config.moe_blocks:
        p = f"blocks.{i}"
        logits, top = vmoe[f"{p}.mlp.gate.logits"], vmoe[f"{p}.mlp.gate.topk"]
        real = logits * qmodel.scale(f"{p}.mlp.gates.1.out")
        exact = np.exp(real - real.max(-1, keepdims=True))
        exact /= exact.sum(-1, keepdims=True)
        probs = vmoe[f"{p}.mlp.gate.probs"]
        assert np.abs(probs / 2**15 - exact).max() <= 3e-3  # intops.softmax's stated error
        weights = vmoe[f"{p}.mlp.gate.weights"]
        assert np.array_equal(weights, np.take_along_axis(probs, top, axis=1))
        assert weights.sum(-1).max() < 2**15 - 2 * (k // 2 + 2)  # not renormalised (8 experts, top-2)
        mult, shift = (int(v) for v in qmodel[f"{p}.mlp.gate.softmax"][1])
        if i == qmodel.config.moe_blocks[0]:  # later blocks' inputs differ with the rule
            assert np.array_equal(renorm[f"{p}.mlp.gate.topk"], top)
        own = np.take_along_axis(renorm[f"{p}.mlp.gate.logits"], renorm[f"{p}.mlp.gate.topk"], axis=1)
        assert np.array_equal(renorm[f"{p}.mlp.gate.weights"], intops.softmax(own, mult, shift))
        assert np.all(np.abs(renorm[f"{p}.mlp.gate.weights"].sum(-1) - 2**15) <= k // 2 + 2)
        assert f"{p}.mlp.gate.probs" not in renorm


def test_every_linear_layer_replays_from_its_record(tiny):
    _, qmodel, data = tiny
    result = golden.run(qmodel, data.images[11].numpy(), "depth")
    names = quantize.linear_names(qmodel.config)
    assert {r.name for r in result.linears} <= set(names)
    assert sum(r.gelu is not None for r in result.linears) >= 2
    for record in result.linears:
        out = golden.linear(record.x, record.weight, record.bias, record.mult, record.shift, record.gelu)
        assert np.array_equal(out, record.out), record.name
        assert record.x.dtype == record.weight.dtype == np.int8 and record.bias.dtype == np.int32


def test_attention_heads_replay(tiny):
    _, qmodel, data = tiny
    config = qmodel.config
    result = golden.run(qmodel, data.images[11].numpy(), "depth")
    qkv = result.tensors["blocks.2.attn.qkv.out"]
    consts = golden.AttentionConsts(*qmodel["blocks.2.attn.softmax"], *qmodel["blocks.2.attn.ctx"])
    d, hd = config.dim, config.head_dim
    head = golden.attention_head(qkv[:, hd : 2 * hd], qkv[:, d + hd : d + 2 * hd], qkv[:, 2 * d + hd : 2 * d + 2 * hd], consts)
    assert np.array_equal(head.scores, result.tensors["blocks.2.attn.scores.h1"])
    assert np.array_equal(head.probs, result.tensors["blocks.2.attn.probs.h1"])
    assert np.array_equal(head.out, result.tensors["blocks.2.attn.ctx"][:, hd : 2 * hd])
    assert np.all(np.abs(head.probs.sum(-1) - 2**15) <= config.tokens // 2 + 2)


def test_int8_and_float_images_give_the_same_run(tiny):
    _, qmodel, data = tiny
    image = data.images[9].numpy()
    first = golden.run(qmodel, image, 0)
    again = golden.run(qmodel, golden.quantize_image(image, qmodel.scale("input")), "semseg", record=False)
    assert np.array_equal(first.output, again.output) and again.tensors == {}


# Bad input --------------------------------------------------------------------
def test_golden_rejects_an_unknown_task(tiny):
    _, qmodel, data = tiny
    with pytest.raises(ConfigError, match=r"^Model 'tiny' has no task 'normals'; its tasks are \['semseg', 'depth'\]$"):
        golden.run(qmodel, data.images[0].numpy(), "normals")


def test_golden_rejects_a_wrong_image():
    qmodel = quantize.QuantizedModel(get_config("tiny"), {})
    with pytest.raises(QuantizationError, match=r"^Image of shape \(3, 32, 32\) does not fit model 'tiny'; expected \(3, 64, 64\)$"):
        golden.run(qmodel, np.zeros((3, 32, 32), np.float32), 0)
    with pytest.raises(QuantizationError, match=r"^Image must be float or int8, not int64$"):
        golden.run(qmodel, np.zeros((3, 64, 64), np.int64), 0)


def test_calibration_on_an_empty_set_is_an_error():
    model = MoEViT(get_config("tiny"))
    with pytest.raises(QuantizationError, match=r"^Calibration needs at least one image, not 0$"):
        quantize.quantize(model, torch.zeros(0, 3, 64, 64))


_QUANTIZE_TINY = """
import sys, torch
from moevit.model.config import get_config
from moevit.model.data import SyntheticDataset
from moevit.model.integer.evaluate import signal_model
from moevit.model.integer.quantize import quantize
config = get_config("tiny")
model = signal_model(config)
model.load_state_dict(torch.load(sys.argv[1]))
print(quantize(model, SyntheticDataset(config, "val", size=8, seed=1).images).checksum())
"""


def test_the_same_weights_quantize_to_the_same_file_on_any_float_kernels(tmp_path):
    """One set of float weights, quantized by torch's scalar kernels and by its AVX2 ones
    (``ATEN_CPU_CAPABILITY``, as CPUs differ): the same file, scales and integers. A float32
    calibration gave two files here (every scale's last bits, a few multipliers and
    LayerNorm betas), and on edge-moe another routing."""
    weights = tmp_path / "tiny.pt"
    torch.save(signal_model(get_config("tiny")).state_dict(), weights)
    checksums = {}
    for capability in ("default", "avx2"):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
        run = subprocess.run([sys.executable, "-c", _QUANTIZE_TINY, str(weights)], env=env,
                             capture_output=True, text=True, check=True)
        checksums[capability] = run.stdout.strip()
    print(checksums)
    assert len(set(checksums.values())) == 1


def test_calibration_without_a_tensor_is_an_error(tiny):
    model, _, _ = tiny
    state = {name: value.double().numpy() for name, value in model.state_dict().items()}
    with pytest.raises(QuantizationError, match=r"^Calibration has no statistics for tensor 'input'$"):
        quantize.quantize_model(state, model.config, {})


def test_out_of_int8_input_to_a_linear_layer_is_an_error(tiny):
    _, qmodel, _ = tiny
    w, b, m, s = (qmodel[f"heads.0.{part}"] for part in ("weight", "bias", "mult", "shift"))
    with pytest.raises(QuantizationError, match=r"^Linear input must hold int8 values in \[-128, 127\], not 200$"):
        golden.linear(np.full((2, 64), 200), w, b, m, s)


# The quantized-model file -----------------------------------------------------
def test_file_round_trips(tiny, tmp_path):
    _, qmodel, data = tiny
    path = quantize.save_quantized(tmp_path / "tiny.npz", qmodel)
    loaded = quantize.load_quantized(path, get_config("tiny"))
    assert loaded.config == qmodel.config and loaded.checksum() == qmodel.checksum()
    assert set(loaded.arrays) == set(qmodel.arrays)
    for name, value in qmodel.arrays.items():
        assert loaded.arrays[name].dtype == value.dtype and np.array_equal(loaded.arrays[name], value)
    image = data.images[8].numpy()
    assert np.array_equal(golden.run(loaded, image, 1).output, golden.run(qmodel, image, 1).output)


def _raw(path, arrays, header):
    payload = dict(arrays)
    payload["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    path.write_bytes(buffer.getvalue())
    return path


def _header(qmodel, **changes):
    header = {"format": quantize.FORMAT, "version": quantize.VERSION, "config": qmodel.config.to_dict(), "checksum": qmodel.checksum()}
    header.update(changes)
    return header


def test_file_errors(tiny, tmp_path):
    _, qmodel, _ = tiny
    good = quantize.save_quantized(tmp_path / "good.npz", qmodel)
    name = re.escape(str(tmp_path))

    def fails(path, message, config=None):
        with pytest.raises(CheckpointError, match=message):
            quantize.load_quantized(path, config)

    fails(tmp_path / "none.npz", rf"^Quantized model {name}/none\.npz does not exist$")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fails(truncated, rf"^Quantized model {name}/truncated\.npz is corrupt or truncated: ")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all" * 10)
    fails(garbage, rf"^Quantized model {name}/garbage\.npz is corrupt or truncated: ")
    bare = tmp_path / "bare.npz"
    np.savez(bare, x=np.zeros(3))
    fails(bare, rf"^File {name}/bare\.npz is not a moevit quantized model \(no header\)$")
    fails(_raw(tmp_path / "other.npz", qmodel.arrays, _header(qmodel, format="other")), rf"^File {name}/other\.npz is not a moevit quantized model$")
    fails(
        _raw(tmp_path / "v2.npz", qmodel.arrays, _header(qmodel, version=2)),
        rf"^Quantized model {name}/v2\.npz has format version 2; this moevit reads version 1$",
    )
    changed = dict(qmodel.arrays)
    changed["heads.0.bias"] = changed["heads.0.bias"] + 1
    fails(
        _raw(tmp_path / "changed.npz", changed, _header(qmodel)),
        rf"^Quantized model {name}/changed\.npz fails its checksum: the arrays were changed or damaged$",
    )
    fails(
        good,
        rf"^Quantized model {name}/good\.npz holds model 'tiny', which does not match 'edge-moe': "
        r"name 'tiny' \(expected 'edge-moe'\); image_size \(64, 64\) \(expected \(128, 256\)\); ",
        get_config("edge-moe"),
    )
    fails(
        good,
        rf"^Quantized model {name}/good\.npz holds model 'tiny', which does not match 'tiny': top_k 2 \(expected 1\)$",
        get_config("tiny").replace(top_k=1),
    )
    lacking = dict(qmodel.arrays)
    del lacking["norm.gamma"]
    check = quantize.QuantizedModel(qmodel.config, lacking).checksum()
    fails(
        _raw(tmp_path / "lacking.npz", lacking, _header(qmodel, checksum=check)),
        rf"^Quantized model {name}/lacking\.npz lacks 'norm\.gamma' for model 'tiny'$",
    )
    other = get_config("tiny").replace(dim=32, heads=2)
    fails(
        _raw(tmp_path / "shape.npz", qmodel.arrays, _header(qmodel, config=other.to_dict())),
        rf"^Quantized model {name}/shape\.npz has pos_embed of shape \(64, 64\); model 'tiny' needs \(64, 32\)$",
    )
    fails(
        _raw(tmp_path / "source.npz", qmodel.arrays, _header(qmodel, source_sha256="abc")),
        rf"^Quantized model {name}/source\.npz has a corrupt header: its source_sha256 is not a SHA-256$",
    )


# The source: the float weights a quantized model came from ----------------------------
def test_file_records_the_weights_it_was_quantized_from(tiny, tmp_path):
    from moevit.model.checkpoint import weights_sha256

    model, qmodel, _ = tiny
    assert qmodel.source_sha256 == weights_sha256(model.state_dict())
    loaded = quantize.load_quantized(quantize.save_quantized(tmp_path / "tiny.npz", qmodel))
    assert loaded.source_sha256 == qmodel.source_sha256
    quantize.check_source(loaded, model.state_dict(), quantized="q.npz", checkpoint="c.pt")  # no error


def test_check_source_refuses_other_weights(tiny):
    model, qmodel, _ = tiny
    state = dict(model.state_dict())
    state["heads.0.bias"] = state["heads.0.bias"] + 1e-6  # the same config, other weights
    with pytest.raises(CheckpointError, match=(
        r"^Quantized model q\.npz was quantized from other weights \(sha256 [0-9a-f]{16}\) than checkpoint "
        r"c\.pt \(sha256 [0-9a-f]{16}\); give the checkpoint it came from, or quantize this one: "
        r"moevit quantize --checkpoint c\.pt$")):
        quantize.check_source(qmodel, state, quantized="q.npz", checkpoint="c.pt")


def test_file_written_before_the_source_was_recorded(tiny, tmp_path):
    """Such a file (no source_sha256 in its header) loads, but pairs with no checkpoint."""
    model, qmodel, data = tiny
    old = quantize.load_quantized(_raw(tmp_path / "old.npz", qmodel.arrays, _header(qmodel)))
    assert old.source_sha256 is None and old.checksum() == qmodel.checksum()
    with pytest.raises(CheckpointError, match=(
        r"^Quantized model old\.npz does not record the checkpoint it was quantized from \(written before moevit "
        r"recorded it\); quantize again: moevit quantize --checkpoint c\.pt$")):
        quantize.check_source(old, model.state_dict(), quantized="old.npz", checkpoint="c.pt")
