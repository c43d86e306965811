"""Errors that reach the user: bad input or a missing tool.

The command line prints these as one line and exits with status 2; anything
else is a bug and keeps its traceback.
"""

__all__ = ["MoevitError", "ConfigError", "CheckpointError", "ToolNotFoundError", "first_line"]


class MoevitError(Exception):
    """Base of every error caused by the user's input or environment."""


class ConfigError(MoevitError, ValueError):
    """A model, hardware or board configuration breaks a rule."""


class CheckpointError(MoevitError, ValueError):
    """A checkpoint, weight dump or model file is missing, corrupt or mismatched."""


class ToolNotFoundError(MoevitError, FileNotFoundError):
    """An external tool (Vivado, Vitis, a simulator, a board) is not installed."""


def first_line(error: BaseException) -> str:
    """A library's exception as a one-line reason to quote in a user-facing error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
