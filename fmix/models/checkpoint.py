"""Atomic checkpoints loaded with ``torch.load(weights_only=True)`` (tensors and plain containers only)."""

from __future__ import annotations

from pathlib import Path

import torch

from fmix.io import atomic_write


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` through a temporary file: a run killed while saving keeps the previous checkpoint.

    Args:
        state: tensors and plain containers (dict, list, str, numbers).
        path: the destination file.
    """
    with atomic_write(path, "wb") as out:
        torch.save(state, out)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects.

    Args:
        path: the checkpoint file.
        device: where tensors are loaded.

    Returns:
        The saved state.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of plain containers and tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path} is not a readable fmix checkpoint: {err}") from err
