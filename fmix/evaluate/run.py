"""``fmix evaluate``: verification accuracy of a trained model on masked, un-mixed faces.

Reports, side by side: the model's 10-fold accuracy, TAR@FAR and AUC; the raw-feature floor
(cosine on the model's untrained inputs: masked channels, or pixels for RGB) on the same pairs;
and the closed-set accuracy on the private validation faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.data.faces import load_face_set, load_faces
from fmix.data.splits import Pair, read_pairs
from fmix.evaluate.closed_set import closed_set_accuracy
from fmix.evaluate.verification import cosine_scores, verification_metrics
from fmix.masker.build import faces_to_tensor
from fmix.models.artifact import TrainedModel, load_trained_model
from fmix.params import EvaluateParams

__all__ = ["TrainedModel", "evaluate_model", "load_trained_model", "pair_faces", "verify"]


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


def evaluate_model(model_path: str | Path, aligned: str | Path, pairs_csv: str | Path, params: EvaluateParams, val_csv: str | Path | None = None) -> dict:
    """Verification metrics of a trained model beside its raw-feature floor.

    Args:
        model_path: ``model.pt`` from ``fmix train``.
        aligned: output folder of ``fmix align``.
        pairs_csv: ``pairs.csv`` from ``fmix split`` (held-out identities or LFW's pairs).
        params: ``evaluate`` parameters.
        val_csv: optional ``private_val.csv`` for the closed-set accuracy.

    Returns:
        ``{"method", "verification", "raw_feature_floor", "val_accuracy", "pairs"}``.
    """
    model, record = load_trained_model(model_path)
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
        result["val_accuracy"] = closed_set_accuracy(model.encoder, model, load_face_set(aligned, val_csv), torch.device("cpu"))
    return result

