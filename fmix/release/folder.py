"""The release folder of ``fmix mask``: one writer and one reader, its schema checked on read.

Layout:

- ``shard-NNNNN.npy``: protected samples of batch N, (n, K, h, w) in float16 or float32, all finite;
- ``shard-NNNNN.json``: that batch's index rows and skipped files (written last: a shard with its
  JSON is complete, so a killed run resumes at the first missing one);
- ``index.csv``: ``name, shard, row, labels, weights``: the mixed label vector of each sample
  (labels and weights, space separated, in a random order);
- ``run.json``: what a resume must match (masker file and settings, options; never a seed or key
  unless ``--insecure-seed``); ``summary.json``; ``previews/*.png``; ``labels.json`` when asked.

The attacks on a release (:mod:`fmix.attacks.unmix`, :mod:`fmix.attacks.release`) and training on a
release read it through :func:`read_release_folder`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmix.io import atomic_write, read_json, write_json_atomic

INDEX_COLUMNS = ("name", "shard", "row", "labels", "weights")
RANDOMNESS_SOURCES = ("os", "key", "insecure_seed")
_RUN_FIELDS = {"release": str, "randomness": dict, "mix": bool, "one_use_per_face": bool}


def shard_path(folder: Path, shard: int, suffix: str) -> Path:
    """``folder/shard-NNNNN.<suffix>``."""
    return folder / f"shard-{shard:05d}.{suffix}"


@dataclass(frozen=True)
class IndexRow:
    """One released sample as ``index.csv`` lists it."""

    name: str
    shard: int
    row: int
    labels: list[int]
    weights: list[float]


def read_run(folder: str | Path) -> dict:
    """``run.json`` of a release, its fields checked.

    Raises:
        FileNotFoundError: no ``run.json``.
        ValueError: not a JSON object, or a field missing or of the wrong type.
    """
    path = Path(folder) / "run.json"
    run = read_json(path, "run.json of `fmix mask`")
    for field, kind in _RUN_FIELDS.items():
        if type(run.get(field)) is not kind:
            raise ValueError(
                f"{path}: the run.json of `fmix mask` needs {field!r} of type {kind.__name__}, got {run.get(field)!r}"
            )
    if run["randomness"].get("source") not in RANDOMNESS_SOURCES:
        raise ValueError(
            f"{path}: randomness.source must be one of {RANDOMNESS_SOURCES}, got {run['randomness'].get('source')!r}"
        )
    seed = run["randomness"].get("seed")
    if seed is not None and type(seed) is not int:
        raise ValueError(f"{path}: randomness.seed must be an integer, got {seed!r}")
    return run


def _numbers(text: str, kind: type, where: str, field: str) -> list:
    try:
        values = [kind(value) for value in text.split()]
    except ValueError as err:
        raise ValueError(f"{where}: {field} {text!r} are not {kind.__name__} values") from err
    if not values:
        raise ValueError(f"{where}: no {field}")
    if kind is float and not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise ValueError(f"{where}: {field} {text!r} must be finite numbers in [0, 1]")
    return values


def read_index(folder: str | Path) -> list[IndexRow]:
    """``index.csv`` of a release, every row checked (columns, integers, weights in [0, 1], one weight per label).

    Raises:
        FileNotFoundError: no ``index.csv``.
        ValueError: a missing column, a bad row (the message names its line), no row at all, or a
            (shard, row) listed twice.
    """
    path = Path(folder) / "index.csv"
    rows, seen = [], set()
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in INDEX_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not an index of `fmix mask`: it lacks the column(s) {', '.join(missing)}")
        for line, record in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            try:
                shard, row = int(record["shard"]), int(record["row"])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: shard and row must be integers") from err
            if shard < 0 or row < 0 or (shard, row) in seen:
                raise ValueError(f"{where}: shard {shard}, row {row} is negative or listed twice")
            labels = _numbers(record["labels"] or "", int, where, "labels")
            weights = _numbers(record["weights"] or "", float, where, "weights")
            if len(labels) != len(weights):
                raise ValueError(f"{where}: {len(labels)} labels but {len(weights)} weights")
            seen.add((shard, row))
            rows.append(IndexRow(record["name"], shard, row, labels, weights))
    if not rows:
        raise ValueError(f"{path} lists no sample: nothing was released")
    return rows


@dataclass
class ReleaseFolder:
    """A release as its readers see it: ``run.json`` and ``index.csv`` checked, shards loaded on demand."""

    path: Path
    run: dict
    rows: list[IndexRow]

    def shards(self) -> dict[int, list[IndexRow]]:
        """Shard -> its rows in row order."""
        grouped: dict[int, list[IndexRow]] = {}
        for row in self.rows:
            grouped.setdefault(row.shard, []).append(row)
        return {shard: sorted(rows, key=lambda r: r.row) for shard, rows in sorted(grouped.items())}

    def load_shard(self, shard: int, rows: int) -> np.ndarray:
        """The samples of a shard as float32, checked against the number of rows the index lists.

        Raises:
            FileNotFoundError: the shard file is missing.
            ValueError: not a (n, K, h, w) array of ``rows`` finite samples.
        """
        path = shard_path(self.path, shard, "npy")
        try:
            samples = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not a shard of `fmix mask`: {err}") from err
        if samples.ndim != 4 or samples.shape[0] != rows:
            raise ValueError(
                f"{path}: holds samples of shape {samples.shape}, index.csv lists {rows} rows of (K, h, w)"
            )
        if not np.isfinite(samples).all():
            raise ValueError(f"{path}: holds non-finite values")
        return samples.astype(np.float32)


def read_release_folder(folder: str | Path) -> ReleaseFolder:
    """Read a release of ``fmix mask`` (``run.json`` and ``index.csv`` validated; shards on demand).

    Args:
        folder: the release folder.

    Raises:
        FileNotFoundError: the folder, its ``run.json`` or its ``index.csv`` is missing.
        ValueError: either file fails its schema.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"release folder not found: {folder}")
    for name in ("run.json", "index.csv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a release of `fmix mask`: {name} is missing")
    return ReleaseFolder(folder, read_run(folder), read_index(folder))


class ReleaseWriter:
    """Writes a release folder: shards (checked finite), their records, the index and ``run.json``.

    Args:
        folder: the release folder (resolved).
        dtype: storage dtype of the shards, ``float16`` or ``float32``.
    """

    def __init__(self, folder: Path, dtype: str) -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.folder, self.dtype = folder, dtype

    def write_run(self, run: dict) -> None:
        write_json_atomic(self.folder / "run.json", run)

    def shard_done(self, shard: int) -> bool:
        """A shard is complete when its JSON (written last) reads back with its rows and its .npy exists."""
        try:
            part = json.loads(shard_path(self.folder, shard, "json").read_text())
        except (OSError, ValueError):
            return False
        complete = (
            isinstance(part, dict) and isinstance(part.get("rows"), list) and isinstance(part.get("skipped"), list)
        )
        return complete and shard_path(self.folder, shard, "npy").is_file()

    def write_samples(self, shard: int, samples: np.ndarray) -> None:
        """Write a shard's samples, after checking that every value is finite in the storage dtype.

        Args:
            shard: the shard's number.
            samples: its samples, in any floating dtype (rounded to the storage dtype here) or in it.

        Raises:
            ValueError: a value is NaN or infinite (nothing is written).
        """
        stored = samples.astype(self.dtype, copy=False)  # samples already in the storage dtype are not copied
        if not np.isfinite(stored).all():
            raise ValueError(
                f"shard {shard}: {int((~np.isfinite(stored)).sum())} protected values are not finite in {self.dtype} "
                "(check the masker's mixing noise and statistics): refusing to write them"
            )
        with atomic_write(shard_path(self.folder, shard, "npy"), "wb") as out:  # a kill leaves no half shard
            np.save(out, stored, allow_pickle=False)

    def write_record(self, shard: int, rows: list[dict], skipped: list[dict]) -> None:
        """Write the shard's JSON: its completion marker."""
        write_json_atomic(shard_path(self.folder, shard, "json"), {"rows": rows, "skipped": skipped})

    def read_records(self, shards: int) -> tuple[list[dict], list[dict]]:
        """(rows with their shard, skipped files) of shards 0 .. shards - 1."""
        rows, skipped = [], []
        for shard in range(shards):
            part = read_json(shard_path(self.folder, shard, "json"), "shard record")
            rows += [{**row, "shard": shard} for row in part["rows"]]
            skipped += part["skipped"]
        return rows, skipped

    def write_index(self, rows: list[dict]) -> None:
        with atomic_write(self.folder / "index.csv") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(INDEX_COLUMNS)
            for row in rows:
                writer.writerow(
                    [
                        row["name"],
                        row["shard"],
                        row["row"],
                        " ".join(map(str, row["labels"])),
                        " ".join(map(str, row["weights"])),
                    ]
                )
