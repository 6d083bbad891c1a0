"""Shared fixtures of the fmix.attacks tests: real aligned faces as tensors (one torch thread: ../conftest.py)."""

from __future__ import annotations

import pytest
import torch

from fmix.data.faces import load_faces
from fmix.masker.build import faces_to_tensor


@pytest.fixture(scope="session")
def aligned_faces(aligned_sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The aligned sample as (N, 3, 112, 112) uint8 faces and (N,) identity labels, sorted by path."""
    paths = sorted(aligned_sample.glob("*/*.png"))
    faces, loaded, _ = load_faces(paths, size=112)
    names = [paths[i].parent.name for i in loaded]
    labels = torch.tensor([sorted(set(names)).index(n) for n in names])
    return faces_to_tensor(faces).to(torch.uint8), labels
