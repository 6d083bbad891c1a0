import numpy as np
import pytest
import torch
from PIL import Image

from fmix.attacks import image_grid, one_per_identity, write_attack_grid


def test_one_per_identity():
    identities = ["b", "b", "a", "c", "a", "d"]
    assert one_per_identity(identities, 3) == [2, 0, 3]
    assert one_per_identity(identities, 10) == [2, 0, 3, 5]


def test_attack_grid_png(tmp_path):
    originals = torch.full((3, 3, 8, 6), 200.0)
    view, recon = torch.zeros(3, 3, 8, 6), torch.full((3, 3, 8, 6), 300.0)
    grid = write_attack_grid(tmp_path / "g" / "grid.png", originals, view, recon, padding=1)
    assert grid.shape == (3 * 9 + 1, 3 * 7 + 1, 3) and grid.dtype == np.uint8
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g" / "grid.png")), grid)
    assert (grid[1:9, 1:7] == 200).all() and (grid[10:18, 1:7] == 0).all() and (grid[19:27, 1:7] == 255).all()
    assert (grid[0] == 255).all()  # padding


def test_grid_errors():
    with pytest.raises(ValueError, match="at least one row"):
        image_grid([])
    with pytest.raises(ValueError, match=r"every row of shape \(2, 3, 4, 4\)"):
        image_grid([torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4)])
    with pytest.raises(ValueError, match=r"rows\[0\] of shape \(N, 3, H, W\)"):
        image_grid([torch.zeros(2, 1, 4, 4)])
