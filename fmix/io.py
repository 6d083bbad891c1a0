"""Atomic file writes: a killed run never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


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
    # The temporary name keeps a short head of the final one: a name near the file system's
    # 255 bytes must not push its temporary past them.
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_name_head(path.name)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _name_head(name: str, max_bytes: int = 64) -> str:
    """The longest prefix of ``name`` that fits in ``max_bytes`` of UTF-8."""
    return name.encode()[:max_bytes].decode(errors="ignore")


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


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        kind, kind.__name__
    )


def read_json(path: str | Path, what: str = "JSON file", expect: type = dict) -> Any:
    """Read a JSON file whose top level is of type ``expect``; every error names the file.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"run.json of fmix mask"``).
        expect: the type of the top-level value (``dict`` or ``list``).

    Returns:
        The parsed value.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not UTF-8, not JSON, or its top level is of another type.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, expected the {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: the {what} is not UTF-8 text") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: the {what} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(data, expect):
        raise ValueError(
            f"{path}: the {what} must hold a JSON {_json_kind(expect)}, got a JSON {_json_kind(type(data))}"
        )
    return data


def parse_json_field(text: str, field: str, source: str) -> Any:
    """Parse one JSON-encoded field (e.g. a value of an ONNX model's metadata), naming it on error.

    Args:
        text: the field's JSON text.
        field: its name.
        source: where it comes from (a file), for messages.

    Returns:
        The parsed value.

    Raises:
        ValueError: the text is not JSON.
    """
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{source}: its field {field!r} is not valid JSON ({err})") from err
