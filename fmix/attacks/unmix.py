"""Un-mixing attacks on a released folder of ``fmix mask`` (DESIGN 1 and 5).

The attacker holds the released files (shards, ``index.csv``, ``run.json``) and this
repository. Mixing is linear: a released sample is ``x_b = sum_j w_bj m(a_j) / ||w_b||``, so when
the same face is in several samples, and the attacker learns which, the masked faces ``m(a)``
follow by least squares; the attacker is then back to masking alone. Three ways to learn the
structure, each modelled on a release that uses each face in about k samples (one sample per
face, partners from its batch):

- (a) :func:`regenerate_secrets`: replay the random draws from a seed the release records, or
  a guessable one (0, 1, ...), keeping a shard when the regenerated weights and labels equal
  the published ones;
- (b) :func:`resolve_labels`: a partner's published label that only one row of the shard holds
  as its first (anchor) label names that row; rows whose partners are all named give exact
  equations;
- (c) :func:`match_structure`: without labels (after Carlini et al. 2021, "An Attack on
  InstaHide"): samples sharing a face correlate, so each sample's partners are picked among its
  most correlated samples, then least squares and re-picking by residual, alternately.

Each returns one estimate of a masked face per released sample (the sample itself where it has
nothing better). A release with one use per face and secret randomness defeats all three.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.freq import random_channel_permutation, sample_mixing
from fmix.masker.protection import MixingConfig

SEED_GUESSES = 16  # seeds an attacker tries when the release records none: 0 .. 15
WEIGHT_TOLERANCE = 0.0051  # published weights have 2 decimals (6 in an --insecure-reuse release)


@dataclass
class ReleasedShard:
    """One shard as the attacker reads it: samples, and per row the published labels and weights."""

    samples: Tensor
    labels: list[list[int]]
    weights: list[list[float]]


@dataclass
class Release:
    """A released folder: its ``run.json`` and shards."""

    folder: Path
    run: dict
    shards: dict[int, ReleasedShard]

    @property
    def recorded_seed(self) -> int | None:
        return self.run.get("randomness", {}).get("seed")


def read_release(folder: str | Path) -> Release:
    """Read a folder written by ``fmix mask``.

    Args:
        folder: the release (``run.json``, ``index.csv``, ``shard-*.npy``).

    Returns:
        The release.
    """
    folder = Path(folder)
    for name in ("run.json", "index.csv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a release of `fmix mask`: {name} is missing")
    rows: dict[int, list[tuple[int, list[int], list[float]]]] = {}
    with open(folder / "index.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(int(row["shard"]), []).append((int(row["row"]), [int(v) for v in row["labels"].split()], [float(v) for v in row["weights"].split()]))
    shards = {}
    for shard, entries in sorted(rows.items()):
        entries.sort()
        samples = torch.from_numpy(np.load(folder / f"shard-{shard:05d}.npy").astype(np.float32))
        if samples.shape[0] != len(entries):
            raise ValueError(f"{folder}: shard {shard} holds {samples.shape[0]} samples, index.csv lists {len(entries)}")
        shards[shard] = ReleasedShard(samples, [e[1] for e in entries], [e[2] for e in entries])
    return Release(folder, json.loads((folder / "run.json").read_text()), shards)


def _solve(system: Tensor, samples: Tensor) -> Tensor:
    """Least-squares (minimum-norm) masked faces ``m`` with ``system @ m = samples``, flattened per face."""
    flat = samples.reshape(samples.shape[0], -1).double()
    solution = torch.linalg.pinv(system.double()) @ flat  # small pseudo-inverse, then one matmul
    return solution.float().reshape(system.shape[1], *samples.shape[1:])


def _row_norms(weights: list[list[float]]) -> Tensor:
    return torch.tensor([float(np.linalg.norm(w)) for w in weights])


def regenerate_secrets(release: Release, mixing: MixingConfig, guesses: int = SEED_GUESSES) -> tuple[dict[int, Tensor], dict]:
    """Attack (a): replay the draws of a recorded or guessed seed, then solve each shard exactly.

    For every seed tried (the recorded one, else ``0 .. guesses - 1``) and shard, the generator
    ``seed * 1_000_003 + shard`` is replayed in the order of
    :meth:`fmix.masker.protection.Protection.protect` (policy noise, permutation, partners, weights,
    signs), with each row's first published label as its anchor's and the number of its
    weights as its k. A shard whose regenerated labels and weights equal the published ones is
    solved: ``x = W m`` with the regenerated ``W``.

    Args:
        release: the released folder.
        mixing: the masker's mixing configuration (white-box).
        guesses: seeds tried when none is recorded.

    Returns:
        (shard -> estimated masked face per sample, a record: seeds tried, shards matched).
    """
    seeds = [release.recorded_seed] if release.recorded_seed is not None else list(range(guesses))
    estimates, matched = {}, {}
    for shard, part in release.shards.items():
        estimates[shard] = part.samples.clone()
        batch = len(part.labels)
        if batch < 2:
            continue
        anchors = torch.tensor([labels[0] for labels in part.labels])
        k = torch.tensor([len(labels) for labels in part.labels]).clamp(max=mixing.k_max)
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + shard)
            torch.rand(batch, generator=generator)  # the policy noise
            if mixing.permute_channels:
                random_channel_permutation(batch, part.samples.shape[1], generator)
            sign_shape = tuple(part.samples.shape[1:]) if mixing.sign_flip else None
            draw = sample_mixing(anchors, k, mixing.k_max, mixing.weight_law, mixing.cap, sign_shape, generator)
            if not _draw_matches(draw.partners, draw.weights, anchors, part):
                continue
            samples = part.samples if draw.sign is None else part.samples * draw.sign
            system = torch.zeros(batch, batch, dtype=torch.float64)
            weights = draw.weights.double() / (draw.weights.double().norm(dim=1, keepdim=True) if mixing.rescale else 1.0)
            system.scatter_add_(1, draw.partners, weights)
            estimates[shard] = _solve(system, samples)
            matched[shard] = seed
            break
    return estimates, {"seeds_tried": len(seeds), "recorded_seed": release.recorded_seed, "shards_matched": len(matched), "shards": len(release.shards)}


def _draw_matches(partners: Tensor, weights: Tensor, anchors: Tensor, part: ReleasedShard) -> bool:
    for row, (labels, published) in enumerate(zip(part.labels, part.weights)):
        size = len(labels)
        if anchors[partners[row, :size]].tolist() != labels:
            return False
        if np.abs(weights[row, :size].numpy() - np.array(published)).max() > WEIGHT_TOLERANCE:
            return False
    return True


def _system(weights: list[list[float]], partners: list[list[int]], norms: np.ndarray) -> np.ndarray:
    batch = len(weights)
    system = np.zeros((batch, batch))
    for row, row_weights in enumerate(weights):
        for column, weight in zip([row] + partners[row], row_weights):
            system[row, column] += weight / norms[row]
    return system


def _decorrelation(gram: np.ndarray) -> float:
    """Sum of squared cosines between different estimated faces (0 for orthogonal faces)."""
    diagonal = np.maximum(np.diag(gram), 1e-12)
    cosines = gram / np.sqrt(np.outer(diagonal, diagonal))
    return float(np.square(cosines).sum() - np.square(np.diag(cosines)).sum())


def _alternate(samples: Tensor, weights: list[list[float]], candidates: list[list[list[int]]], rescale: bool, rounds: int, dims: int = 1024, restarts: int = 8) -> tuple[Tensor, int]:
    """Pick each row's partners among candidates so that the solved faces are least correlated.

    Any invertible ``W`` explains the samples (``x = W m``), so partners are picked by a prior:
    different people's masked faces, centred over the shard, are nearly orthogonal (on aligned
    LFW their mean absolute cosine is about 0.02), while a wrong partner leaves one face's
    trace in several estimates. Start: each partner is the candidate least correlated with what
    is left of the sample once it is taken out, ``x_b ||w_b|| - w_bj x_c``. Then local search:
    for every row and partner column, try each candidate and keep the one that most lowers the
    sum of squared cosines between the solved faces (each try is a rank-one update of ``W^-1``,
    in a random projection of ``dims`` coefficients), until a sweep changes nothing or
    ``rounds`` sweeps are done; for shards of up to 64 rows, ``restarts`` more searches from
    random partners, keeping the least correlated outcome. The faces are finally solved at full size.

    Returns:
        (estimated masked face per row, partner changes in the last sweep).
    """
    batch = samples.shape[0]
    flat = samples.reshape(batch, -1).double().numpy()
    centred = flat - flat.mean(axis=0)
    if centred.shape[1] > dims:
        projection = np.random.default_rng(0).standard_normal((centred.shape[1], dims)) / np.sqrt(dims)
        centred = centred @ projection
    norms = np.array([np.linalg.norm(w) for w in weights]) if rescale else np.ones(batch)
    # Start: with the samples themselves as the faces.
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    partners = []
    for row, row_weights in enumerate(weights):
        chosen = []
        for j in range(1, len(row_weights)):
            options = [c for c in candidates[row][j - 1] if c not in chosen] or [row]
            left = centred[row] * norms[row] - row_weights[j] * centred[options]
            cosine = np.abs((left * unit[options]).sum(axis=1)) / np.maximum(np.linalg.norm(left, axis=1), 1e-12)
            chosen.append(options[int(cosine.argmin())])
        partners.append(chosen)
    best_score, best_partners, changed = float("inf"), partners, 0
    rng = np.random.default_rng(0)
    restarts = restarts if batch <= 64 else 0  # large shards: one search (each sweep costs O(B^3))
    for start in range(restarts + 1):
        if start:  # random restarts: the local search has local minima
            partners = [list(rng.choice(candidates[row][0], size=len(w) - 1, replace=False)) if len(candidates[row][0]) >= len(w) - 1 else partners[row] for row, w in enumerate(weights)]
            partners = [[int(c) for c in p] for p in partners]
        partners = _gram_search(centred, weights, partners, candidates, norms, rounds)
        score, partners, changed = _local_search(centred, weights, partners, candidates, norms, rounds)
        if score < best_score:
            best_score, best_partners = score, partners
    solution = np.linalg.pinv(_system(weights, best_partners, norms)) @ flat
    return torch.from_numpy(solution).float().reshape(samples.shape), changed


def _gram_search(centred, weights, partners, candidates, norms, rounds) -> list[list[int]]:
    """Partners whose ``W W^T`` best matches the samples' Gram matrix (faces nearly orthogonal).

    With orthogonal faces of equal energy ``s``, ``x x^T = s W W^T``; a partner change moves one
    row and column of ``W W^T``, so each try costs O(B). Greedy sweeps until nothing improves.
    """
    batch = len(weights)
    target = centred @ centred.T
    system = _system(weights, partners, norms)
    product = system @ system.T
    energy = np.trace(target) / max(np.trace(product), 1e-12)
    off = ~np.eye(batch, dtype=bool)
    partners = [list(p) for p in partners]
    for _ in range(rounds * 4):
        changed = 0
        for row, row_weights in enumerate(weights):
            for j in range(1, len(row_weights)):
                current, a = partners[row][j - 1], row_weights[j] / norms[row]
                residual = (target[row] - energy * product[row]) * off[row]
                best, gain = None, 0.0
                for c in candidates[row][j - 1]:
                    if c == current or c in partners[row]:
                        continue
                    step = energy * a * (system[:, c] - system[:, current]) * off[row]
                    new_gain = float(np.square(residual).sum() - np.square(residual - step).sum())
                    if new_gain > gain + 1e-9:
                        best, gain = c, new_gain
                if best is not None:
                    delta = a * (system[:, best] - system[:, current])
                    system[row, best] += a
                    system[row, current] -= a
                    product[row] += delta
                    product[:, row] += delta
                    product[row, row] = system[row] @ system[row]
                    partners[row][j - 1] = best
                    changed += 1
        if changed == 0:
            break
    return partners


def _local_search(centred, weights, partners, candidates, norms, rounds) -> tuple[float, list[list[int]], int]:
    batch = len(weights)
    partners = [list(p) for p in partners]
    inverse = np.linalg.pinv(_system(weights, partners, norms))
    faces = inverse @ centred
    gram = faces @ faces.T
    score, changed = _decorrelation(gram), 0
    for _ in range(rounds):
        changed = 0
        for row, row_weights in enumerate(weights):
            for j in range(1, len(row_weights)):
                current = partners[row][j - 1]
                weight = row_weights[j] / norms[row]
                best = None
                for c in candidates[row][j - 1]:
                    if c == current or c in partners[row]:
                        continue
                    delta_m = weight * (faces[c] - faces[current])  # delta^T m: the row's change of W, times m
                    u = inverse[:, row]
                    denominator = 1.0 + weight * (u[c] - u[current])
                    if abs(denominator) < 1e-6:
                        continue
                    v = delta_m / denominator
                    mv = faces @ v
                    trial = gram - np.outer(u, mv) - np.outer(mv, u) + (v @ v) * np.outer(u, u)
                    trial_score = _decorrelation(trial)
                    if trial_score < score - 1e-9 and (best is None or trial_score < best[0]):
                        best = (trial_score, c, u.copy(), v, trial)
                if best is not None:
                    score, c, u, v, gram = best
                    delta = np.zeros(batch)
                    delta[c], delta[current] = weight, -weight
                    inverse = inverse - np.outer(u, delta @ inverse) / (1.0 + delta @ u)
                    faces = faces - np.outer(u, v)
                    partners[row][j - 1] = c
                    changed += 1
        if changed == 0:
            break
    return score, partners, changed


def resolve_labels(release: Release, rescale: bool = True, rounds: int = 6) -> tuple[dict[int, Tensor], dict]:
    """Attack (b): each partner is one of the rows whose anchor (first) label is the partner's label.

    A label that only one other row of the shard holds as its anchor's names the partner
    outright; otherwise the rows holding it are the candidates, decided as in
    :func:`_alternate`; then least squares over all rows.

    Args:
        release: the released folder.
        rescale: the release's mixes are divided by the weights' L2 norm (white-box).
        rounds: alternations.

    Returns:
        (shard -> estimated masked face per sample, a record: partners named outright).
    """
    estimates, named, total, unsettled = {}, 0, 0, 0
    for shard, part in release.shards.items():
        rows_of: dict[int, list[int]] = {}
        for row, labels in enumerate(part.labels):
            rows_of.setdefault(labels[0], []).append(row)
        candidates = []
        for row, labels in enumerate(part.labels):
            options = [[r for r in rows_of.get(label, []) if r != row] for label in labels[1:]]
            total += len(options)
            named += sum(len(o) == 1 for o in options)
            candidates.append([o or [r for r in range(len(part.labels)) if r != row] for o in options])
        estimates[shard], changed = _alternate(part.samples, part.weights, candidates, rescale, rounds)
        unsettled += changed
    return estimates, {"partners": total, "partners_named": named, "rows_changed_in_last_round": unsettled}


def match_structure(release: Release, rescale: bool = True, candidates: int = 8, rounds: int = 8) -> tuple[dict[int, Tensor], dict]:
    """Attack (c): without labels, partners among the most correlated samples, then least squares.

    Samples that share a face correlate (centred over the shard). Each row's partners are
    picked among its ``candidates`` most correlated other samples (:func:`_alternate`); its k
    and weights come from the published weights (the first is its anchor's).

    Args:
        release: the released folder.
        rescale: the release's mixes are divided by the weights' L2 norm (white-box).
        candidates: most correlated samples considered as partners.
        rounds: alternations.

    Returns:
        (shard -> estimated masked face per sample, a record: rows whose partners changed in
        the last round).
    """
    estimates, unsettled = {}, 0
    for shard, part in release.shards.items():
        batch = len(part.weights)
        if batch < 2:
            estimates[shard] = part.samples.clone()
            continue
        flat = part.samples.reshape(batch, -1).double()
        centred = torch.nn.functional.normalize(flat - flat.mean(dim=0), dim=1)
        correlation = (centred @ centred.T).fill_diagonal_(-float("inf"))
        shortlist = correlation.topk(min(candidates, batch - 1), dim=1).indices.tolist()
        options = [[shortlist[row]] * (len(w) - 1) for row, w in enumerate(part.weights)]
        estimates[shard], changed = _alternate(part.samples, part.weights, options, rescale, rounds)
        unsettled += changed
    return estimates, {"rows_changed_in_last_round": unsettled, "candidates": candidates, "rounds": rounds}


ATTACKS = {"regenerate": "a", "labels": "b", "structure": "c"}


def run_unmix_attacks(release: Release, mixing: MixingConfig) -> dict[str, tuple[dict[int, Tensor], dict]]:
    """All three attacks on one release: name -> (estimates per shard, record)."""
    return {
        "regenerate": regenerate_secrets(release, mixing),
        "labels": resolve_labels(release, mixing.rescale),
        "structure": match_structure(release, mixing.rescale),
    }
