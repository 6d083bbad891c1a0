"""Attacks on protected faces: reconstruction (white-box and black-box inversion networks) (docs/design.md §5)."""

from fmix.attacks.grids import image_grid, one_per_identity, write_attack_grid
from fmix.attacks.patchgan import PatchDiscriminator
from fmix.attacks.protectors import (
    MaskerProtector,
    NoisyFrequencyProtector,
    PixelMixProtector,
    ProtectedPairs,
    Protector,
    surrogate_protector,
)
from fmix.attacks.reconstruction import (
    AttackConfig,
    ReconstructionAttack,
    ReconstructionScores,
    constituents_of,
    evaluate_reconstruction,
    invert,
)
from fmix.attacks.unet import UNetGenerator

__all__ = [
    "AttackConfig",
    "MaskerProtector",
    "NoisyFrequencyProtector",
    "PatchDiscriminator",
    "PixelMixProtector",
    "ProtectedPairs",
    "Protector",
    "ReconstructionAttack",
    "ReconstructionScores",
    "UNetGenerator",
    "constituents_of",
    "evaluate_reconstruction",
    "image_grid",
    "invert",
    "one_per_identity",
    "surrogate_protector",
    "write_attack_grid",
]
