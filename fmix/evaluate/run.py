"""``fmix evaluate``: verification accuracy of a trained model on masked, un-mixed faces.

Reports, side by side: the model's 10-fold accuracy, TAR@FAR and AUC; the raw-feature floor
(cosine on the model's untrained inputs: masked channels, or pixels for RGB) on the same pairs;
and the closed-set accuracy on the private validation faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fmix.data.faces import load_faces
from fmix.data.splits import Pair, read_pairs
from fmix.evaluate.verification import cosine_scores, verification_metrics
from fmix.masker.build import faces_to_tensor
from fmix.params import EvaluateParams, TrainParams, section_from_mapping
from fmix.train.checkpoint import load_checkpoint
from fmix.train.encoders import encoder_from_spec


class TrainedModel(nn.Module):
    """A trained model: input encoder (the masker, no mixing), backbone and head."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.backbone, self.head = encoder, backbone, head

    @torch.no_grad()
    def embed(self, images: Tensor, flip_average: bool = True, batch_size: int = 256) -> Tensor:
        """L2-normalised embeddings of aligned RGB faces (B, 3, H, W) in [0, 255]."""
        self.eval()
        out = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            emb = self.backbone(self.encoder(batch))
            if flip_average:
                emb = nn.functional.normalize(emb, dim=1) + nn.functional.normalize(self.backbone(self.encoder(batch.flip(-1))), dim=1)
            out.append(nn.functional.normalize(emb.float(), dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def raw_features(self, images: Tensor) -> Tensor:
        """The untrained inputs of the network, flattened: the raw-feature floor's features."""
        return self.encoder(images).flatten(1).float()


# What `fmix train` saves in model.pt.
MODEL_KEYS = ("params", "encoder", "backbone", "head", "policy", "num_classes", "input")


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[TrainedModel, dict]:
    """Rebuild a model saved by ``fmix train`` (``model.pt``).

    Returns:
        (model in eval mode, the saved record: params, encoder spec, num_classes, policy state).
    """
    from fmix.train.loop import build_net

    record = load_checkpoint(path, device)
    missing = [key for key in MODEL_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(f"{path} is not a model.pt of `fmix train`: it lacks {', '.join(missing)}")
    try:
        params = section_from_mapping(TrainParams, record["params"], "train")
        channels, size = record["input"]
        net = build_net(params, channels, size, record["num_classes"])
        net.backbone.load_state_dict(record["backbone"])
        net.head.load_state_dict(record["head"])
        encoder = encoder_from_spec(record["encoder"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a damaged or foreign record
        raise ValueError(f"{path} does not hold a model `fmix train` wrote: {type(err).__name__}: {err}") from err
    return TrainedModel(encoder, net.backbone, net.head).to(device).eval(), record


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
        "method": record["params"]["method"],
        "pairs": len(pairs),
        "verification": verify(model.embed(faces, params.flip_average, params.batch_size), row, pairs),
        "raw_feature_floor": verify(model.raw_features(faces), row, pairs),
    }
    if val_csv is not None:
        from fmix.train.data import load_face_set
        from fmix.train.loop import closed_set_accuracy

        result["val_accuracy"] = closed_set_accuracy(model.encoder, model, load_face_set(aligned, val_csv), torch.device("cpu"))
    return result

