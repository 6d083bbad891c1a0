"""Attack (a): replay the draws of a recorded or guessed seed, then solve each shard exactly."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fmix.attacks.unmix.linear import solve
from fmix.attacks.unmix.release_view import Release, ReleasedShard
from fmix.masker.protection import MixingConfig, Protection
from fmix.release.randomness import ReleaseRandomness

SEED_GUESSES = 16  # seeds an attacker tries when the release records none: 0 .. 15


WEIGHT_TOLERANCE = 0.0051  # published weights have 2 decimals (6 in an --insecure-reuse release)


def regenerate_secrets(
    release: Release, mixing: MixingConfig, guesses: int = SEED_GUESSES
) -> tuple[dict[int, Tensor], dict]:
    """Attack (a): replay the draws of a recorded or guessed seed, then solve each shard exactly.

    For every seed tried (the recorded one, else ``0 .. guesses - 1``) and shard, the shard's
    generator of an ``--insecure-seed`` release (:class:`fmix.release.randomness.ReleaseRandomness`)
    is replayed through :meth:`fmix.masker.protection.Protection.replay_draws` (the draws of
    ``protect``, in its order), with each row's first published label as its anchor's and the
    number of its weights as its k. A shard whose regenerated labels and weights equal the published ones is
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
            generator = ReleaseRandomness(insecure_seed=seed).generator(shard)  # the owner's seeding, guessed
            draw = Protection(None, mixing).replay_draws(anchors, k, tuple(part.samples.shape[1:]), generator)
            if not _draw_matches(draw.partners, draw.weights, anchors, part):
                continue
            samples = part.samples
            if draw.noise is not None:  # drawn after the signs: replayed, it comes off exactly
                samples = samples - draw.noise.to(samples.dtype)
            samples = samples if draw.sign is None else samples * draw.sign
            system = torch.zeros(batch, batch, dtype=torch.float64)
            weights = draw.weights.double() / (
                draw.weights.double().norm(dim=1, keepdim=True) if mixing.rescale else 1.0
            )
            system.scatter_add_(1, draw.partners, weights)
            estimates[shard] = solve(system, samples)
            matched[shard] = seed
            break
    return estimates, {
        "seeds_tried": len(seeds),
        "recorded_seed": release.recorded_seed,
        "shards_matched": len(matched),
        "shards": len(release.shards),
    }


def _draw_matches(partners: Tensor, weights: Tensor, anchors: Tensor, part: ReleasedShard) -> bool:
    for row, (labels, published) in enumerate(zip(part.labels, part.weights)):
        size = len(labels)
        if anchors[partners[row, :size]].tolist() != labels:
            return False
        if np.abs(weights[row, :size].numpy() - np.array(published)).max() > WEIGHT_TOLERANCE:
            return False
    return True
