"""Post-training quantization of a float MoE-ViT, and the quantized-model file.

Scheme (the numeric contract of ``/work/shared/DESIGN.md``):

* weights int8, symmetric, one scale per output channel
  (``max|W[o, :]| / 127``); biases int32 at the accumulator's scale
  ``S_x * S_w[o]``;
* activations int8, symmetric, one scale per tensor: ``max|a| / 127`` over
  a calibration set (every task run on every image);
* each int32 accumulator goes back to int8 through
  :func:`~moevit.model.integer.intops.requantize` with a per-output-channel
  multiplier and shift (:func:`~moevit.model.integer.intops.quantize_multiplier`);
* LayerNorm, GELU, softmax, residual adds and the MoE gate use the integer
  units of :mod:`moevit.model.integer.intops` and their ``*_constants``.

The float scale of each int8 tensor is kept in the file as ``scale.<tensor>``
(tensor names of :mod:`moevit.model.integer.golden`); the golden model reads only
the integer arrays, except ``scale.input`` (to quantize the image) and
``scale.heads.{t}.out`` (to read the prediction in the target's unit).

Array names (``L`` a linear layer: ``patch_embed.proj``,
``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc1``,
``blocks.{i}.mlp.fc2``, ``blocks.{i}.mlp.gates.{t}``,
``blocks.{i}.mlp.experts.{e}.fc1``, ``blocks.{i}.mlp.experts.{e}.fc2``,
``heads.{t}``):

=====================================  ======================================
``L.weight`` int8 (O, I)               ``L.bias`` int32 (O,)
``L.mult`` int32 (O,), u15             ``L.shift`` int32 (O,), 1..47
``L.gelu`` int64 (4,)                  fc1 layers: GELU ``b, c, mult, shift``
``pos_embed`` int8 (patches, dim)      position embedding of the patch tokens
``cls`` int8 (dim,)                    class token + its position, at ``embed.out``'s scale
``embed.add`` int64 (3,)               residual constants ``Ma, Mb, S`` (patches + pos)
``{norm}.eps`` int64 (), ``{norm}.gamma`` int32 (D,), ``{norm}.beta`` int64 (D,),
``{norm}.shift`` int64 ()              LayerNorm constants, ``{norm}`` in
                                       ``blocks.{i}.norm1``, ``blocks.{i}.norm2``, ``norm``
``blocks.{i}.attn.softmax`` int64 (2,) softmax ``M, S`` of the scores
``blocks.{i}.attn.ctx`` int64 (2,)     requantize ``M, S`` of probs x V
``blocks.{i}.add1``, ``.add2`` (3,)    residual constants
``blocks.{i}.mlp.gate.softmax`` (T, 2) per task: softmax ``M, S`` of the gate logits (over all
                                       E for the ``"vmoe"`` gate, the top-k for ``"renorm"``)
``blocks.{i}.mlp.combine`` int64 (2,)  requantize ``M, S`` of sum(weight x expert out)
``scale.<tensor>`` float64 ()          the float scale of an int8 tensor
=====================================  ======================================

The file is one ``.npz`` (no pickles): the arrays above plus ``__header__``,
UTF-8 JSON ``{"format", "version", "config", "checksum", "source_sha256"}``
where the checksum is the SHA-256 of every array's name, dtype, shape and
bytes in name order, and ``source_sha256`` the SHA-256 of the float weights
the model was quantized from
(:func:`~moevit.model.checkpoint.weights_sha256` of the checkpoint's state
dict: the weights, not the file's bytes, so the same weights saved again
still match). :func:`check_source` compares it with a checkpoint. Files
written before it was recorded have none (``None``): they still load, but
cannot be paired with a checkpoint until quantized again.
"""

import copy
import hashlib
import io
import json
import math
import re
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moevit.errors import CheckpointError, ConfigError, check_finite, first_line
from moevit.model.integer import intops
from moevit.model.config import ModelConfig
from moevit.model.integer.golden import quantize_image as _quantize_tensor  # clip8(floor(x / scale + 1/2)), as the host
from moevit.model.integer.intops import QuantizationError
from moevit.paths import write_atomically

__all__ = [
    "FORMAT",
    "VERSION",
    "QuantizedModel",
    "calibrate",
    "quantize",
    "quantize_model",
    "save_quantized",
    "load_quantized",
    "check_source",
    "linear_names",
    "GELU_MIN_SCALE",
]

FORMAT = "moevit-quantized"
VERSION = 1
HEADER = "__header__"
#: The smallest input scale a GELU accepts (its constant ``c`` must stay below 2**22).
GELU_MIN_SCALE = 1.5e-3
_MIN_MAXABS = 1e-6  # a tensor that is always zero still gets a usable scale


@dataclass
class QuantizedModel:
    """A quantized MoE-ViT: its config, named arrays and source (see the module doc).

    ``source_sha256`` is the SHA-256 of the float weights it was quantized
    from, None if unknown.
    """

    config: ModelConfig
    arrays: dict
    source_sha256: str = None

    def __getitem__(self, name):
        try:
            return self.arrays[name]
        except KeyError:
            raise CheckpointError(f"Quantized model has no array {name!r}") from None

    def scale(self, tensor: str) -> float:
        """The float scale of the int8 tensor ``tensor``."""
        return float(self[f"scale.{tensor}"])

    def checksum(self) -> str:
        return _checksum(self.arrays)


def linear_names(config: ModelConfig) -> list:
    """Every linear layer of the quantized model, in execution order (all tasks)."""
    names = ["patch_embed.proj"]
    for i in range(config.depth):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj"]
        if config.is_moe(i):
            names += [f"blocks.{i}.mlp.gates.{t}" for t in range(len(config.tasks))]
            for e in range(config.experts):
                names += [f"blocks.{i}.mlp.experts.{e}.fc1", f"blocks.{i}.mlp.experts.{e}.fc2"]
        else:
            names += [f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    names += [f"heads.{t}" for t in range(len(config.tasks))]
    return names


# Calibration ----------------------------------------------------------------
class _Recorder:
    """Running ``max|a|`` per tensor name."""

    def __init__(self):
        self.maxabs = {}

    def __call__(self, name, value):
        value = float(value.detach().abs().max()) if value.numel() else 0.0
        self.maxabs[name] = max(self.maxabs.get(name, 0.0), value)


def calibrate(model, images, *, batch_size=32, progress=False) -> dict:
    """``max|a|`` of every quantized activation of ``model`` over ``images``.

    Every task runs on every image (the MoE gates and heads differ per task), on a
    float64 copy of ``model``: float32 kernels round differently on different CPUs (MKL
    on AMD and Intel, AVX2 and AVX-512), and the quantized integers follow the maxima's
    last bits (a LayerNorm's beta, a bias, a multiplier; on edge-moe hundreds of them and
    so its routing), so a float32 calibration gives another quantized model on another
    machine. float64's lie some 1e-15 apart and flip none; the maxima are returned rounded
    to float32, whose steps they almost never straddle, so the scales match too.

    Parameters
    ----------
    model : MoEViT
    images : Tensor (N, in_chans, H, W), N >= 1

    Returns
    -------
    dict
        Tensor name (as :mod:`moevit.model.integer.golden` names them) -> max abs value.
    """
    import torch
    from tqdm import tqdm

    if len(images) == 0:
        raise QuantizationError("Calibration needs at least one image, not 0")
    model.check_images(images)
    check_finite("Calibration images", images)
    config = model.config
    model = copy.deepcopy(model).double()
    images = images.double()
    record = _Recorder()
    hooks = []

    def output(name, pick=lambda out: out):
        return lambda module, args, out: record(name, pick(out))

    def qkv_hook(prefix):
        def hook(module, args, out):
            q, k, v = out.chunk(3, dim=-1)
            for part, value in zip("qkv", (q, k, v)):
                record(f"{prefix}.attn.{part}", value)

        return hook

    def block_hooks(i, block):
        prefix = f"blocks.{i}"
        state = {}

        def block_in(module, args):
            state["in"] = args[0]
            record(f"{prefix}.in", args[0])

        def attn_out(module, args, out):
            record(f"{prefix}.attn.proj.out", out)
            state["add1"] = state["in"] + out
            record(f"{prefix}.add1.out", state["add1"])

        yield block.register_forward_pre_hook(block_in)
        yield block.norm1.register_forward_hook(output(f"{prefix}.norm1.out"))
        yield block.attn.qkv.register_forward_hook(qkv_hook(prefix))
        yield block.attn.proj.register_forward_pre_hook(lambda m, args: record(f"{prefix}.attn.ctx", args[0]))
        yield block.attn.register_forward_hook(attn_out)
        yield block.norm2.register_forward_hook(output(f"{prefix}.norm2.out"))
        mlp = block.mlp
        if block.is_moe:
            for t, gate in enumerate(mlp.gates):
                yield gate.register_forward_hook(output(f"{prefix}.mlp.gates.{t}.out"))
            yield mlp.experts.fc1.register_forward_hook(output(f"{prefix}.mlp.experts.fc1.pre"))
            yield mlp.experts.act.register_forward_hook(output(f"{prefix}.mlp.experts.fc1.out"))
            yield mlp.experts.fc2.register_forward_hook(output(f"{prefix}.mlp.experts.fc2.out"))
        else:
            yield mlp.fc1.register_forward_hook(output(f"{prefix}.mlp.fc1.pre"))
            yield mlp.act.register_forward_hook(output(f"{prefix}.mlp.fc1.out"))
            yield mlp.fc2.register_forward_hook(output(f"{prefix}.mlp.fc2.out"))
        yield mlp.register_forward_hook(output(f"{prefix}.mlp.out"))
        yield block.register_forward_hook(output(f"{prefix}.add2.out", lambda out: out[0]))

    hooks.append(model.patch_embed.register_forward_hook(output("patch_embed.out")))
    hooks.append(model.blocks[0].register_forward_pre_hook(lambda m, args: record("embed.out", args[0])))
    for i, block in enumerate(model.blocks):
        hooks.extend(block_hooks(i, block))
    hooks.append(model.norm.register_forward_hook(output("norm.out")))
    for t, head in enumerate(model.heads):
        hooks.append(head.register_forward_hook(output(f"heads.{t}.out")))
    model.eval()
    try:
        starts = range(0, len(images), batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc="calibrate", disable=not progress):
                batch = images[start : start + batch_size]
                record("input", batch)
                for t in range(len(config.tasks)):
                    model(batch, t)
    finally:
        for hook in hooks:
            hook.remove()
    record("pos_embed", model.pos_embed[0, 1:])
    # float32's precision: the scales in the file then have the same bits too.
    return {name: float(np.float32(value)) for name, value in record.maxabs.items()}


# Quantization ---------------------------------------------------------------
def _act_scale(maxabs, name, floor=0.0):
    try:
        value = maxabs[name]
    except KeyError:
        raise QuantizationError(f"Calibration has no statistics for tensor {name!r}") from None
    return max(max(value, _MIN_MAXABS) / 127.0, floor)


def _pack(*values):
    return np.array([int(v) for v in values], dtype=np.int64)


def quantize_model(state, config: ModelConfig, maxabs: dict, *, source_sha256=None) -> QuantizedModel:
    """Quantize float parameters ``state`` (name -> numpy array, the float
    model's state dict) with the activation statistics ``maxabs``
    (:func:`calibrate`); ``source_sha256`` is recorded as the source."""
    arrays = {}
    scales = {}

    def scale_of(name, floor=0.0):
        if name not in scales:
            scales[name] = _act_scale(maxabs, name, floor)
        return scales[name]

    def linear(name, weight, bias, in_scale, out_scale, gelu_scales=None):
        weight = np.asarray(weight, np.float64).reshape(weight.shape[0], -1)
        w_scale = np.maximum(np.abs(weight).max(axis=1), _MIN_MAXABS) / 127.0
        acc_scale = in_scale * w_scale
        arrays[f"{name}.weight"] = _quantize_tensor(weight / w_scale[:, None], 1.0)
        bias = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
        arrays[f"{name}.bias"] = np.clip(np.floor(bias / acc_scale + 0.5), -(2**31), 2**31 - 1).astype(np.int32)
        pre_scale = out_scale if gelu_scales is None else gelu_scales[0]
        mult, shift = intops.quantize_multiplier(acc_scale / pre_scale)
        arrays[f"{name}.mult"] = mult.astype(np.int32)
        arrays[f"{name}.shift"] = shift.astype(np.int32)
        if gelu_scales is not None:
            b, c = intops.gelu_constants(pre_scale)
            g_mult, g_shift = intops.quantize_multiplier(pre_scale / (2 * c) / out_scale)
            arrays[f"{name}.gelu"] = _pack(b, c, g_mult, g_shift)

    def layernorm(name, in_scale, out_scale):
        eps, gamma, beta, shift = intops.layernorm_constants(
            in_scale, state[f"{name}.weight"], state[f"{name}.bias"], out_scale, config.layer_norm_eps
        )
        arrays[f"{name}.eps"] = np.array(eps, np.int64)
        arrays[f"{name}.gamma"] = gamma.astype(np.int32)
        arrays[f"{name}.beta"] = beta.astype(np.int64)
        arrays[f"{name}.shift"] = np.array(shift, np.int64)

    def residual(name, scale_a, scale_b, out_scale):
        arrays[name] = _pack(*intops.residual_constants(scale_a, scale_b, out_scale))

    def requant(name, real):
        mult, shift = intops.quantize_multiplier(real)
        arrays[name] = _pack(mult, shift)

    s_in = scale_of("input")
    s_pe = scale_of("patch_embed.out")
    linear("patch_embed.proj", state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], s_in, s_pe)
    s_pos = scale_of("pos_embed")
    s_x = scale_of("embed.out")
    pos = np.asarray(state["pos_embed"], np.float64)[0]
    arrays["pos_embed"] = _quantize_tensor(pos[1:], s_pos)
    arrays["cls"] = _quantize_tensor(np.asarray(state["cls_token"], np.float64)[0, 0] + pos[0], s_x)
    residual("embed.add", s_pe, s_pos, s_x)
    head_dim = config.head_dim
    for i in range(config.depth):
        p = f"blocks.{i}"
        s_n1 = scale_of(f"{p}.norm1.out")
        layernorm(f"{p}.norm1", s_x, s_n1)
        s_q, s_k, s_v = (scale_of(f"{p}.attn.{part}") for part in "qkv")
        qkv_out = np.repeat([s_q, s_k, s_v], config.dim)
        linear(f"{p}.attn.qkv", state[f"{p}.attn.qkv.weight"], state.get(f"{p}.attn.qkv.bias"), s_n1, qkv_out)
        arrays[f"{p}.attn.softmax"] = _pack(*intops.softmax_constants(s_q * s_k / math.sqrt(head_dim)))
        s_ctx = scale_of(f"{p}.attn.ctx")
        requant(f"{p}.attn.ctx", s_v * 2.0**-intops.PROB_FRAC / s_ctx)
        s_proj = scale_of(f"{p}.attn.proj.out")
        linear(f"{p}.attn.proj", state[f"{p}.attn.proj.weight"], state[f"{p}.attn.proj.bias"], s_ctx, s_proj)
        s_add1 = scale_of(f"{p}.add1.out")
        residual(f"{p}.add1", s_x, s_proj, s_add1)
        s_n2 = scale_of(f"{p}.norm2.out")
        layernorm(f"{p}.norm2", s_add1, s_n2)
        s_mlp = scale_of(f"{p}.mlp.out")
        if config.is_moe(i):
            gate_consts = []
            for t in range(len(config.tasks)):
                s_gate = scale_of(f"{p}.mlp.gates.{t}.out")
                linear(f"{p}.mlp.gates.{t}", state[f"{p}.mlp.gates.{t}.weight"], None, s_n2, s_gate)
                gate_consts.append(intops.softmax_constants(s_gate))
            arrays[f"{p}.mlp.gate.softmax"] = np.array(gate_consts, np.int64)
            s_pre = scale_of(f"{p}.mlp.experts.fc1.pre", GELU_MIN_SCALE)
            s_hid = scale_of(f"{p}.mlp.experts.fc1.out")
            s_out = scale_of(f"{p}.mlp.experts.fc2.out")
            for part in ("fc1.pre", "fc1.out", "fc2.out"):
                for e in range(config.experts):
                    scales[f"{p}.mlp.experts.{e}.{part}"] = scales[f"{p}.mlp.experts.{part}"]
            for e in range(config.experts):
                q = f"{p}.mlp.experts"
                linear(f"{q}.{e}.fc1", state[f"{q}.fc1.weight"][e], state[f"{q}.fc1.bias"][e], s_n2, s_hid, (s_pre,))
                linear(f"{q}.{e}.fc2", state[f"{q}.fc2.weight"][e], state[f"{q}.fc2.bias"][e], s_hid, s_out)
            requant(f"{p}.mlp.combine", s_out * 2.0**-intops.PROB_FRAC / s_mlp)
        else:
            s_pre = scale_of(f"{p}.mlp.fc1.pre", GELU_MIN_SCALE)
            s_hid = scale_of(f"{p}.mlp.fc1.out")
            linear(f"{p}.mlp.fc1", state[f"{p}.mlp.fc1.weight"], state[f"{p}.mlp.fc1.bias"], s_n2, s_hid, (s_pre,))
            # the dense block's mlp.out is fc2's output: one scale for both
            scales[f"{p}.mlp.fc2.out"] = s_mlp
            linear(f"{p}.mlp.fc2", state[f"{p}.mlp.fc2.weight"], state[f"{p}.mlp.fc2.bias"], s_hid, s_mlp)
        s_add2 = scale_of(f"{p}.add2.out")
        residual(f"{p}.add2", s_add1, s_mlp, s_add2)
        s_x = s_add2
    s_norm = scale_of("norm.out")
    layernorm("norm", s_x, s_norm)
    for t in range(len(config.tasks)):
        s_head = scale_of(f"heads.{t}.out")
        linear(f"heads.{t}", state[f"heads.{t}.weight"], state[f"heads.{t}.bias"], s_norm, s_head)
    for name, value in scales.items():
        arrays[f"scale.{name}"] = np.array(value, np.float64)
    return QuantizedModel(config, arrays, source_sha256)


def quantize(model, images, *, batch_size=32, progress=False) -> QuantizedModel:
    """Calibrate ``model`` on ``images`` and quantize it (see the module doc).

    Parameters
    ----------
    model : MoEViT
    images : Tensor (N, in_chans, H, W), N >= 1
        The calibration set.
    """
    from moevit.model.checkpoint import weights_sha256

    maxabs = calibrate(model, images, batch_size=batch_size, progress=progress)
    weights = model.state_dict()
    state = {name: value.detach().cpu().double().numpy() for name, value in weights.items()}
    return quantize_model(state, model.config, maxabs, source_sha256=weights_sha256(weights))


# The file -------------------------------------------------------------------
def _checksum(arrays) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_quantized(path, qmodel: QuantizedModel) -> Path:
    """Write ``qmodel`` to ``path`` (one ``.npz``, see the module doc)."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": qmodel.config.to_dict(),
        "checksum": _checksum(qmodel.arrays),
        "source_sha256": qmodel.source_sha256,
    }
    payload = dict(qmodel.arrays)
    payload[HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    return write_atomically(path, lambda partial: partial.write_bytes(buffer.getvalue()), "quantized model")


def _expected_layout(config: ModelConfig) -> dict:
    """Name -> shape of every integer array a model of ``config`` has."""
    d, ntasks = config.dim, len(config.tasks)
    layout = {"pos_embed": (config.patches, d), "cls": (d,), "embed.add": (3,)}

    def linear(name, out, inp, gelu=False):
        layout.update({f"{name}.weight": (out, inp), f"{name}.bias": (out,), f"{name}.mult": (out,), f"{name}.shift": (out,)})
        if gelu:
            layout[f"{name}.gelu"] = (4,)

    def norm(name):
        layout.update({f"{name}.eps": (), f"{name}.gamma": (d,), f"{name}.beta": (d,), f"{name}.shift": ()})

    linear("patch_embed.proj", d, config.patch_dim)
    for i in range(config.depth):
        p = f"blocks.{i}"
        norm(f"{p}.norm1")
        norm(f"{p}.norm2")
        linear(f"{p}.attn.qkv", 3 * d, d)
        linear(f"{p}.attn.proj", d, d)
        layout.update({f"{p}.attn.softmax": (2,), f"{p}.attn.ctx": (2,), f"{p}.add1": (3,), f"{p}.add2": (3,)})
        if config.is_moe(i):
            for t in range(ntasks):
                linear(f"{p}.mlp.gates.{t}", config.experts, d)
            layout[f"{p}.mlp.gate.softmax"] = (ntasks, 2)
            layout[f"{p}.mlp.combine"] = (2,)
            for e in range(config.experts):
                linear(f"{p}.mlp.experts.{e}.fc1", config.expert_hidden, d, gelu=True)
                linear(f"{p}.mlp.experts.{e}.fc2", d, config.expert_hidden)
        else:
            linear(f"{p}.mlp.fc1", config.mlp_hidden, d, gelu=True)
            linear(f"{p}.mlp.fc2", d, config.mlp_hidden)
    norm("norm")
    for t, task in enumerate(config.tasks):
        linear(f"heads.{t}", task.classes * config.patch * config.patch, d)
    return layout


def load_quantized(path, config: ModelConfig = None) -> QuantizedModel:
    """Read a quantized-model file, checking everything.

    Parameters
    ----------
    path : str or Path
    config : ModelConfig, optional
        The config the caller expects; a file of another is an error.

    Raises
    ------
    CheckpointError
        Missing, truncated or corrupt file, not a quantized model, another
        format version, a checksum mismatch, a config other than ``config``,
        or arrays that do not fit the file's config.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Quantized model {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    # numpy's reader of a damaged array header raises more types than these (tokenize's
    # TokenError for "'shape': (64, 192(, }"), as torch's does for a damaged checkpoint.
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, SyntaxError,
            tokenize.TokenError) as error:
        reason = first_line(error)
        raise CheckpointError(f"Quantized model {path} is corrupt or truncated: {reason}") from None
    try:
        header = json.loads(arrays.pop(HEADER).tobytes().decode())
    except KeyError:
        raise CheckpointError(f"File {path} is not a moevit quantized model (no header)") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"Quantized model {path} has a corrupt header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"File {path} is not a moevit quantized model")
    if header.get("version") != VERSION:
        raise CheckpointError(
            f"Quantized model {path} has format version {header.get('version')!r}; "
            f"this moevit reads version {VERSION}"
        )
    if header.get("checksum") != _checksum(arrays):
        raise CheckpointError(f"Quantized model {path} fails its checksum: the arrays were changed or damaged")
    source = header.get("source_sha256")
    if source is not None and not (isinstance(source, str) and re.fullmatch(r"[0-9a-f]{64}", source)):
        raise CheckpointError(f"Quantized model {path} has a corrupt header: its source_sha256 is not a SHA-256")
    try:
        found = ModelConfig.from_dict(header.get("config"))
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"Quantized model {path} holds an invalid model config: {error}") from None
    if config is not None:
        differences = config.differences(found)
        if differences:
            raise CheckpointError(
                f"Quantized model {path} holds model {found.name!r}, which does not match "
                f"{config.name!r}: {'; '.join(differences)}"
            )
    for name, shape in _expected_layout(found).items():
        if name not in arrays:
            raise CheckpointError(f"Quantized model {path} lacks {name!r} for model {found.name!r}")
        if arrays[name].shape != shape:
            raise CheckpointError(
                f"Quantized model {path} has {name} of shape {arrays[name].shape}; "
                f"model {found.name!r} needs {shape}"
            )
    return QuantizedModel(found, arrays, source)


def check_source(qmodel: QuantizedModel, state: dict, *, quantized, checkpoint) -> None:
    """A :class:`~moevit.errors.CheckpointError` unless ``qmodel`` (read from
    the file ``quantized``) was quantized from ``state``, the float weights
    of ``checkpoint``; a file that records no source is one too."""
    from moevit.model.checkpoint import weights_sha256

    if qmodel.source_sha256 is None:
        raise CheckpointError(
            f"Quantized model {quantized} does not record the checkpoint it was quantized from "
            f"(written before moevit recorded it); quantize again: moevit quantize --checkpoint {checkpoint}"
        )
    digest = weights_sha256(state)
    if digest != qmodel.source_sha256:
        raise CheckpointError(
            f"Quantized model {quantized} was quantized from other weights (sha256 {qmodel.source_sha256[:16]}) "
            f"than checkpoint {checkpoint} (sha256 {digest[:16]}); give the checkpoint it came from, "
            f"or quantize this one: moevit quantize --checkpoint {checkpoint}"
        )
