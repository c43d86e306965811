"""Weights from M³ViT checkpoints and Edge-MoE dumps, and back.

Two foreign namings of the same network map onto :class:`MoEViT`'s
(see :mod:`moevit.model.moevit` for ours):

M³ViT checkpoints (``m3vit``; VITA-Group/M3ViT ``train_fastmoe.py``)
    ``torch.save({"state_dict": model.state_dict(), ...})`` of its
    ``MultiTaskModel`` (``models/models.py``): the ViT under ``backbone.``
    (``models/vision_transformer_moe.py``, timm names: ``patch_embed.proj``,
    ``cls_token``, ``pos_embed``, ``blocks.{i}.norm1``, ``.attn.qkv``,
    ``.attn.proj``, ``.norm2``, dense ``.mlp.fc1/fc2``), in MoE blocks FastMoE's
    experts (``models/custom_moe_layer.py``: ``.mlp.experts.htoh4.weight``
    (E, hidden, dim), ``.htoh4.bias`` (E, hidden), ``.h4toh.weight``
    (E, dim, hidden), ``.h4toh.bias`` (E, dim)) and with ``--multi_gate True``
    one gate per task, ``.mlp.gate.{t}.w_gate`` (dim, E) — the transpose of
    our ``gates.{t}.weight`` — plus, for the ``noisy`` gate type,
    ``.mlp.gate.{t}.w_noise`` (dim, E) (``models/gate_funs/noisy_gate.py``;
    the ``noisy_vmoe`` gate has none). The gate rule follows from the file
    (:func:`m3vit_gate`): with ``w_noise``, M³ViT's ``noisy`` gate, whose
    weights are the softmax over the top-k logits (our ``"renorm"``); without,
    its ``noisy_vmoe`` gate (``models/gate_funs/noisy_gate_vmoe.py``: the
    softmax over all E logits, the top-k keep theirs; our ``"vmoe"``, the gate
    of M³ViT's published training command). The imported model's config
    carries that rule. Keys may carry DDP's ``module.``
    prefix; a checkpoint saved by several ranks (a folder of ``<rank>.pth``,
    ``utils/moe_utils.py``: rank 0 holds everything, the others only their
    experts) is merged by concatenating the experts in rank order. M³ViT's
    backbone has no final norm and its task decoders (``decoders.<task>.*``)
    are convolutional up-sampling heads, not ours. moevit's export keeps its
    final norm and heads beside M³ViT's ``state_dict``, under the top-level
    key ``moevit`` (``{"state_dict": {"norm.weight": ..., "heads.0.weight":
    ...}}``; M³ViT's loaders read only ``state_dict``), so a round trip is
    exact.

Edge-MoE dumps (``edge-moe``; sharc-lab/Edge-MoE ``weights/``, read by
``testbench/e2e.cpp`` and ``weights/scripts/prepare_for_onboard.py``)
    One raw little-endian float32 file per tensor, ``<name>.float32.bin``:
    ``patch_embed_weight`` (dim, C, p, p), ``patch_embed_bias`` (dim),
    ``pos_embed`` (tokens, dim) whose row 0 is the class token (the kernel
    starts token 0 from ``pos_embed[0]`` alone, ``src/conv.cpp``), and per
    block ``l{i}_``: ``qkv_weight`` (3·dim, dim), ``qkv_bias``,
    ``attn_proj_weight`` (dim, dim), ``attn_proj_bias``, ``norm1_weight``,
    ``norm1_bias``, ``norm2_weight``, ``norm2_bias``; dense blocks
    ``fc1_weight`` (mlp_hidden, dim), ``fc1_bias``, ``fc2_weight``,
    ``fc2_bias``; MoE blocks ``htoh4_weight`` (E, hidden, dim),
    ``htoh4_bias``, ``h4toh_weight`` (E, dim, hidden), ``h4toh_bias`` and
    ``w_gate_T_task{t}`` (E, dim), already our gate's orientation. The
    reference activations Edge-MoE keeps beside them (``image``,
    ``l{i}_x_post_*``) are ignored. Edge-MoE's accelerator stops before the
    final norm and the heads, so they are not in its dumps; moevit adds them
    as ``norm_weight``, ``norm_bias``, ``head_task{t}_weight`` and
    ``head_task{t}_bias`` when it exports, and reads them when present.
    Importing sets ``cls_token`` to zero and puts the class token in
    ``pos_embed[0]``: the same token 0, as Edge-MoE computes it (the outputs
    are equal bit for bit). Edge-MoE's gate is V-MoE's (``src/moe.cpp``,
    ``compute_gating``: ``exp(score - max) / sum`` over all E scores, kept
    for the top-k without renormalising): an imported dump's config has
    ``gate="vmoe"``, and a model of another rule is not exported.

A source that lacks a part of the model (a real M³ViT checkpoint or Edge-MoE
dump has no moevit heads) is refused unless a ``base`` model supplies it
(``moevit import --base CKPT``): a model with random heads is never made
silently. Every problem with the source is a
:class:`~moevit.errors.CheckpointError` naming the file or key and the
expected and found shapes.
"""

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moevit.errors import CheckpointError, check_finite, first_line
from moevit.model.config import CONFIGS, get_config
from moevit.model.moevit import MoEViT
from moevit.paths import write_atomically

__all__ = [
    "FORMATS",
    "EDGE_MOE_GATE",
    "m3vit_gate",
    "import_m3vit",
    "export_m3vit",
    "import_edge_moe",
    "export_edge_moe",
    "import_weights",
    "export_weights",
]

FORMATS = ("m3vit", "edge-moe")
EDGE_MOE_GATE = "vmoe"  # src/moe.cpp: softmax over all experts, top-k kept, not renormalised
DEFAULT_CONFIGS = {"edge-moe": "edge-moe"}  # m3vit: found from the checkpoint's shapes
BIN_SUFFIX = ".float32.bin"
MOEVIT_KEY = "moevit"  # the top-level key of moevit's additions in an exported M³ViT checkpoint


@dataclass(frozen=True)
class _Entry:
    """One tensor in a foreign naming: its name there, ours, and whether it is transposed."""

    theirs: str
    ours: str
    transposed: bool = False
    optional: bool = False


# M³ViT ----------------------------------------------------------------------
def _m3vit_entries(config):
    entries = [
        _Entry("backbone.patch_embed.proj.weight", "patch_embed.proj.weight"),
        _Entry("backbone.patch_embed.proj.bias", "patch_embed.proj.bias"),
        _Entry("backbone.cls_token", "cls_token"),
        _Entry("backbone.pos_embed", "pos_embed"),
    ]
    for i in range(config.depth):
        block = f"blocks.{i}"
        names = ["norm1.weight", "norm1.bias", "attn.qkv.weight"]
        names += ["attn.qkv.bias"] if config.qkv_bias else []
        names += ["attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias"]
        if not config.is_moe(i):
            names += ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
        entries += [_Entry(f"backbone.{block}.{name}", f"{block}.{name}") for name in names]
        if config.is_moe(i):
            for theirs, ours in (("htoh4", "fc1"), ("h4toh", "fc2")):
                for what in ("weight", "bias"):
                    entries.append(
                        _Entry(f"backbone.{block}.mlp.experts.{theirs}.{what}", f"{block}.mlp.experts.{ours}.{what}")
                    )
            for t in range(len(config.tasks)):
                entries.append(_Entry(f"backbone.{block}.mlp.gate.{t}.w_gate", f"{block}.mlp.gates.{t}.weight", True))
                if config.gate == "renorm":  # M³ViT's noisy gate; noisy_vmoe has no w_noise
                    entries.append(_Entry(f"backbone.{block}.mlp.gate.{t}.w_noise", f"{block}.mlp.noise.{t}.weight", True))
    return entries


def m3vit_gate(state) -> str:
    """The gate rule of an M³ViT state dict: ``"renorm"`` if it has ``w_noise``
    weights (the ``noisy`` gate), else ``"vmoe"`` (the ``noisy_vmoe`` gate)."""
    return "renorm" if any(key.endswith(".w_noise") for key in state) else "vmoe"


def _with_gate(config, gate):
    return config if config.gate == gate else config.replace(gate=gate)


_SHARED_GATE = re.compile(r"^backbone\.blocks\.(\d+)\.mlp\.gate\.w_gate$")


def _first_few(names, count=3) -> str:
    """The first ``count`` names, then how many more there are."""
    more = f" (and {len(names) - count} more)" if len(names) > count else ""
    return f"{', '.join(names[:count])}{more}"


def _tensors(data, what, path):
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{what} {path} holds no state dict of tensors")
    return OrderedDict(data)


def _load_torch(path, what):
    """``(state dict, moevit's additions)`` of a torch file (the additions may be empty)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike: a file we cannot read
        message = first_line(error)
        raise CheckpointError(f"Cannot read {what} {path}: {message}") from None
    additions = {}
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        if isinstance(data.get(MOEVIT_KEY), dict):
            additions = _tensors(data[MOEVIT_KEY].get("state_dict"), f"moevit's part of {what}", path)
        data = data["state_dict"]
    return _tensors(data, what, path), additions


def _read_m3vit(path):
    """The state dict and moevit's additions of a checkpoint file or of a folder saved by several ranks."""
    path = Path(path)
    if path.is_dir():
        ranks = sorted(
            (int(p.stem), p) for p in path.glob("*.pth") if p.stem.isdigit()
        )
        if not ranks or ranks[0][0] != 0:
            raise CheckpointError(f"M³ViT checkpoint folder {path} has no 0.pth")
        state, additions = _load_torch(ranks[0][1], "M³ViT checkpoint")
        for _, shard in ranks[1:]:
            # Ranks other than 0 hold only their own experts (utils/moe_utils.py).
            for key, value in _load_torch(shard, "M³ViT checkpoint")[0].items():
                if key not in state:
                    raise CheckpointError(f"M³ViT checkpoint shard {shard} has {key}, which 0.pth lacks")
                state[key] = torch.cat([state[key], value])
    elif path.is_file():
        state, additions = _load_torch(path, "M³ViT checkpoint")
    else:
        raise CheckpointError(f"M³ViT checkpoint {path} does not exist")
    if state and all(key.startswith("module.") for key in state):
        state = OrderedDict((key[len("module."):], value) for key, value in state.items())
    return state, additions


def _match_m3vit(state, config, source):
    """``{our key: tensor}`` from an M³ViT state dict, or a CheckpointError."""
    for key in state:
        match = _SHARED_GATE.match(key)
        if match:
            raise CheckpointError(
                f"M³ViT checkpoint {source} has one gate shared by all tasks ({key}); "
                "moevit needs one gate per task (M³ViT's --multi_gate True)"
            )
    tensors, used = {}, set()
    for entry in _m3vit_entries(config):
        expected = _our_shape(config, entry.ours)
        if entry.transposed:
            expected = expected[::-1]
        if entry.theirs not in state:
            if entry.optional:
                continue
            raise CheckpointError(
                f"M³ViT checkpoint {source} has no {entry.theirs} (config {config.name!r} expects shape {expected})"
            )
        value = state[entry.theirs]
        if tuple(value.shape) != expected:
            raise CheckpointError(
                f"M³ViT checkpoint {source}: {entry.theirs} has shape {tuple(value.shape)}; "
                f"config {config.name!r} expects {expected}"
            )
        tensors[entry.ours] = value.t() if entry.transposed else value
        used.add(entry.theirs)
    unknown = [key for key in state if key not in used and not key.startswith("decoders.")]
    if unknown:
        raise CheckpointError(
            f"M³ViT checkpoint {source} has keys config {config.name!r} does not know: {_first_few(unknown)}"
        )
    return tensors


def import_m3vit(path, config=None, *, base=None):
    """A :class:`MoEViT` with the weights of an M³ViT checkpoint.

    Parameters
    ----------
    path : str or Path
        A ``.pth``/``.pth.tar`` file, or a folder of per-rank ``<rank>.pth``.
    config : ModelConfig or str, optional
        The model's config; by default the one config in ``CONFIGS`` whose
        shapes the checkpoint fits.
    base : MoEViT, optional
        Supplies what the checkpoint does not hold (one of M³ViT's own
        training: the final norm and the heads). It is loaded in place and
        returned.

    Returns
    -------
    MoEViT
        Its config has the gate rule the checkpoint implies (:func:`m3vit_gate`).

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, a key is missing or of the wrong
        shape, a key is unknown, the checkpoint has one shared gate, or it
        lacks a part of the model and no ``base`` is given.
    """
    state, additions = _read_m3vit(path)
    gate = m3vit_gate(state)
    if config is None:
        config = _find_config(state, path, gate)
    config = _with_gate(get_config(config) if isinstance(config, str) else config, gate)
    tensors = _match_m3vit(state, config, path)
    for key, value in additions.items():
        if not key.startswith(("norm.", "heads.")) or key not in _shapes(config):
            raise CheckpointError(f"M³ViT checkpoint {path}: moevit's part has {key}, which config {config.name!r} lacks")
        _check_shape(value, _our_shape(config, key), f"M³ViT checkpoint {path}: moevit's {key}", config)
        tensors[key] = value
    return _load(tensors, config, base, f"M³ViT checkpoint {path}")


def _find_config(state, source, gate):
    errors = {}
    for name, config in CONFIGS.items():
        config = _with_gate(config, gate)
        try:
            _match_m3vit(state, config, source)
            return config
        except CheckpointError as error:
            errors[name] = str(error)
    pos = state.get("backbone.pos_embed")
    found = f"its backbone.pos_embed has shape {tuple(pos.shape)}" if pos is not None else "it has no backbone.pos_embed"
    raise CheckpointError(
        f"M³ViT checkpoint {source} fits none of the configs {sorted(CONFIGS)} ({found}); "
        "name one with --config to see the first mismatch"
    )


def export_m3vit(model, path):
    """Write ``model`` as an M³ViT checkpoint (``{"state_dict": ...}``).

    The backbone goes in M³ViT's naming. A ``"vmoe"`` model's gates are
    M³ViT's ``noisy_vmoe`` gates (no ``w_noise``); a ``"renorm"`` model's
    noise weights are written as ``w_noise`` (M³ViT's ``noisy`` gate). The
    final norm and the heads have no place in M³ViT's naming: they go under
    the top-level key ``moevit``, which M³ViT's loaders do not read, so that
    importing the file gives ``model`` back exactly.
    """
    state = model.state_dict()
    theirs = OrderedDict()
    for entry in _m3vit_entries(model.config):
        value = state[entry.ours]
        theirs[entry.theirs] = (value.t() if entry.transposed else value).contiguous().clone()
    ours = OrderedDict((key, value.clone()) for key, value in state.items() if key.startswith(("norm.", "heads.")))
    payload = {"epoch": 0, "backbone": "VisionTransformer_moe", "state_dict": theirs,
               MOEVIT_KEY: {"state_dict": ours}}
    return write_atomically(path, lambda partial: torch.save(payload, partial), "M³ViT checkpoint")


# Edge-MoE -------------------------------------------------------------------
def _edge_entries(config):
    """``(file stem, our key, optional)``; ``pos_embed`` is handled apart (class token)."""
    entries = [
        ("patch_embed_weight", "patch_embed.proj.weight", False),
        ("patch_embed_bias", "patch_embed.proj.bias", False),
    ]
    for i in range(config.depth):
        block = f"blocks.{i}"
        pairs = [("qkv_weight", "attn.qkv.weight")]
        pairs += [("qkv_bias", "attn.qkv.bias")] if config.qkv_bias else []
        pairs += [
            ("attn_proj_weight", "attn.proj.weight"),
            ("attn_proj_bias", "attn.proj.bias"),
            ("norm1_weight", "norm1.weight"),
            ("norm1_bias", "norm1.bias"),
            ("norm2_weight", "norm2.weight"),
            ("norm2_bias", "norm2.bias"),
        ]
        if config.is_moe(i):
            pairs += [
                ("htoh4_weight", "mlp.experts.fc1.weight"),
                ("htoh4_bias", "mlp.experts.fc1.bias"),
                ("h4toh_weight", "mlp.experts.fc2.weight"),
                ("h4toh_bias", "mlp.experts.fc2.bias"),
            ]
            pairs += [(f"w_gate_T_task{t}", f"mlp.gates.{t}.weight") for t in range(len(config.tasks))]
        else:
            pairs += [
                ("fc1_weight", "mlp.fc1.weight"),
                ("fc1_bias", "mlp.fc1.bias"),
                ("fc2_weight", "mlp.fc2.weight"),
                ("fc2_bias", "mlp.fc2.bias"),
            ]
        entries += [(f"l{i}_{theirs}", f"{block}.{ours}", False) for theirs, ours in pairs]
    # moevit's additions: what follows Edge-MoE's backbone (a V-MoE model has no noise weights).
    entries += [("norm_weight", "norm.weight", True), ("norm_bias", "norm.bias", True)]
    for t in range(len(config.tasks)):
        entries += [(f"head_task{t}_weight", f"heads.{t}.weight", True), (f"head_task{t}_bias", f"heads.{t}.bias", True)]
    return entries


_EDGE_REFERENCE = re.compile(r"^(image|l\d+_x_.+)$")  # Edge-MoE's test vectors, not weights


def _read_bin(path, shape, config):
    size = path.stat().st_size
    expected = int(np.prod(shape)) * 4
    if size != expected:
        raise CheckpointError(
            f"{path.name} has {size} bytes; config {config.name!r} expects shape {shape} "
            f"as float32 = {expected} bytes"
        )
    return torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape))


def import_edge_moe(folder, config="edge-moe", *, base=None):
    """A :class:`MoEViT` with the weights of an Edge-MoE dump folder.

    Parameters
    ----------
    folder : str or Path
        Holds the ``*.float32.bin`` files (Edge-MoE's ``weights/``).
    config : ModelConfig or str
        The model's config (Edge-MoE's model is ``edge-moe``); the imported
        model's has Edge-MoE's gate rule, :data:`EDGE_MOE_GATE`.
    base : MoEViT, optional
        Supplies what the dump lacks (Edge-MoE's own dumps: the final norm
        and the heads); loaded in place and returned.

    Raises
    ------
    CheckpointError
        The folder or a file is missing, a file has the wrong number of bytes,
        a ``.float32.bin`` file is not part of the naming, or the final norm
        or the heads are missing and no ``base`` is given.
    """
    folder = Path(folder)
    config = _with_gate(get_config(config) if isinstance(config, str) else config, EDGE_MOE_GATE)
    if not folder.is_dir():
        raise CheckpointError(f"Edge-MoE dump folder {folder} does not exist")
    tensors, used = {}, {"pos_embed"}
    for stem, ours, optional in _edge_entries(config):
        path = folder / f"{stem}{BIN_SUFFIX}"
        shape = _our_shape(config, ours)
        if not path.is_file():
            if optional:
                continue
            raise CheckpointError(
                f"Edge-MoE dump folder {folder} has no {path.name} (config {config.name!r}: {ours} {shape})"
            )
        tensors[ours] = _read_bin(path, shape, config)
        used.add(stem)
    pos_path = folder / f"pos_embed{BIN_SUFFIX}"
    if not pos_path.is_file():
        raise CheckpointError(
            f"Edge-MoE dump folder {folder} has no {pos_path.name} "
            f"(config {config.name!r}: pos_embed {(config.tokens, config.dim)})"
        )
    pos = _read_bin(pos_path, (config.tokens, config.dim), config)
    tensors["pos_embed"] = pos[None]
    tensors["cls_token"] = torch.zeros(1, 1, config.dim)  # already in pos_embed[0]
    unknown = sorted(
        path.name
        for path in folder.glob(f"*{BIN_SUFFIX}")
        if path.name[: -len(BIN_SUFFIX)] not in used and not _EDGE_REFERENCE.match(path.name[: -len(BIN_SUFFIX)])
    )
    if unknown:
        raise CheckpointError(
            f"Edge-MoE dump folder {folder} has files config {config.name!r} does not know: {_first_few(unknown)}"
        )
    return _load(tensors, config, base, f"Edge-MoE dump folder {folder}")


def export_edge_moe(model, folder, *, additions=True):
    """Write ``model`` as Edge-MoE's per-tensor float32 files in ``folder``.

    Parameters
    ----------
    model : MoEViT
    folder : str or Path
        Created if missing.
    additions : bool
        Also write moevit's ``norm_*`` and ``head_task{t}_*`` files (Edge-MoE
        itself reads neither), so that importing the folder gives ``model``
        back.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    CheckpointError
        The model's gate is not Edge-MoE's (its weights would compute another function there).
    """
    if model.config.gate != EDGE_MOE_GATE:
        raise CheckpointError(
            f"Edge-MoE's accelerator computes the {EDGE_MOE_GATE!r} gate; this model has gate "
            f"{model.config.gate!r}, whose outputs it would not reproduce"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    files = {stem: state[ours] for stem, ours, optional in _edge_entries(model.config) if additions or not optional}
    pos = state["pos_embed"][0].clone()
    pos[0] += state["cls_token"][0, 0]  # Edge-MoE's token 0 is pos_embed[0] alone
    files["pos_embed"] = pos
    for stem, value in files.items():
        value.detach().to(torch.float32).contiguous().numpy().astype("<f4").tofile(folder / f"{stem}{BIN_SUFFIX}")
    return folder


# Shared ---------------------------------------------------------------------
def _shapes(config) -> dict:
    """Name -> shape of every tensor of a model of ``config`` (built on the meta device)."""
    cache = _SHAPES.get(config)
    if cache is None:
        with torch.device("meta"):
            cache = {name: tuple(value.shape) for name, value in MoEViT(config).state_dict().items()}
        _SHAPES[config] = cache
    return cache


def _our_shape(config, key):
    """Shape of our parameter ``key`` for ``config``."""
    return _shapes(config)[key]


_SHAPES = {}


def _check_shape(value, expected, what, config):
    if tuple(value.shape) != tuple(expected):
        raise CheckpointError(f"{what} has shape {tuple(value.shape)}; config {config.name!r} expects {tuple(expected)}")


def _parts(keys) -> list:
    """The parts of the model that ``keys`` belong to, in words."""
    words = {"norm.": "the final norm", "heads.": "the heads"}
    parts = []
    for key in keys:
        part = next((word for prefix, word in words.items() if key.startswith(prefix)), None)
        part = part or key
        if part not in parts:
            parts.append(part)
    return parts


def _load(tensors, config, base, source):
    """A model of ``config`` with ``tensors``; what they lack comes from ``base``, or is an error."""
    missing = [key for key in _shapes(config) if key not in tensors]
    if base is None:
        if missing:
            raise CheckpointError(
                f"{source} lacks {', '.join(_parts(missing))} of moevit's model: take them from a "
                f"moevit checkpoint of config {config.name!r} (--base CKPT)"
            )
        base = MoEViT(config).eval()
    elif base.config != config:
        raise CheckpointError(
            f"The base model has config {base.config.name!r}; the weights are for {config.name!r}"
        )
    state = base.state_dict()
    for key, value in tensors.items():
        check_finite(f"{source}: {key}", value)
        state[key] = value.to(state[key].dtype).clone()
    base.load_state_dict(state, strict=True)
    return base


def import_weights(kind, source, config=None, *, base=None):
    """Import from ``kind`` (one of :data:`FORMATS`); see :func:`import_m3vit`, :func:`import_edge_moe`."""
    if kind == "m3vit":
        return import_m3vit(source, config, base=base)
    if kind == "edge-moe":
        return import_edge_moe(source, config or DEFAULT_CONFIGS["edge-moe"], base=base)
    raise CheckpointError(f"Unknown weight format {kind!r}; known formats are {list(FORMATS)}")


def export_weights(kind, model, destination):
    """Export to ``kind`` (one of :data:`FORMATS`); see :func:`export_m3vit`, :func:`export_edge_moe`."""
    if kind == "m3vit":
        return export_m3vit(model, destination)
    if kind == "edge-moe":
        return export_edge_moe(model, destination)
    raise CheckpointError(f"Unknown weight format {kind!r}; known formats are {list(FORMATS)}")
