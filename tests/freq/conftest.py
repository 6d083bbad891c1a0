"""Shared fixtures of the fmix.freq tests."""

from pathlib import Path

import numpy as np
import pytest
import torch

LFW = Path("/work/shared/data/lfw/images_deepfunneled")
FACE_NAMES = ("Aaron_Eckhart", "AJ_Cook", "Aaron_Guiel", "AJ_Lamas")


@pytest.fixture(scope="session")
def real_faces() -> torch.Tensor:
    """Four LFW faces, centre crop 112x112 (box 69:181), float64 RGB on [0, 255]."""
    from PIL import Image

    paths = [LFW / name / f"{name}_0001.jpg" for name in FACE_NAMES]
    if not all(path.is_file() for path in paths):
        pytest.skip(f"LFW faces not found under {LFW}")
    crops = [np.asarray(Image.open(path).convert("RGB"))[69:181, 69:181] for path in paths]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(torch.float64)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
