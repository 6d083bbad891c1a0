"""The data owner's ledger of released faces: kept outside every release, never published.

One JSON line per event: a release's header (id, folder, label numbering) and each shard's
faces (source paths and content hashes). ``fmix mask`` reads it to refuse a face that an earlier
release already used (a face in two releases links their samples: the mixing is linear) and to
resume a release whose random parts were never recorded (which faces a finished shard holds).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fmix.io import atomic_write

LEDGER_NAME = "fmix-ledger.jsonl"


def default_ledger_path(out_dir: str | Path) -> Path:
    """The ledger beside the release folder (``<parent>/fmix-ledger.jsonl``), never inside it."""
    return Path(out_dir).resolve().parent / LEDGER_NAME


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes: what identifies a face in the ledger."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Ledger:
    """Released faces per release and shard.

    Args:
        path: the ledger file (created on first write; must lie outside the release folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: list[dict] = []
        if self.path.exists():
            try:
                self.entries = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise ValueError(f"ledger {self.path} is not a fmix ledger (line {err.lineno}: {err.msg})") from err

    def _append(self, entry: dict) -> None:
        self.entries.append(entry)
        with atomic_write(self.path) as out:
            out.writelines(json.dumps(e, sort_keys=True) + "\n" for e in self.entries)

    def header(self, release: str) -> dict | None:
        """The header entry of a release, or None."""
        return next((e for e in self.entries if e["release"] == release and e["kind"] == "release"), None)

    def start(self, release: str, out_dir: Path, labels: dict[str, int]) -> None:
        """Record a new release (its folder and identity -> label numbering)."""
        self._append({"kind": "release", "release": release, "out_dir": str(out_dir), "labels": labels})

    def record_shard(self, release: str, shard: int, sources: list[str], hashes: list[str]) -> None:
        """Record the faces a shard releases (before its files are written)."""
        self._append({"kind": "shard", "release": release, "shard": shard, "sources": sources, "hashes": hashes})

    def shards(self, release: str) -> dict[int, list[str]]:
        """Shard -> source paths already assigned in a release."""
        return {e["shard"]: e["sources"] for e in self.entries if e["release"] == release and e["kind"] == "shard"}

    def released_elsewhere(self, hashes: list[str], release: str) -> dict[str, str]:
        """Face hash -> the other release that used it, for each given face released before."""
        wanted, found = set(hashes), {}
        for entry in self.entries:
            if entry["kind"] == "shard" and entry["release"] != release:
                for digest in wanted.intersection(entry["hashes"]):
                    found.setdefault(digest, entry["release"])
        return found
