"""Atomic file writes: a killed run never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block succeeds.

    Args:
        path: the final file; its folder is created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).

    Returns:
        The open temporary file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is an existing folder: give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files a killed :func:`atomic_write` left under ``folder`` (``.<name>.*.tmp``).

    Only call it on a folder no other run is writing to (a resume of the same output).

    Args:
        folder: the output folder, searched recursively.

    Returns:
        How many files were removed.
    """
    stale = [path for path in Path(folder).rglob(".*.tmp") if path.is_file() and not path.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_json_atomic(path: str | Path, data: dict | list) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_write(path) as out:
        out.write(json.dumps(data, indent=2) + "\n")
