"""The data owner's ledger of released faces: kept outside every release and every input, never published.

One JSON line per event:

- ``release``: a release's header (id, folder, identity -> label numbering, the inputs' hash and,
  for a keyed release, a keyed check value of the key; ``format`` 2);
- ``shard``: the faces a shard is planned to hold (source paths and content hashes), written before
  any of its files, so that a killed run resumes with the same faces;
- ``released``: the content hashes a shard actually released (the constituents of its samples),
  written after its samples and before its completion marker; the latest entry of a shard wins
  (a shard redone after a kill releases other groups).

``fmix mask`` refuses a face that an earlier release already used, by content: only ``released``
hashes count (leftovers, faces too few to mix and shards never written are not released). Ledgers
of format 1 (no ``released`` entries) count every planned face, as they did.

Where it lives: one ledger per owner, whatever the input and output folders
(:func:`default_ledger_path`: ``$FMIX_LEDGER``, else ``$XDG_DATA_HOME/fmix/ledger.jsonl``, else
``~/.local/share/fmix/ledger.jsonl``), or ``--ledger``; never inside the input or the output.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fmix.io import atomic_write

LEDGER_ENV = "FMIX_LEDGER"
LEDGER_FORMAT = 2
_FIELDS = {  # kind -> field -> check
    "release": {"release": str, "out_dir": str, "labels": dict},
    "shard": {"release": str, "shard": int, "sources": list, "hashes": list},
    "released": {"release": str, "shard": int, "hashes": list},
}


def default_ledger_path() -> Path:
    """The owner's ledger: ``$FMIX_LEDGER``, else ``$XDG_DATA_HOME/fmix/ledger.jsonl`` (``~/.local/share``)."""
    if os.environ.get(LEDGER_ENV):
        return Path(os.environ[LEDGER_ENV]).expanduser().resolve()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (data_home / "fmix" / "ledger.jsonl").resolve()


def check_ledger_location(ledger: Path, in_root: Path, out_root: Path) -> None:
    """Refuse a ledger inside the input or the output folder, or under a path that is not a folder.

    Args:
        ledger: the resolved ledger path.
        in_root: the resolved input folder.
        out_root: the resolved output folder.

    Raises:
        ValueError: the ledger would be released with the data, or mixed into the inputs, or its
            folder is a file.
    """
    if ledger.is_dir():
        raise ValueError(f"the ledger {ledger} is a folder: give a file name (e.g. {ledger / 'ledger.jsonl'})")
    for folder, role in ((out_root, "output"), (in_root, "input")):
        if folder == ledger or folder in ledger.parents:
            raise ValueError(
                f"the ledger {ledger} must not be inside the {role} folder {folder}: it lists the released faces and is the owner's alone"
            )
    for parent in ledger.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"the ledger {ledger} cannot be written: {parent} is a file, not a folder")
            break


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes: what identifies a face in the ledger."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_entry(entry: object, where: str) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object with a 'kind', got {type(entry).__name__}")
    kind = entry.get("kind")
    if kind not in _FIELDS:
        raise ValueError(f"{where}: 'kind' must be one of {sorted(_FIELDS)}, got {kind!r}")
    for field, expected in _FIELDS[kind].items():
        value = entry.get(field)
        if type(value) is not expected:
            raise ValueError(f"{where}: a {kind!r} entry needs {field!r} of type {expected.__name__}, got {value!r}")
    for field in ("sources", "hashes"):
        if field in _FIELDS[kind] and not all(isinstance(v, str) for v in entry[field]):
            raise ValueError(f"{where}: {field!r} must be a list of strings")
    if kind == "shard" and len(entry["sources"]) != len(entry["hashes"]):
        raise ValueError(f"{where}: a 'shard' entry needs as many hashes as sources")
    return entry


class Ledger:
    """Released faces per release and shard.

    Args:
        path: the ledger file (created on first write; see :func:`check_ledger_location`).

    Raises:
        ValueError: a line is not a ledger entry (the message names the file and the line).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: list[dict] = []
        self._lines: list[str] | None = None
        if self.path.exists():
            if self.path.is_dir():
                raise ValueError(f"the ledger {self.path} is a folder, not a file")
            try:
                text = self.path.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"ledger {self.path} is not UTF-8 text: not a fmix ledger") from err
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"ledger {self.path}, line {number}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{where}: not JSON ({err.msg}); a damaged line is not repaired, restore the ledger from a copy"
                    ) from err
                self.entries.append(_check_entry(entry, where))

    def _append(self, entry: dict) -> None:
        # The whole file is rewritten (atomically: a kill never leaves half a line); each entry is
        # serialised once, not again at every append (a release appends two entries per shard).
        if self._lines is None or len(self._lines) != len(self.entries):
            self._lines = [json.dumps(e, sort_keys=True) + "\n" for e in self.entries]
        self.entries.append(entry)
        self._lines.append(json.dumps(entry, sort_keys=True) + "\n")
        with atomic_write(self.path) as out:
            out.writelines(self._lines)

    def header(self, release: str) -> dict | None:
        """The header entry of a release, or None."""
        return next((e for e in self.entries if e["release"] == release and e["kind"] == "release"), None)

    def start(
        self, release: str, out_dir: Path, labels: dict[str, int], inputs_hash: str, key_check: str | None = None
    ) -> None:
        """Record a new release: its folder, identity -> label numbering, inputs and key check value."""
        entry = {
            "kind": "release",
            "format": LEDGER_FORMAT,
            "release": release,
            "out_dir": str(out_dir),
            "labels": labels,
            "inputs_hash": inputs_hash,
        }
        self._append(entry | ({"key_check": key_check} if key_check else {}))

    def record_shard(self, release: str, shard: int, sources: list[str], hashes: list[str]) -> None:
        """Record the faces a shard is planned to hold (before its files are written)."""
        self._append({"kind": "shard", "release": release, "shard": shard, "sources": sources, "hashes": hashes})

    def record_released(self, release: str, shard: int, hashes: list[str]) -> None:
        """Record the faces a shard released (after its samples are written, before it is marked complete)."""
        self._append({"kind": "released", "release": release, "shard": shard, "hashes": hashes})

    def shards(self, release: str) -> dict[int, list[str]]:
        """Shard -> source paths assigned in a release."""
        return {e["shard"]: e["sources"] for e in self.entries if e["release"] == release and e["kind"] == "shard"}

    def released_hashes(self) -> dict[str, set[str]]:
        """Release -> content hashes it released (format 1 releases: every planned face)."""
        latest: dict[tuple[str, int], list[str]] = {}
        format_of = {e["release"]: e.get("format", 1) for e in self.entries if e["kind"] == "release"}
        for entry in self.entries:
            counts = entry["kind"] == "released" or (
                entry["kind"] == "shard" and format_of.get(entry["release"], 1) == 1
            )
            if counts:
                latest[(entry["release"], entry["shard"])] = entry["hashes"]
        found: dict[str, set[str]] = {}
        for (release, _), hashes in latest.items():
            found.setdefault(release, set()).update(hashes)
        return found

    def released_elsewhere(self, hashes: list[str], release: str) -> dict[str, str]:
        """Face hash -> the other release that released it, for each given face released before."""
        wanted, found = set(hashes), {}
        for other, released in sorted(self.released_hashes().items()):
            if other != release:
                for digest in wanted & released:
                    found.setdefault(digest, other)
        return found
