"""Errors that reach the user: bad input or a missing tool.

The command line prints these as one line and exits with status 2; anything
else is a bug and keeps its traceback.
"""

__all__ = [
    "MoevitError",
    "ConfigError",
    "CheckpointError",
    "ToolNotFoundError",
    "OutputPathError",
    "NonFiniteError",
    "UsageError",
    "DeviceError",
    "first_line",
    "check_finite",
]


class MoevitError(Exception):
    """Base of every error caused by the user's input or environment."""


class ConfigError(MoevitError, ValueError):
    """A model, hardware or board configuration breaks a rule."""


class CheckpointError(MoevitError, ValueError):
    """A checkpoint, weight dump or model file is missing, corrupt or mismatched."""


class ToolNotFoundError(MoevitError, FileNotFoundError):
    """An external tool (Vivado, Vitis, a simulator, a board) is not installed."""


class OutputPathError(MoevitError, ValueError):
    """An output cannot be written where the user asked: a folder where a file
    is needed, a file where a folder is needed, an unwritable place, an
    unsupported file type."""


class NonFiniteError(MoevitError, ValueError):
    """A NaN or an infinity where only finite numbers make sense: input
    pixels, weights, a training run that diverged."""


class UsageError(MoevitError, ValueError):
    """Command-line options that contradict each other or would do nothing."""


class DeviceError(MoevitError, RuntimeError):
    """The accelerator stopped with an error code, never finished, or is not there.

    ``registers`` holds the status registers read when it happened (name ->
    value), so the message and a bug report can say where the run was.
    """

    def __init__(self, message: str, registers: dict | None = None):
        self.registers = dict(registers or {})
        if self.registers:
            message += " [" + ", ".join(f"{k}=0x{v:x}" for k, v in self.registers.items()) + "]"
        super().__init__(message)


def first_line(error: BaseException) -> str:
    """A library's exception as a one-line reason to quote in a user-facing error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_finite(what: str, values) -> None:
    """A :class:`NonFiniteError` naming the first NaN or infinity of ``values``.

    ``values`` is a numpy array or a torch tensor; the message reads
    ``"<what>: found nan at index (0, 2, 5, 7)"``.
    """
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor; torch is not imported here
        import torch

        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        values, finite = values.detach().cpu().double().numpy(), finite.cpu().numpy()
    else:
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating) and not np.issubdtype(values.dtype, np.complexfloating):
            return  # integers are always finite
        finite = np.isfinite(values)
        if finite.all():
            return
    index = tuple(int(i) for i in np.argwhere(~finite)[0])
    value = values[index]
    where = f" at index {index}" if index else ""
    raise NonFiniteError(f"{what}: found {value}{where}")
