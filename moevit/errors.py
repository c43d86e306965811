"""Errors that reach the user: bad input or a missing tool.

The command line prints these as one line and exits with status 2; anything
else is a bug and keeps its traceback.
"""

__all__ = ["MoevitError", "ConfigError", "CheckpointError", "ToolNotFoundError"]


class MoevitError(Exception):
    """Base of every error caused by the user's input or environment."""


class ConfigError(MoevitError, ValueError):
    """A model, hardware or board configuration breaks a rule."""


class CheckpointError(MoevitError, ValueError):
    """A checkpoint, weight dump or model file is missing, corrupt or mismatched."""


class ToolNotFoundError(MoevitError, FileNotFoundError):
    """An external tool (Vivado, Vitis, a simulator, a board) is not installed."""
