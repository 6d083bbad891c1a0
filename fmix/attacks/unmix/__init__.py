"""Un-mixing attacks on a released folder of ``fmix mask`` (docs/design.md §1 and §5).

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

from torch import Tensor

from fmix.attacks.unmix.labels import resolve_labels
from fmix.attacks.unmix.regenerate import regenerate_secrets
from fmix.attacks.unmix.release_view import Release, ReleasedShard, read_release
from fmix.attacks.unmix.structure import match_structure
from fmix.masker.protection import MixingConfig

__all__ = [
    "ATTACKS",
    "Release",
    "ReleasedShard",
    "match_structure",
    "read_release",
    "regenerate_secrets",
    "resolve_labels",
    "run_unmix_attacks",
]

ATTACKS = {"regenerate": "a", "labels": "b", "structure": "c"}


def run_unmix_attacks(release: Release, mixing: MixingConfig) -> dict[str, tuple[dict[int, Tensor], dict]]:
    """All three attacks on one release: name -> (estimates per shard, record)."""
    return {
        "regenerate": regenerate_secrets(release, mixing),
        "labels": resolve_labels(release, mixing.rescale),
        "structure": match_structure(release, mixing.rescale),
    }
