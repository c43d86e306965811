"""The one build root, and the checks of the paths a command will write.

Commands check their outputs with :func:`output_file` and
:func:`output_folder` before the long work (training, evaluation,
quantization), so a bad path fails in a second with one clear line rather
than after the work, or with a traceback.
"""

import os
import tempfile
from pathlib import Path

from moevit.errors import OutputPathError

__all__ = ["build_dir", "output_file", "output_folder", "write_atomically", "BUILD_VARIABLE"]

BUILD_VARIABLE = "MOEVIT_BUILD"


def build_dir(*parts: str) -> Path:
    """Return ``$MOEVIT_BUILD/<parts>`` (default ``./build``), created if missing."""
    root = Path(os.environ.get(BUILD_VARIABLE) or "build")
    if root.exists() and not root.is_dir():
        named = f"{BUILD_VARIABLE}={root}" if os.environ.get(BUILD_VARIABLE) else f"The build folder {root}"
        raise OutputPathError(f"{named} is a file, not a folder")
    what = f"build folder ({BUILD_VARIABLE}={root})" if os.environ.get(BUILD_VARIABLE) else "build folder"
    path = output_folder(root.joinpath(*parts), what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"Cannot create the {what} {path}: {error.strerror}") from None
    return path


def _writable_ancestor(folder: Path, path: Path, what: str) -> Path:
    """The nearest existing folder at or above ``folder``, which must be writable
    for ``path`` (the output named in messages) to be written."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"Cannot write the {what} {path}: {ancestor} is a file, not a folder")
    try:  # the only sure test of writability (root ignores permission bits; read-only mounts)
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise OutputPathError(f"Cannot write the {what} {path}: {ancestor} is not writable ({error.strerror})") from None
    return ancestor


def output_file(path, what: str = "output file", suffixes=None) -> Path:
    """Check that ``path`` can be written as a file, creating nothing.

    Parameters
    ----------
    path : str or Path
    what : str
        The file's role in messages ("checkpoint", "prediction image").
    suffixes : sequence of str, optional
        The accepted extensions (lower case, with the dot).

    Raises
    ------
    OutputPathError
        ``path`` is a folder, a folder above it is a file or is not writable,
        or its extension is not one of ``suffixes``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"The {what} {path} is a folder; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"The {what} {path} has the extension {path.suffix or '(none)'!r}; "
            f"supported: {', '.join(sorted(suffixes))}"
        )
    _writable_ancestor(path.parent, path, what)
    return path


def output_folder(path, what: str = "output folder") -> Path:
    """Check that ``path`` is, or can be created as, a writable folder, creating nothing.

    Raises
    ------
    OutputPathError
        ``path`` or a folder above it is a file, or the place is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"The {what} {path} is a file, not a folder")
    _writable_ancestor(path, path, what)
    return path


def write_atomically(path, write, what: str = "output file") -> Path:
    """Write a file through ``write(partial_path)`` beside ``path``, then rename it into place.

    An interrupted or failed write never leaves a truncated ``path`` nor a
    ``*.partial`` file behind; an operating-system error becomes an
    :class:`~moevit.errors.OutputPathError` naming the file.
    """
    path = output_file(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    except OSError as error:
        raise OutputPathError(f"Cannot write the {what} {path}: {error.strerror or error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return path
