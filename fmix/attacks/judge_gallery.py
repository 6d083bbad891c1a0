"""The dlib judge's gallery descriptors, embedded once per split and read by every attack.

Embedding the clean private faces takes minutes on one core; ``fmix attack gallery`` writes
them to ``gallery.npz`` (descriptors, labels, paths and the judge's identity), and the attacks
load it with :func:`load_gallery`, which refuses a file made by another judge or for another split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.data.faces import FaceSet, load_face_set
from fmix.io import atomic_write
from fmix.models.dlib_judge import DESCRIPTOR_FILE, LANDMARKS_FILE, DlibJudge, model_folder


def judge_identity(judge) -> dict:
    """What makes two dlib judges' descriptors the same: dlib's version, model-file hashes, settings.

    Args:
        judge: a :class:`~fmix.models.dlib_judge.DlibJudge`.

    Returns:
        A JSON-able dict.
    """
    import dlib

    folder = model_folder()
    hashes = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in (LANDMARKS_FILE, DESCRIPTOR_FILE)
    }
    return {
        "dlib": dlib.__version__,
        "models": hashes,
        "pad": judge.pad,
        "upscale": judge.upscale,
        "jitters": judge.jitters,
    }


def write_gallery(aligned: str | Path, splits: str | Path, out: str | Path, judge=None) -> dict:
    """Embed the clean private training faces with the dlib judge and write them atomically.

    Args:
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split`` (its ``private_train.csv`` is the gallery).
        out: destination ``.npz``.
        judge: a :class:`~fmix.models.dlib_judge.DlibJudge` (default: a new one).

    Returns:
        ``faces``, ``identities`` and the ``judge`` identity.
    """

    judge = judge or DlibJudge()
    faces = load_face_set(aligned, Path(splits) / "private_train.csv")
    if len(faces) == 0:
        raise ValueError("Expected a non-empty gallery of clean private faces")
    descriptors = judge.embed(faces.images).numpy().astype(np.float32)
    identity = judge_identity(judge)
    with atomic_write(out, "wb") as handle:
        np.savez(
            handle,
            descriptors=descriptors,
            labels=faces.labels.numpy(),
            paths=np.array(faces.paths, dtype=str),
            judge=np.array(json.dumps(identity, sort_keys=True)),
        )
    return {"faces": len(faces), "identities": int(faces.labels.unique().numel()), "judge": identity}


def load_gallery(path: str | Path, gallery: FaceSet, judge) -> Tensor:
    """Read the descriptors of ``gallery`` from a file of :func:`write_gallery`.

    Args:
        path: the ``.npz``.
        gallery: the clean private faces the attack uses (paths and labels must match the file).
        judge: the :class:`~fmix.models.dlib_judge.DlibJudge` that will embed the attacked images.

    Returns:
        Descriptors :math:`(N, 128)`, row ``i`` for ``gallery.paths[i]``.

    Raises:
        ValueError: the file was made by another judge or for another split.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gallery file not found: {path} (run `fmix attack gallery`)")
    with np.load(path, allow_pickle=False) as data:
        descriptors, labels, paths, made_by = (
            data["descriptors"],
            data["labels"],
            data["paths"].tolist(),
            json.loads(str(data["judge"])),
        )
    if made_by != json.loads(json.dumps(judge_identity(judge), sort_keys=True)):
        raise ValueError(f"{path} was made by another dlib judge ({made_by}); rerun `fmix attack gallery`")
    if paths != list(gallery.paths) or not np.array_equal(labels, gallery.labels.numpy()):
        raise ValueError(
            f"{path} was made for another split ({len(paths)} faces, not the {len(gallery)} of private_train.csv); rerun `fmix attack gallery`"
        )
    return torch.from_numpy(descriptors)
