"""``fmix evaluate``: verification accuracy of a trained model on masked, un-mixed faces.

Reports, side by side: the model's 10-fold accuracy, TAR@FAR and AUC; the raw-feature floor
(cosine on the model's untrained inputs: masked channels, or pixels for RGB) on the same pairs;
and the closed-set accuracy on the private validation faces; and, for each InsightFace ``.bin``
given (``fmix evaluate --bin``), the model's verification on its pairs (:func:`verify_bin`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from fmix.data.faces import load_face_set, load_faces
from fmix.data.insightface_bin import load_bin, read_insightface_bin
from fmix.data.splits import Pair, read_pairs
from fmix.device import resolve_device
from fmix.evaluate.closed_set import closed_set_accuracy
from fmix.evaluate.verification import cosine_scores, verification_metrics
from fmix.masker.build import faces_to_tensor
from fmix.models.artifact import TrainedModel, load_trained_model
from fmix.params import EvaluateParams


def pair_faces(aligned: str | Path, pairs: list[Pair]) -> tuple[Tensor, dict[str, int]]:
    """The faces of all pairs, each once, as (N, 3, H, W) float in [0, 255], and path -> row."""
    paths = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    faces, loaded, skipped = load_faces([Path(aligned) / p for p in paths])
    if skipped:
        raise ValueError(f"{len(skipped)} pair faces cannot be read, e.g. {skipped[0][2]}")
    return faces_to_tensor(faces), {p: i for i, p in enumerate(paths)}


def verify(features: Tensor, row: dict[str, int], pairs: list[Pair]) -> dict:
    """Verification metrics of cosine scores between the features of each pair."""
    a = features[[row[p.path_a] for p in pairs]]
    b = features[[row[p.path_b] for p in pairs]]
    scores = cosine_scores(a, b).numpy()
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    return verification_metrics(scores, same, folds)


BIN_FOLDS = 10  # InsightFace's k-fold on a .bin: consecutive blocks of pairs (LFW's own folds in lfw.bin)
BIN_CHUNK = 1024  # images decoded to float at a time


def bin_folds(num_pairs: int, folds: int = BIN_FOLDS) -> np.ndarray:
    """Fold ids of a ``.bin``'s pairs: ``folds`` consecutive blocks of (nearly) equal size.

    Args:
        num_pairs: N, at least 2.
        folds: number of folds (fewer when there are fewer pairs).

    Returns:
        Array of shape (N,), int64, non-decreasing, from 0 to ``min(folds, N) - 1``.
    """
    if num_pairs < 2:
        raise ValueError(f"Expected at least 2 pairs for a k-fold verification, got {num_pairs}")
    count = min(folds, num_pairs)
    return np.arange(num_pairs, dtype=np.int64) * count // num_pairs


def _safely(read, path):
    """``read(path)``; a .bin asking for code to run is bad input (a ValueError, one line in the CLI)."""
    try:
        return read(path)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: {err}") from err


def verify_bin(model: TrainedModel, path: str | Path, params: EvaluateParams) -> dict:
    """Verification metrics of a model on an InsightFace ``.bin`` (``lfw.bin``, ``cfp_fp.bin``...).

    The faces are embedded as they are (through the model's encoder: masked for masking methods,
    as the held-out pairs are), flip-averaged when ``params.flip_average``; the folds are
    :func:`bin_folds`.

    Args:
        model: the trained model.
        path: the ``.bin`` (read without running pickled code, 112x112 faces).
        params: ``evaluate`` parameters (``flip_average``, ``batch_size``).

    Returns:
        :func:`~fmix.evaluate.verification.verification_metrics`' dict and ``pairs``.
    """
    data = _safely(read_insightface_bin, path)
    features = torch.cat(
        [
            model.embed(faces_to_tensor(data.images[start : start + BIN_CHUNK]), params.flip_average, params.batch_size)
            for start in range(0, len(data.images), BIN_CHUNK)
        ]
    )
    scores = cosine_scores(features[0::2], features[1::2]).numpy()
    try:
        return {"pairs": data.num_pairs, **verification_metrics(scores, data.issame, bin_folds(data.num_pairs))}
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def evaluate_model(
    model_path: str | Path,
    aligned: str | Path,
    pairs_csv: str | Path,
    params: EvaluateParams,
    val_csv: str | Path | None = None,
    bins: Sequence[str | Path] = (),
) -> dict:
    """Verification metrics of a trained model beside its raw-feature floor.

    Args:
        model_path: ``model.pt`` from ``fmix train``.
        aligned: output folder of ``fmix align``.
        pairs_csv: ``pairs.csv`` from ``fmix split`` (held-out identities or LFW's pairs).
        params: ``evaluate`` parameters (``device``: where the model runs, :func:`fmix.device.resolve_device`).
        val_csv: optional ``private_val.csv`` for the closed-set accuracy.
        bins: InsightFace ``.bin`` verification sets to evaluate as well (:func:`verify_bin`).

    Returns:
        ``{"method", "verification", "raw_feature_floor", "val_accuracy", "pairs"}`` (``val_accuracy``
        None for a model trained on a release, whose labels are not the split's), and
        ``"bins"`` (path as given -> metrics) when ``bins`` are given.
    """
    for path in bins:  # before the long part: a typo or a bad file fails at once
        if not Path(path).is_file():
            raise FileNotFoundError(f"verification .bin not found: {path}")
        _safely(load_bin, path)
    device = resolve_device(params.device)
    model, record = load_trained_model(model_path, device)
    pairs = read_pairs(pairs_csv)
    if not pairs:
        raise ValueError(f"{pairs_csv} holds no pairs")
    faces, row = pair_faces(aligned, pairs)
    result = {
        "method": record.method,
        "pairs": len(pairs),
        "verification": verify(model.embed(faces, params.flip_average, params.batch_size), row, pairs),
        "raw_feature_floor": verify(model.raw_features(faces), row, pairs),
    }
    if val_csv is not None:
        # A model trained on a release (`fmix train --release`) numbers its classes as the release does, not as
        # the split does: a closed-set accuracy on the split's labels would measure nothing.
        result["val_accuracy"] = (
            None
            if record.release
            else closed_set_accuracy(model.encoder, model, load_face_set(aligned, val_csv), device)
        )
    if bins:
        result["bins"] = {str(path): verify_bin(model, path, params) for path in bins}
    return result
