"""Shared fixtures: small ImageFolder trees of real LFW photos from ../shared/data (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmix_testing import LFW_IMAGES, copy_sample


def pytest_configure(config):
    if not LFW_IMAGES.is_dir():
        raise pytest.UsageError(f"the shared LFW data is missing: {LFW_IMAGES} (see ../shared/data/README.md)")


@pytest.fixture(scope="session")
def lfw_sample(tmp_path_factory) -> Path:
    """10 identities x 6 real LFW photos (read-only by convention: copy before modifying)."""
    return copy_sample(tmp_path_factory.mktemp("lfw_sample"))


@pytest.fixture(scope="session")
def aligned_sample(tmp_path_factory, lfw_sample) -> Path:
    """``fmix align`` output for :func:`lfw_sample`."""
    from fmix.data.align import align_folder
    from fmix.params import AlignParams

    out = tmp_path_factory.mktemp("aligned") / "aligned"
    align_folder(lfw_sample, out, AlignParams(workers=1), progress=False)
    return out

