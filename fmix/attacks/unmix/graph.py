"""The sharing graph of a shard (after Carlini et al. 2021): which samples share a face, the faces as cliques, their anchors."""

from __future__ import annotations

import itertools

import numpy as np
from torch import Tensor

SHARING_THRESHOLD = 0.05  # cosine above which two samples share a face (different people: |cos| < 0.05)


MEAN_FACE_SAMPLES = 128  # shards this large centre on a least-squares mean face


def sharing_graph(
    samples: Tensor, weights: list[list[float]], rescale: bool = True, threshold: float = SHARING_THRESHOLD
) -> tuple[np.ndarray, float, np.ndarray]:
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


def even_triangles(adjacency: list[set[int]]) -> list[frozenset[int]]:
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


def face_cliques(
    adjacency: list[set[int]], sizes: list[int], cycles: frozenset[frozenset[int]] = frozenset()
) -> list[frozenset[int]]:
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
            local = [
                adjacency[v] - {u for u in adjacency[v] if frozenset((b, u, v)) in cycles}
                for v in range(len(adjacency))
            ]
        else:
            local = adjacency
        groups = _maximal_cliques(around, local)
        want = max(sizes[b], 1)
        if len(groups) > want:
            groups = list(
                min(
                    itertools.combinations(groups, want),
                    key=lambda c: (len(around - frozenset().union(*c)), sum(map(len, c))),
                )
            )
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
    return [
        list(dict.fromkeys(anchor[f] for f in held if f in anchor and f != owner.get(b) and anchor[f] != b))
        for b, held in enumerate(holding)
    ]
