"""Training checkpoints: the atomic, weights-only files of :mod:`fmix.models.checkpoint` and the random states."""

from __future__ import annotations

import random

import torch

from fmix.models.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "restore_rng_state", "rng_state", "save_checkpoint"]


def rng_state(generator: torch.Generator) -> dict:
    """Every random state a training run draws from."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "generator": generator.get_state()}


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    generator.set_state(state["generator"])
