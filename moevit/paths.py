"""The one build root: everything generated goes under it."""

import os
from pathlib import Path

__all__ = ["build_dir"]


def build_dir(*parts: str) -> Path:
    """Return ``$MOEVIT_BUILD/<parts>`` (default ``./build``), created if missing."""
    root = Path(os.environ.get("MOEVIT_BUILD", "build"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
