"""Attack (b): a partner's published label names the row that holds it; a local search settles the rest."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fmix.attacks.unmix.linear import decorrelation, mix_system
from fmix.attacks.unmix.release_view import Release


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


def _alternate(
    samples: Tensor,
    weights: list[list[float]],
    candidates: list[list[list[int]]],
    rescale: bool,
    rounds: int,
    restarts: int = 8,
) -> tuple[Tensor, int]:
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
            partners = [
                list(rng.choice(candidates[row][0], size=len(w) - 1, replace=False))
                if len(candidates[row][0]) >= len(w) - 1
                else partners[row]
                for row, w in enumerate(weights)
            ]
            partners = [[int(c) for c in p] for p in partners]
        partners = _gram_search(centred, weights, partners, candidates, norms, rounds)
        score, partners, changed = _local_search(centred, weights, partners, candidates, norms, rounds)
        if score < best_score:
            best_score, best_partners = score, partners
    solution = np.linalg.pinv(mix_system(weights, best_partners, norms)) @ flat
    return torch.from_numpy(solution).float().reshape(samples.shape), changed


def _gram_search(centred, weights, partners, candidates, norms, rounds) -> list[list[int]]:
    """Partners whose ``W W^T`` best matches the samples' Gram matrix (faces nearly orthogonal).

    With orthogonal faces of equal energy ``s``, ``x x^T = s W W^T``; a partner change moves one
    row and column of ``W W^T``, so each try costs O(B). Greedy sweeps until nothing improves.
    """
    batch = len(weights)
    target = centred @ centred.T
    system = mix_system(weights, partners, norms)
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
                steps = (
                    energy * a * (system[:, options] - system[:, [current]]) * off[row][:, None]
                )  # one column per option
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
    return (
        gram
        - u[None, :, None] * mv[:, None, :]
        - mv[:, :, None] * u[None, None, :]
        + np.square(v).sum(axis=1)[:, None, None] * np.outer(u, u)
    )


def _local_search(centred, weights, partners, candidates, norms, rounds) -> tuple[float, list[list[int]], int]:
    batch = len(weights)
    partners = [list(p) for p in partners]
    inverse = np.linalg.pinv(mix_system(weights, partners, norms))
    faces = inverse @ centred
    gram = faces @ faces.T
    score, changed = decorrelation(gram), 0
    chunk = max(1, TRIAL_ELEMENTS // batch**2)
    for _ in range(rounds):
        changed = 0
        for row, row_weights in enumerate(weights):
            for j in range(1, len(row_weights)):
                current = partners[row][j - 1]
                weight = row_weights[j] / norms[row]
                options = np.array(
                    [c for c in candidates[row][j - 1] if c != current and c not in partners[row]], dtype=np.int64
                )
                u = inverse[:, row]
                denominators = 1.0 + weight * (u[options] - u[current])
                invertible = np.abs(denominators) >= 1e-6
                options, denominators = options[invertible], denominators[invertible]
                if len(options) == 0:
                    continue
                # All options at once: the row's change of W times m, then the rank-one updates of the Gram matrix.
                v = weight * (faces[options] - faces[current]) / denominators[:, None]
                trial_scores = np.concatenate(
                    [decorrelation(_updated_gram(gram, faces, u, v[i : i + chunk])) for i in range(0, len(v), chunk)]
                )
                pick = int(trial_scores.argmin())
                best = (
                    (
                        float(trial_scores[pick]),
                        int(options[pick]),
                        u.copy(),
                        v[pick],
                        _updated_gram(gram, faces, u, v[pick : pick + 1])[0],
                    )
                    if trial_scores[pick] < score - 1e-9
                    else None
                )
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
