"""Attack (c): without labels, the sharing graph gives each sample's faces; then least squares."""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch
from torch import Tensor

from fmix.attacks.unmix.graph import SHARING_THRESHOLD, even_triangles, face_cliques, orient_faces, sharing_graph
from fmix.attacks.unmix.linear import decorrelation, link_system, solve_linked
from fmix.attacks.unmix.release_view import Release


def match_structure(
    release: Release, rescale: bool = True, threshold: float = SHARING_THRESHOLD
) -> tuple[dict[int, Tensor], dict]:
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
        system = link_system(weights, partners, norms)
        left = solve_linked(system, gram)  # W^-1 G W^-T: the Gram matrix of the solved faces
        return decorrelation(solve_linked(system, left.T))

    triangles = even_triangles(adjacency)
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
    solution = solve_linked(link_system(weights, partners, norms), flat)
    info = {
        "faces": found,
        "rows_linked": sum(bool(p) for p in partners),
        "cycles_oriented": oriented,
        "triangles_tried": len(triangles),
    }
    return torch.from_numpy(solution).float().reshape(samples.shape), info


def _settle_triangles(
    partners: list[list[int]], triangles: list[frozenset[int]], sizes: list[int], score
) -> list[list[int]]:
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
