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
  InstaHide"): samples sharing a face correlate, so the samples holding one face form a clique
  of the sharing graph; the cliques give the faces, peeling the faces held by one sample gives
  each sample's anchor face and thereby its partners (cycles of partners oriented by the
  decorrelation of the solved faces), then least squares.

Each returns one estimate of a masked face per released sample (the sample itself where it has
nothing better). A release with one use per face and secret randomness defeats all three.
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.freq import random_channel_permutation, sample_mixing
from fmix.masker.protection import MixingConfig, mix_noise

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
    signs, the mixes' noise), with each row's first published label as its anchor's and the number
    of its weights as its k. A shard whose regenerated labels and weights equal the published ones is
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
            samples = part.samples
            if mixing.noise > 0:  # drawn after the signs: replayed, it comes off exactly
                samples = samples - mix_noise(samples.shape, mixing.noise, generator).to(samples.dtype)
            samples = samples if draw.sign is None else samples * draw.sign
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


def _decorrelation(gram: np.ndarray) -> float | np.ndarray:
    """Sum of squared cosines between different estimated faces (0 for orthogonal faces).

    Shape:
        - gram: :math:`(..., B, B)`, one Gram matrix or a stack of them.
        - Output: a float, or :math:`(...)` for a stack.
    """
    diagonal = np.maximum(np.diagonal(gram, axis1=-2, axis2=-1), 1e-12)
    root = np.sqrt(diagonal)
    cosines = gram / (root[..., :, None] * root[..., None, :])
    scores = np.square(cosines).sum(axis=(-2, -1)) - np.square(np.diagonal(cosines, axis1=-2, axis2=-1)).sum(axis=-1)
    return float(scores) if gram.ndim == 2 else scores


def _gram_factor(rows: np.ndarray) -> np.ndarray:
    """A ``(B, B)`` matrix with the same Gram matrix as ``rows`` (B, D): every search step only needs inner products.

    Shape:
        - rows: :math:`(B, D)`.
        - Output: :math:`(B, \\min(B, D))`.
    """
    if rows.shape[1] <= rows.shape[0]:
        return rows
    values, vectors = np.linalg.eigh(rows @ rows.T)
    return vectors * np.sqrt(np.maximum(values, 0.0))


def _alternate(samples: Tensor, weights: list[list[float]], candidates: list[list[list[int]]], rescale: bool, rounds: int, restarts: int = 8) -> tuple[Tensor, int]:
    """Pick each row's partners among candidates so that the solved faces are least correlated.

    Any invertible ``W`` explains the samples (``x = W m``), so partners are picked by a prior:
    different people's masked faces, centred over the shard, are nearly orthogonal (on aligned
    LFW their mean absolute cosine is about 0.02), while a wrong partner leaves one face's
    trace in several estimates. Start: each partner is the candidate least correlated with what
    is left of the sample once it is taken out, ``x_b ||w_b|| - w_bj x_c``. Then local search:
    for every row and partner column, try each candidate and keep the one that most lowers the
    sum of squared cosines between the solved faces (each try is a rank-one update of ``W^-1``,
    on a factor of the samples' Gram matrix, since only inner products matter), until a sweep changes nothing or
    ``rounds`` sweeps are done; for shards of up to 64 rows, ``restarts`` more searches from
    random partners, keeping the least correlated outcome. The faces are finally solved at full size.

    Returns:
        (estimated masked face per row, partner changes in the last sweep).
    """
    batch = samples.shape[0]
    flat = samples.reshape(batch, -1).double().numpy()
    centred = flat - flat.mean(axis=0)
    centred = _gram_factor(centred)
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
                options = [c for c in candidates[row][j - 1] if c != current and c not in partners[row]]
                if not options:
                    continue
                steps = energy * a * (system[:, options] - system[:, [current]]) * off[row][:, None]  # one column per option
                gains = np.square(residual).sum() - np.square(residual[:, None] - steps).sum(axis=0)
                best = options[int(gains.argmax())] if gains.max() > 1e-9 else None
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


TRIAL_ELEMENTS = 4_000_000  # Gram matrices scored at once by the local search (32 MB)


def _updated_gram(gram: np.ndarray, faces: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Gram matrices of ``faces - u v_c^T`` for each row ``v_c`` of ``v``: rank-one updates of ``gram``.

    Shape:
        - gram: :math:`(B, B)`; faces: :math:`(B, D)`; u: :math:`(B,)`; v: :math:`(C, D)`.
        - Output: :math:`(C, B, B)`.
    """
    mv = v @ faces.T
    return gram - u[None, :, None] * mv[:, None, :] - mv[:, :, None] * u[None, None, :] + np.square(v).sum(axis=1)[:, None, None] * np.outer(u, u)


def _local_search(centred, weights, partners, candidates, norms, rounds) -> tuple[float, list[list[int]], int]:
    batch = len(weights)
    partners = [list(p) for p in partners]
    inverse = np.linalg.pinv(_system(weights, partners, norms))
    faces = inverse @ centred
    gram = faces @ faces.T
    score, changed = _decorrelation(gram), 0
    chunk = max(1, TRIAL_ELEMENTS // batch**2)
    for _ in range(rounds):
        changed = 0
        for row, row_weights in enumerate(weights):
            for j in range(1, len(row_weights)):
                current = partners[row][j - 1]
                weight = row_weights[j] / norms[row]
                options = np.array([c for c in candidates[row][j - 1] if c != current and c not in partners[row]], dtype=np.int64)
                u = inverse[:, row]
                denominators = 1.0 + weight * (u[options] - u[current])
                invertible = np.abs(denominators) >= 1e-6
                options, denominators = options[invertible], denominators[invertible]
                if len(options) == 0:
                    continue
                # All options at once: the row's change of W times m, then the rank-one updates of the Gram matrix.
                v = weight * (faces[options] - faces[current]) / denominators[:, None]
                trial_scores = np.concatenate([_decorrelation(_updated_gram(gram, faces, u, v[i : i + chunk])) for i in range(0, len(v), chunk)])
                pick = int(trial_scores.argmin())
                best = (float(trial_scores[pick]), int(options[pick]), u.copy(), v[pick], _updated_gram(gram, faces, u, v[pick : pick + 1])[0]) if trial_scores[pick] < score - 1e-9 else None
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


SHARING_THRESHOLD = 0.05  # cosine above which two samples share a face (different people: |cos| < 0.05)
MEAN_FACE_SAMPLES = 128  # shards this large centre on a least-squares mean face


def match_structure(release: Release, rescale: bool = True, threshold: float = SHARING_THRESHOLD) -> tuple[dict[int, Tensor], dict]:
    """Attack (c): without labels, the faces the samples share, then least squares (after Carlini et al.).

    Per shard: two samples share a face when their centred cosine exceeds ``threshold`` (the
    masked faces of different people are nearly orthogonal, :func:`sharing_graph`). Each face
    is then a clique of samples, and every sample lies in as many cliques as it has constituents
    (the line-graph structure of the release, :func:`face_cliques`). Each sample is the anchor
    of exactly one face: faces held by one sample are its anchor, and peeling those leaves
    decides the rest except around cycles of partners, whose two orientations are told apart by
    the solved faces' decorrelation (:func:`orient_faces`). Triangles of samples that may be a
    3-cycle instead of one face are tried both ways, the same way. A sample's partners are the
    anchors of its other faces (its k and weights come from the published weights, the first
    being its anchor's); a sample with no face shared is left as it is. Then least squares.

    Args:
        release: the released folder.
        rescale: the release's mixes are divided by the weights' L2 norm (white-box).
        threshold: smallest centred cosine taken as a shared face, in (0, 1); raised to five
            times the shard's robust spread of cosines where that is larger.

    Returns:
        (shard -> estimated masked face per sample, a record: faces found, rows linked, cycles
        oriented, triangles tried, seconds).

    Raises:
        ValueError: if ``threshold`` is not in (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"Expected threshold in (0, 1), got {threshold}")
    start = time.perf_counter()
    estimates, record = {}, {"faces": 0, "rows": 0, "rows_linked": 0, "cycles_oriented": 0, "triangles_tried": 0}
    for shard, part in release.shards.items():
        batch = len(part.weights)
        record["rows"] += batch
        if batch < 2:
            estimates[shard] = part.samples.clone()
            continue
        solved, info = _unmix_shard(part.samples, part.weights, rescale, threshold)
        estimates[shard] = solved
        for key in ("faces", "rows_linked", "cycles_oriented", "triangles_tried"):
            record[key] += info[key]
    record["threshold"] = threshold
    record["seconds"] = time.perf_counter() - start
    return estimates, record


def _unmix_shard(samples: Tensor, weights: list[list[float]], rescale: bool, threshold: float) -> tuple[Tensor, dict]:
    """Attack (c) on one shard: faces as cliques, anchors by peeling, partners, least squares."""
    batch = samples.shape[0]
    cosines, used, gram = sharing_graph(samples, weights, rescale, threshold)
    adjacency = [set(np.flatnonzero(cosines[b] > used).tolist()) for b in range(batch)]
    nearby = [list(np.argsort(-cosines[b])[: int((cosines[b] > 0.6 * used).sum())]) for b in range(batch)]
    sizes = [len(w) for w in weights]
    norms = np.array([np.linalg.norm(w) for w in weights]) if rescale else np.ones(batch)

    def score(partners: list[list[int]]) -> float:
        system = _link_system(weights, partners, norms)
        left = _solve_linked(system, gram)  # W^-1 G W^-T: the Gram matrix of the solved faces
        return _decorrelation(_solve_linked(system, left.T))

    triangles = _even_triangles(adjacency)
    if len(triangles) <= 3:
        hypotheses = [frozenset(c) for n in range(len(triangles) + 1) for c in itertools.combinations(triangles, n)]
    else:  # every even triangle a 3-cycle, then each one in turn a face
        hypotheses = [frozenset(triangles)] + [frozenset(triangles) - {t} for t in triangles]
    best = None
    for cycles in hypotheses:
        faces = face_cliques(adjacency, sizes, cycles)
        partners, oriented = orient_faces(faces, batch, score)
        partners = _complete(partners, sizes, nearby, score)
        value = score(partners)
        if best is None or value < best[0]:
            best = (value, partners, len(faces), oriented)
    _, partners, found, oriented = best
    partners = _settle_triangles(partners, triangles, sizes, score)
    flat = samples.reshape(batch, -1).double().numpy()
    solution = _solve_linked(_link_system(weights, partners, norms), flat)
    info = {"faces": found, "rows_linked": sum(bool(p) for p in partners), "cycles_oriented": oriented, "triangles_tried": len(triangles)}
    return torch.from_numpy(solution).float().reshape(samples.shape), info


def _solve_linked(system: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """``system^-1 samples`` (least squares where the system is singular)."""
    try:
        return np.linalg.solve(system, samples)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(system, samples, rcond=None)[0]


def _settle_triangles(partners: list[list[int]], triangles: list[frozenset[int]], sizes: list[int], score) -> list[list[int]]:
    """Try every partner of a triangle's three rows among the other two (and its own): the best by ``score``.

    Around a triangle of samples the cliques do not say which faces are shared (one face of
    three samples, a 3-cycle of partners, a 2-cycle with a third sample), so its rows of
    ``k = 2`` are decided jointly, each taking one of the triangle's other samples or keeping
    its partner (at most 27 tries per triangle).
    """
    partners = [list(p) for p in partners]
    for triangle in triangles:
        rows = sorted(triangle)
        if any(sizes[row] != 2 for row in rows):
            continue
        choices = [list(dict.fromkeys(partners[row][:1] + [c for c in rows if c != row])) for row in rows]
        best = None
        for pick in itertools.product(*choices):
            trial = list(partners)
            for row, c in zip(rows, pick):
                trial[row] = [c]
            value = score(trial)
            if best is None or value < best[0]:
                best = (value, trial)
        partners = best[1]
    return partners


def _link_system(weights: list[list[float]], partners: list[list[int]], norms: np.ndarray) -> np.ndarray:
    """``W`` with row ``b`` the anchor's weight at ``b`` and the partners' at theirs; a row without partners is the sample itself."""
    batch = len(weights)
    system = np.zeros((batch, batch))
    for row, (row_weights, row_partners) in enumerate(zip(weights, partners)):
        if not row_partners:
            system[row, row] = 1.0
            continue
        for column, weight in zip([row] + list(row_partners), row_weights):
            system[row, column] += weight / norms[row]
    return system


def _complete(partners: list[list[int]], sizes: list[int], nearby: list[list[int]], score) -> list[list[int]]:
    """Give every linked row ``k - 1`` partners in the order of its weights, choosing by ``score``.

    A row with more partner faces than weights keeps the best ones; one with fewer (its face
    cliques were not all found) takes the best of its most correlated samples; a row with
    several partners tries their orders (up to three partners). A row with no correlated
    sample stays unlinked.
    """
    partners = [list(p) for p in partners]
    for row, size in enumerate(sizes):
        want = size - 1
        if len(partners[row]) == want or not nearby[row]:
            continue
        pool = list(dict.fromkeys(partners[row] + [int(c) for c in nearby[row]]))
        keep = partners[row][:want] if len(partners[row]) < want else []
        while len(keep) < want and len(keep) < len(pool):
            options = [c for c in pool if c not in keep]
            scores = [score(partners[:row] + [keep + [c]] + partners[row + 1 :]) for c in options]
            keep.append(options[int(np.argmin(scores))])
        partners[row] = keep
    for row, size in enumerate(sizes):
        if 2 <= len(partners[row]) <= 3:
            orders = [list(o) for o in itertools.permutations(partners[row])]
            partners[row] = min(orders, key=lambda o: score(partners[:row] + [o] + partners[row + 1 :]))
    return partners


def sharing_graph(samples: Tensor, weights: list[list[float]], rescale: bool = True, threshold: float = SHARING_THRESHOLD) -> tuple[np.ndarray, float, np.ndarray]:
    """Which samples share a face: cosines of the samples less the mean face, thresholded.

    A sample is ``x_b = sum_j w_bj f_j / ||w_b||``; with faces ``f = m + g`` (``m`` the mean
    face), ``x_b - r_b m = sum_j w_bj g_j / ||w_b||`` where ``r_b`` is the sample's sum of weights
    over ``||w_b||``. The deviations ``g`` of different people's masked faces are nearly
    orthogonal (on aligned LFW a cosine of about 0.01, rarely above 0.05), so a clearly higher
    cosine between two samples means a shared face. With at least
    :data:`MEAN_FACE_SAMPLES` samples ``m`` is fitted by least squares (``x ~ r m``); a smaller
    shard would bias that fit towards each sample itself, so there only the mean face's energy
    ``|m|^2`` is removed from the Gram matrix, as the median over pairs of ``G_bc / (r_b r_c)``
    (most pairs share nothing). The threshold is raised to the cosines' median plus five robust
    standard deviations (1.4826 median absolute deviations) where that is higher.

    Args:
        samples: the shard's released samples.
        weights: each sample's published weights.
        rescale: mixes are divided by the weights' L2 norm.
        threshold: smallest cosine taken as sharing.

    Shape:
        - samples: :math:`(B, K, h, w)`.
        - Output: cosines and Gram matrix :math:`(B, B)` (cosines with a zero diagonal).

    Returns:
        (cosines, the threshold used, the Gram matrix of the samples less the mean face).

    Raises:
        ValueError: if the number of weight lists is not the number of samples.
    """
    batch = samples.shape[0]
    if batch != len(weights):
        raise ValueError(f"Expected one weight list per sample, got {batch} samples and {len(weights)} lists")
    flat = samples.reshape(batch, -1).double().numpy()
    sums = np.array([sum(w) / (np.linalg.norm(w) if rescale else 1.0) for w in weights])
    off = ~np.eye(batch, dtype=bool)
    if batch >= MEAN_FACE_SAMPLES:
        centred = flat - np.outer(sums, sums @ flat / float(sums @ sums))
        gram = centred @ centred.T
    else:
        gram = flat @ flat.T
        energy = float(np.median((gram / np.outer(sums, sums))[off])) if batch > 1 else 0.0
        gram = gram - energy * np.outer(sums, sums)
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-12))
    cosines = gram / np.outer(scale, scale)
    np.fill_diagonal(cosines, 0.0)
    if batch > 1:
        values = cosines[off]
        centre = float(np.median(values))
        threshold = max(threshold, centre + 5.0 * 1.4826 * float(np.median(np.abs(values - centre))))
    return cosines, threshold, gram


def _maximal_cliques(nodes: set[int], adjacency: list[set[int]]) -> list[frozenset[int]]:
    """Maximal cliques of the graph induced on ``nodes`` (Bron-Kerbosch with pivoting)."""
    found: list[frozenset[int]] = []

    def expand(clique: frozenset[int], pending: set[int], done: set[int]) -> None:
        if not pending and not done:
            found.append(clique)
            return
        pivot = max(pending | done, key=lambda v: len(adjacency[v] & pending))
        for v in list(pending - adjacency[pivot]):
            expand(clique | {v}, pending & adjacency[v], done & adjacency[v])
            pending = pending - {v}
            done = done | {v}

    if nodes:
        expand(frozenset(), set(nodes), set())
    return found


def _even_triangles(adjacency: list[set[int]]) -> list[frozenset[int]]:
    """Triangles no other sample touches once or thrice: possibly a 3-cycle of partners, not one face.

    Three samples sharing one face are touched by the other samples of that face (all three)
    and by those sharing one sample's other face (one); a 3-cycle ``a -> b -> c -> a`` is a
    triangle too, whose every other neighbour shares one of its faces, i.e. two of its samples.
    """
    triangles = []
    for a, around in enumerate(adjacency):
        for b in around:
            if b <= a:
                continue
            for c in around & adjacency[b]:
                if c <= b:
                    continue
                counts: dict[int, int] = {}
                for v in (a, b, c):
                    for u in adjacency[v] - {a, b, c}:
                        counts[u] = counts.get(u, 0) + 1
                if all(n == 2 for n in counts.values()):
                    triangles.append(frozenset((a, b, c)))
    return triangles


def face_cliques(adjacency: list[set[int]], sizes: list[int], cycles: frozenset[frozenset[int]] = frozenset()) -> list[frozenset[int]]:
    """The faces of a shard as cliques of samples, from each sample's neighbourhood.

    Sample ``b`` sees its neighbours grouped by the face they share with it: two neighbours
    share that face when they are adjacent, unless the three form a triangle listed in
    ``cycles`` (a 3-cycle of partners: each pair shares a different face). The groups are the
    fewest maximal cliques (at most ``sizes[b]``) covering the neighbours with the least
    overlap; each with ``b`` is a face, and ``b``'s faces that no other sample holds are
    ``{b}``.

    Args:
        adjacency: per sample, the samples it shares a face with.
        sizes: per sample, its number of constituents k.
        cycles: triangles taken as 3-cycles.

    Returns:
        The distinct faces (sets of the samples holding them), in order of discovery.
    """
    faces: dict[frozenset[int], None] = {}
    for b, around in enumerate(adjacency):
        if cycles:
            local = [adjacency[v] - {u for u in adjacency[v] if frozenset((b, u, v)) in cycles} for v in range(len(adjacency))]
        else:
            local = adjacency
        groups = _maximal_cliques(around, local)
        want = max(sizes[b], 1)
        if len(groups) > want:
            groups = list(min(itertools.combinations(groups, want), key=lambda c: (len(around - frozenset().union(*c)), sum(map(len, c)))))
        for group in groups:
            faces.setdefault(group | {b}, None)
        if len(groups) < want:
            faces.setdefault(frozenset((b,)), None)
    return list(faces)


def orient_faces(faces: list[frozenset[int]], batch: int, score) -> tuple[list[list[int]], int]:
    """Each sample's partners: the anchors of its other faces, every sample anchoring one face.

    A face with one sample left unassigned is that sample's anchor face, and a sample with one
    face left unanchored anchors it; assigning one may settle others (peeling leaves of the
    partner forest). What stays open are cycles of partners, each with two orientations: the
    first open sample is tried on each of its open faces, the rest peeled, and the orientation
    whose partners ``score`` lower is kept.

    Args:
        faces: the shard's faces (sets of samples holding them).
        batch: the number of samples.
        score: partners (list per sample; may be empty) -> a number, lower is better.

    Returns:
        (per sample the anchors of its other faces, cycles oriented).
    """
    holding = [[f for f, members in enumerate(faces) if b in members] for b in range(batch)]
    anchor, owner = _peel(faces, holding, {}, {})
    cycles = 0
    while True:
        open_samples = [b for b in range(batch) if b not in owner and any(f not in anchor for f in holding[b])]
        if not open_samples:
            break
        b, options = open_samples[0], []
        for f in dict.fromkeys(holding[b]):
            if f in anchor:
                continue
            trial_anchor, trial_owner = _peel(faces, holding, {**anchor, f: b}, {**owner, b: f})
            options.append((score(_partners(holding, trial_anchor, trial_owner)), trial_anchor, trial_owner))
        _, anchor, owner = min(options, key=lambda option: option[0])
        cycles += 1
    return _partners(holding, anchor, owner), cycles


def _peel(faces, holding, anchor: dict[int, int], owner: dict[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """Assign anchors while some face has one free sample or some free sample one open face."""
    changed = True
    while changed:
        changed = False
        for f, members in enumerate(faces):
            if f not in anchor:
                free = [m for m in members if m not in owner]
                if len(free) == 1:
                    anchor[f], owner[free[0]] = free[0], f
                    changed = True
        for b, held in enumerate(holding):
            if b not in owner:
                unanchored = [f for f in held if f not in anchor]
                if len(unanchored) == 1:
                    anchor[unanchored[0]], owner[b] = b, unanchored[0]
                    changed = True
    return anchor, owner


def _partners(holding, anchor, owner) -> list[list[int]]:
    return [list(dict.fromkeys(anchor[f] for f in held if f in anchor and f != owner.get(b) and anchor[f] != b)) for b, held in enumerate(holding)]


ATTACKS = {"regenerate": "a", "labels": "b", "structure": "c"}


def run_unmix_attacks(release: Release, mixing: MixingConfig) -> dict[str, tuple[dict[int, Tensor], dict]]:
    """All three attacks on one release: name -> (estimates per shard, record)."""
    return {
        "regenerate": regenerate_secrets(release, mixing),
        "labels": resolve_labels(release, mixing.rescale),
        "structure": match_structure(release, mixing.rescale),
    }
