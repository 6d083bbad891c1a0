"""Deterministic identity-disjoint splits of aligned faces, and verification pairs.

Roles (docs/design.md §1): the data owner's *private* identities (train/val images of the same
people), the attacker's *public* identities, and *verification* identities whose pairs
measure utility. The three identity sets are disjoint; everything follows from the seed.

Files written to the split folder (paths are relative to the aligned folder):
``private_train.csv``, ``private_val.csv`` (path, identity, label), ``public.csv`` and
``verification.csv`` (path, identity), ``pairs.csv`` (fold, path_a, path_b, same) and
``split.json`` (seed, params, counts, identities per role).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from fmix.data.align import aligned_rows
from fmix.io import atomic_write, write_json_atomic
from fmix.params import SplitParams

PAIR_FIELDS = ("fold", "path_a", "path_b", "same")


@dataclass(frozen=True)
class Pair:
    fold: int
    path_a: str
    path_b: str
    same: bool


@dataclass
class Split:
    private_train: list[tuple[str, str]]
    private_val: list[tuple[str, str]]
    public: list[tuple[str, str]]
    verification: list[tuple[str, str]]
    pairs: list[Pair]
    notes: dict

    def private_labels(self) -> dict[str, int]:
        """Class index of each private identity, in sorted name order."""
        return {name: index for index, name in enumerate(sorted({identity for _, identity in self.private_train}))}


def group_by_identity(items: list[tuple[str, str]]) -> dict[str, list[str]]:
    """(path, identity) pairs -> identity -> sorted paths."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path, identity in items:
        groups[identity].append(path)
    return {identity: sorted(paths) for identity, paths in sorted(groups.items())}


def split_identities(
    faces: dict[str, list[str]], params: SplitParams, exclude: set[str] = frozenset()
) -> dict[str, list[str]]:
    """Shuffle eligible identities with the seed and cut them into the three roles.

    Args:
        faces: identity -> aligned face paths.
        params: split parameters.
        exclude: identities reserved elsewhere (e.g. those of LFW's pairs).

    Returns:
        ``{"private": [...], "public": [...], "verification": [...]}`` sorted names.
    """
    eligible = sorted(name for name, paths in faces.items() if len(paths) >= params.min_images and name not in exclude)
    if len(eligible) < 3:
        raise ValueError(
            f"only {len(eligible)} identities have >= split.min_images={params.min_images} aligned faces; need at least 3"
        )
    random.Random(params.seed).shuffle(eligible)
    n_private = max(1, round(len(eligible) * params.private_fraction))
    n_public = round(len(eligible) * params.public_fraction)
    if n_private + n_public >= len(eligible):
        n_public = len(eligible) - n_private - 1
    return {
        "private": sorted(eligible[:n_private]),
        "public": sorted(eligible[n_private : n_private + n_public]),
        "verification": sorted(eligible[n_private + n_public :]),
    }


def extra_private_identities(faces: dict[str, list[str]], params: SplitParams, exclude: set[str]) -> list[str]:
    """Identities too small for the roles (fewer than ``min_images`` faces) that still train the owner's model.

    Args:
        faces: identity -> aligned face paths.
        params: ``private_extra_min_images`` (None: none) and ``min_images``.
        exclude: identities that already have a role (or appear in LFW's pairs).

    Returns:
        Sorted names with ``private_extra_min_images <= faces < min_images``.
    """
    if params.private_extra_min_images is None:
        return []
    return sorted(
        name
        for name, paths in faces.items()
        if params.private_extra_min_images <= len(paths) < params.min_images and name not in exclude
    )


def heldout_pairs(faces: dict[str, list[str]], identities: list[str], params: SplitParams) -> list[Pair]:
    """Matched and mismatched pairs from held-out identities, identity-disjoint across folds (as LFW View 2).

    Args:
        faces: identity -> aligned face paths.
        identities: the verification identities.
        params: ``folds``, ``pairs_per_fold`` and ``seed``.

    Returns:
        Up to ``pairs_per_fold`` pairs per fold, half matched and half mismatched; fewer when a
        fold's identities cannot supply enough distinct pairs.
    """
    if len(identities) < 2 * params.folds:
        raise ValueError(
            f"{len(identities)} verification identities cannot fill {params.folds} identity-disjoint folds "
            f"(need >= {2 * params.folds}); lower split.folds or raise the data size"
        )
    rng = random.Random(params.seed + 1)
    shuffled = list(identities)
    rng.shuffle(shuffled)
    half = params.pairs_per_fold // 2
    pairs = []
    for fold in range(params.folds):
        members = sorted(shuffled[fold :: params.folds])
        matched = [(a, b) for name in members for i, a in enumerate(faces[name]) for b in faces[name][i + 1 :]]
        pairs += [Pair(fold, a, b, True) for a, b in rng.sample(matched, min(half, len(matched)))]
        seen: set[tuple[str, str]] = set()
        for _ in range(50 * half):
            if len(seen) == half:
                break
            name_a, name_b = rng.sample(members, 2)
            seen.add(tuple(sorted((rng.choice(faces[name_a]), rng.choice(faces[name_b])))))
        pairs += [Pair(fold, a, b, False) for a, b in sorted(seen)]
    return pairs


def read_lfw_pairs(path: str | Path) -> list[tuple[int, str, int, str, int, bool]]:
    """Parse LFW's ``pairs.txt`` (View 2): a header ``folds<TAB>n``, then per fold n matched lines
    ``name i j`` and n mismatched lines ``name1 i name2 j``.

    Args:
        path: the pairs file.

    Returns:
        (fold, name_a, index_a, name_b, index_b, same) tuples, image indices 1-based as in LFW.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {path}")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        folds, per_fold = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as err:
        raise ValueError(f"{path}: first line must be '<folds> <pairs per fold>', got {lines[:1]}") from err
    if len(lines) - 1 != folds * 2 * per_fold:
        raise ValueError(f"{path}: expected {folds * 2 * per_fold} pair lines after the header, found {len(lines) - 1}")
    pairs = []
    for index, fields in enumerate(lines[1:]):
        fold = index // (2 * per_fold)
        if len(fields) == 3:
            pairs.append((fold, fields[0], int(fields[1]), fields[0], int(fields[2]), True))
        elif len(fields) == 4:
            pairs.append((fold, fields[0], int(fields[1]), fields[2], int(fields[3]), False))
        else:
            raise ValueError(f"{path}: line {index + 2} has {len(fields)} fields, expected 3 or 4")
    return pairs


def lfw_pairs(path: str | Path, faces: dict[str, list[str]]) -> tuple[list[Pair], int]:
    """LFW pairs mapped onto aligned faces (``<name>/<name>_<NNNN>.png``).

    Args:
        path: LFW ``pairs.txt`` (under ``$FMIX_DATA`` when it names the default data root: :mod:`fmix.data.root`).
        faces: identity -> aligned face paths.

    Returns:
        The pairs whose two faces were aligned, and how many pairs were dropped.
    """
    from fmix.data.root import resolve_data_path  # the default under ../shared/data moves under $FMIX_DATA

    available = {p for paths in faces.values() for p in paths}
    pairs, dropped = [], 0
    for fold, name_a, i, name_b, j, same in read_lfw_pairs(resolve_data_path(path)):
        a, b = f"{name_a}/{name_a}_{i:04d}.png", f"{name_b}/{name_b}_{j:04d}.png"
        if a in available and b in available:
            pairs.append(Pair(fold, a, b, same))
        else:
            dropped += 1
    return pairs, dropped


def make_split(aligned_dir: str | Path, params: SplitParams) -> Split:
    """Build the split from an alignment output folder.

    With ``pairs: lfw``, the identities appearing in LFW's pairs are kept out of the private
    and public roles so the identity sets stay disjoint.

    Args:
        aligned_dir: output folder of ``fmix align``.
        params: split parameters.

    Returns:
        The split.
    """
    faces = group_by_identity([(row.output, row.identity) for row in aligned_rows(aligned_dir)])
    notes: dict = {}
    if params.pairs == "lfw":
        pairs, dropped = lfw_pairs(params.lfw_pairs_file, faces)
        pair_identities = {p.split("/")[0] for pair in pairs for p in (pair.path_a, pair.path_b)}
        roles = split_identities(faces, params, exclude=pair_identities)
        roles["verification"] = sorted(pair_identities)
        notes["lfw_pairs_dropped_unaligned"] = dropped
    else:
        roles = split_identities(faces, params)
        pairs = heldout_pairs(faces, roles["verification"], params)
    rng = random.Random(params.seed + 2)
    train, val = [], []
    for name in roles["private"]:
        paths = list(faces[name])
        rng.shuffle(paths)
        n_val = max(1, round(len(paths) * params.val_fraction))
        val += [(p, name) for p in sorted(paths[:n_val])]
        train += [(p, name) for p in sorted(paths[n_val:])]
    extra = extra_private_identities(faces, params, exclude=set().union(*roles.values()))
    # Extra identities train only (validation stays on the main private identities, as before).
    train += [(p, name) for name in extra for p in faces[name]]
    notes["private_extra_identities"] = len(extra)
    return Split(
        private_train=train,
        private_val=val,
        public=[(p, name) for name in roles["public"] for p in faces[name]],
        verification=[(p, name) for name in roles["verification"] for p in faces.get(name, [])],
        pairs=pairs,
        notes=notes,
    )


def write_split(split: Split, out_dir: str | Path, params: SplitParams) -> dict:
    """Write the split files (see the module docstring) and return the ``split.json`` content.

    Args:
        split: the split.
        out_dir: destination folder.
        params: the parameters it was made with (recorded).

    Returns:
        The summary written to ``split.json``.
    """
    out_dir = Path(out_dir)
    labels = split.private_labels()
    _write_csv(
        out_dir / "private_train.csv",
        ("path", "identity", "label"),
        [(p, n, labels[n]) for p, n in split.private_train],
    )
    _write_csv(
        out_dir / "private_val.csv", ("path", "identity", "label"), [(p, n, labels[n]) for p, n in split.private_val]
    )
    _write_csv(out_dir / "public.csv", ("path", "identity"), split.public)
    _write_csv(out_dir / "verification.csv", ("path", "identity"), split.verification)
    _write_csv(out_dir / "pairs.csv", PAIR_FIELDS, [(p.fold, p.path_a, p.path_b, int(p.same)) for p in split.pairs])
    roles = {
        "private": sorted(labels),
        "public": sorted({n for _, n in split.public}),
        "verification": sorted({n for _, n in split.verification}),
    }
    summary = {
        "params": asdict(params),
        "counts": {
            "private_identities": len(roles["private"]),
            "private_train_images": len(split.private_train),
            "private_val_images": len(split.private_val),
            "public_identities": len(roles["public"]),
            "public_images": len(split.public),
            "verification_identities": len(roles["verification"]),
            "pairs_matched": sum(p.same for p in split.pairs),
            "pairs_mismatched": sum(not p.same for p in split.pairs),
        },
        "notes": split.notes,
        "identities": roles,
    }
    write_json_atomic(out_dir / "split.json", summary)
    return summary


def read_pairs(path: str | Path) -> list[Pair]:
    """Read ``pairs.csv`` written by :func:`write_split`."""
    with open(path, newline="") as handle:
        return [Pair(int(r["fold"]), r["path_a"], r["path_b"], r["same"] == "1") for r in csv.DictReader(handle)]


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
