"""Checkpoints that carry their model config and a format version.

A checkpoint is one ``torch.save`` file holding a dict::

    {"format": "moevit-checkpoint", "version": 1,
     "config": ModelConfig.to_dict(), "state_dict": {...}, "extra": {...}}

``extra`` holds what the writer adds (training step, optimizer state, metrics);
it must be made of tensors, numbers, strings, lists and dicts, since files are
read with ``torch.load(weights_only=True)`` (no pickled code runs on loading).
Every way a file can be wrong is a :class:`~moevit.errors.CheckpointError`
that names the file and the problem.
"""

import hashlib
from pathlib import Path

import torch

from moevit.errors import CheckpointError, ConfigError, check_finite, first_line
from moevit.model.config import ModelConfig
from moevit.paths import write_atomically

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "read_checkpoint", "weights_sha256"]

FORMAT = "moevit-checkpoint"
VERSION = 1


def weights_sha256(state: dict) -> str:
    """SHA-256 (hex) of a state dict: each tensor's name, dtype, shape and bytes, in name order.

    Values may be tensors or numpy arrays (hashed as the tensor they convert
    to), so a graph's initializers hash like the parameters they came from.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = torch.as_tensor(state[name]).detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path, model, *, extra=None) -> Path:
    """Write ``model`` (a :class:`~moevit.model.moevit.MoEViT`) and ``extra`` to ``path``.

    The file is written beside its destination and renamed into place, so an
    interrupted save never leaves a truncated checkpoint. Returns the path.
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "extra": extra or {},
    }
    return write_atomically(path, lambda partial: torch.save(payload, partial), "checkpoint")


def read_checkpoint(path) -> dict:
    """The checked contents of a checkpoint file, without building a model.

    Returns
    -------
    dict
        ``config`` (a ModelConfig), ``state_dict``, ``extra``, ``version``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        reason = first_line(error)
        raise CheckpointError(f"Checkpoint {path} is corrupt or not a checkpoint: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"File {path} is not a moevit checkpoint")
    version = payload.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {version!r}; this moevit reads version {VERSION}"
        )
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (KeyError, ConfigError) as error:
        raise CheckpointError(f"Checkpoint {path} holds an invalid model config: {error}") from None
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"Checkpoint {path} has no state dict")
    return {
        "config": config,
        "state_dict": payload["state_dict"],
        "extra": payload.get("extra") or {},
        "version": version,
    }


def load_checkpoint(path, config=None):
    """Build the model a checkpoint holds.

    Parameters
    ----------
    path : str or Path
    config : ModelConfig, optional
        The config the caller expects; a checkpoint of another is an error.

    Returns
    -------
    model : MoEViT
        In eval mode, in the floating dtype the weights were saved in.
    meta : dict
        ``config``, ``extra`` (what :func:`save_checkpoint` was given) and ``version``.

    Raises
    ------
    CheckpointError
        Missing, corrupt, not a moevit checkpoint, another format version, a
        config other than ``config``, or weights that do not fit the config.
    NonFiniteError
        A weight is NaN or infinite.
    """
    from moevit.model.moevit import MoEViT

    contents = read_checkpoint(path)
    found = contents["config"]
    if config is not None:
        differences = config.differences(found)
        if differences:
            raise CheckpointError(
                f"Checkpoint {path} holds model {found.name!r}, which does not match "
                f"{config.name!r}: {'; '.join(differences)}"
            )
    state = contents["state_dict"]
    # The config is checked against the weights before a model is built: a config that
    # does not fit them (an edited depth or width) must not allocate what it says. Blocks
    # and task heads first (the modules a config multiplies), then every tensor's shape
    # on the meta device (no memory).
    for family, count in (("blocks", found.depth), ("heads", len(found.tasks))):
        held = {name.split(".")[1] for name in state if name.startswith(f"{family}.")}
        if len(held) != count:
            raise CheckpointError(
                f"Checkpoint {path} does not fit its config {found.name!r}: it holds "
                f"{len(held)} {family}, the config {count}")
    with torch.device("meta"):
        expected = MoEViT(found).state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has an unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"Checkpoint {path} does not fit its config {found.name!r}: it {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for name, value in expected.items():
        if tuple(state[name].shape) != tuple(value.shape):
            raise CheckpointError(
                f"Checkpoint {path} has {name} of shape {tuple(state[name].shape)}; "
                f"model {found.name!r} needs {tuple(value.shape)}"
            )
        check_finite(f"Checkpoint {path}: {name}", state[name])
    # Build the model in the dtype it was saved in (float64 training stays float64).
    model = MoEViT(found)
    model.to(state["pos_embed"].dtype).load_state_dict(state)
    meta = {"config": found, "extra": contents["extra"], "version": contents["version"]}
    return model.eval(), meta
