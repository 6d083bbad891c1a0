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


@pytest.fixture(autouse=True)
def owner_ledger(tmp_path, monkeypatch) -> Path:
    """Each test's own default ledger (``$FMIX_LEDGER``), never the machine owner's."""
    path = tmp_path / "fmix-ledger.jsonl"
    monkeypatch.setenv("FMIX_LEDGER", str(path))
    return path


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device (skipped without one; benchmarks/gpu_check.sh runs them)"
    )
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


@pytest.fixture
def make_trainer(pipeline_sample):
    """``make_trainer(method, mixing=None, **train_overrides)``: a tiny :class:`~fmix.train.trainer.Trainer`
    on the pipeline sample (mixing from the first step, no flips), to look at single steps."""
    import dataclasses

    from fmix.params import AdaptiveParams, MixingParams, TrainParams
    from fmix.train.loop import build_trainer
    from fmix.train.trainer import Trainer

    def make(method_name: str, mixing: MixingParams | None = None, **overrides) -> Trainer:
        game = AdaptiveParams(policy_warmup_epochs=0.0, n_fr=1, n_pi=1)
        base = TrainParams(
            width=0.125,
            embedding_size=32,
            batch_size=8,
            epochs=1,
            threads=1,
            mix_warmup_fraction=0.0,
            flip=False,
            adaptive=game,
        )
        params = dataclasses.replace(base, method=method_name, **overrides)
        return build_trainer(
            params, pipeline_sample["aligned"], pipeline_sample["splits"], pipeline_sample["masker"], mixing
        )[0]

    return make


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``cuda`` on a machine without CUDA (torch is imported only when some are collected)."""
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in marked:
        item.add_marker(skip)
