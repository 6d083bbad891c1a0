"""Embedding distillation from a pretrained clean-face teacher (dlib's descriptor) on the owner's side.

The owner holds the clean private faces, so a recogniser that no run trains (the dlib judge) can
describe them once (``fmix attack gallery`` writes ``gallery.npz``); the FR network, which only sees
protected inputs, then learns to point its embedding (through a linear map) at the teacher's
descriptor of the same face, beside its margin loss. For a mixed sample the target is the mix of
its constituents' descriptors with the label weights. The teacher is then also the default
identity judge of the attacks: reports say so beside every number it judges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fmix.models.frnet import TeacherProjection

__all__ = ["TeacherProjection", "load_teacher_targets", "mixed_targets"]


def load_teacher_targets(path: str | Path, paths: list[str]) -> Tensor:
    """Unit-length teacher descriptors of the training faces, in the order of ``paths``.

    Args:
        path: a ``gallery.npz`` of ``fmix attack gallery`` (arrays ``paths`` and ``descriptors``).
        paths: the training faces, relative to the aligned folder.

    Shape:
        - Output: :math:`(N, D)` float32 with :math:`N` = ``len(paths)``.

    Returns:
        Row ``i`` is the L2-normalised descriptor of ``paths[i]``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a training face has no descriptor in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher descriptors not found: {path} (run `fmix attack gallery`)")
    with np.load(path, allow_pickle=False) as data:
        row_of = {p: i for i, p in enumerate(data["paths"].tolist())}
        descriptors = data["descriptors"]
    missing = [p for p in paths if p not in row_of]
    if missing:
        raise ValueError(f"{path} has no descriptor for {len(missing)} training faces, e.g. {missing[0]} (rerun `fmix attack gallery` for this split)")
    targets = torch.from_numpy(np.ascontiguousarray(descriptors[[row_of[p] for p in paths]], dtype=np.float32))
    return F.normalize(targets, dim=1)


def mixed_targets(targets: Tensor, partners: Tensor, weights: Tensor) -> Tensor:
    """Teacher targets of mixed samples: the label-weighted mix of the constituents' descriptors.

    Shape:
        - targets: :math:`(B, D)` (the batch's un-mixed targets).
        - partners, weights: :math:`(B, K)`.
        - Output: :math:`(B, D)`.
    """
    return (weights.unsqueeze(-1) * targets[partners]).sum(dim=1)
