"""Shared fixtures: small ImageFolder trees of real LFW photos from ../shared/data (never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmix_testing import LFW_IMAGES, copy_sample


SINGLE_THREAD_FOLDERS = {"models", "metrics", "attacks"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(request):
    """Tiny networks run fastest on one thread; more only contend with other jobs on the machine."""
    import torch

    if request.path.parent.name not in SINGLE_THREAD_FOLDERS:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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



@pytest.fixture(scope="session")
def pipeline_sample(tmp_path_factory, aligned_sample) -> dict[str, Path]:
    """Splits and an exported masker for :func:`aligned_sample`: aligned, splits, masker paths."""
    from fmix.data.splits import make_split, write_split
    from fmix.masker.export import export_masker
    from fmix.params import ExportParams, SplitParams

    root = tmp_path_factory.mktemp("pipeline")
    params = SplitParams(folds=2, pairs_per_fold=4, private_fraction=0.4, public_fraction=0.2, val_fraction=0.34)
    write_split(make_split(aligned_sample, params), root / "splits", params)
    export_masker(aligned_sample, root / "splits" / "public.csv", root / "masker.onnx", ExportParams())
    return {"aligned": aligned_sample, "splits": root / "splits", "masker": root / "masker.onnx"}
