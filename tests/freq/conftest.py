"""Shared fixtures of the fmix.freq tests."""

import numpy as np
import pytest
import torch

from fmix_testing import LFW_IMAGES, require_files

FACE_NAMES = ("Aaron_Eckhart", "AJ_Cook", "Aaron_Guiel", "AJ_Lamas")


@pytest.fixture(scope="session")
def real_faces() -> torch.Tensor:
    """Four LFW faces, centre crop 112x112 (box 69:181), float64 RGB on [0, 255]."""
    from PIL import Image

    paths = require_files([LFW_IMAGES / name / f"{name}_0001.jpg" for name in FACE_NAMES])
    crops = [np.asarray(Image.open(path).convert("RGB"))[69:181, 69:181] for path in paths]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(torch.float64)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
