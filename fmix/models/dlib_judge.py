"""An off-the-shelf judge of identity: dlib's ResNet face descriptor on our aligned crops.

No run of fmix trains it: the weights are Davis King's public-domain dlib models, shipped by
the PyPI package ``face-recognition-models`` (read from the installed package, no network).
Its author trained it on about 3 million faces of 7,485 people, avoiding the LFW identities.
Two faces show the same person when their 128-d descriptors are closer than 0.6 (Euclidean),
the distance its metric loss was trained for.

dlib expects its own crop (a 150x150 "chip" cut around its 5 landmarks), not the ArcFace
112x112 crop of ``fmix align``. Each crop is therefore edge-padded (so the chip, which reaches
past the ArcFace crop, sees no black border), upscaled, re-landmarked by dlib's 5-point model
inside a fixed face box (where dlib's HOG detector puts the face on aligned crops; reconstructions
are judged without detection, which may fail on them), and cut to dlib's chip.

Example::

    judge = DlibJudge()
    descriptors = judge.embed(faces)          # faces: (N, 3, 112, 112) or (N, 112, 112, 3)
    same = judge.distance(descriptors[:1], descriptors[1:]) < judge.threshold
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.progress import Heartbeat

DESCRIPTOR_SIZE = 128
THRESHOLD = 0.6  # dlib's own same-person distance
CHIP_SIZE = 150  # dlib's descriptor input
# Median box (left, top, right, bottom) that dlib's HOG detector finds on 200 aligned 112x112
# LFW crops (edge-padded by 56 px, upscaled 2x); scaled with the crop side for other sizes.
FACE_BOX_112 = (11.0, 31.0, 100.5, 110.5)
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MIN_SIDE = 32


def model_folder() -> Path:
    """The folder of dlib's model files inside the installed ``face-recognition-models`` package.

    The package is located, not imported: its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer ships.

    Returns:
        The folder holding :data:`LANDMARKS_FILE` and :data:`DESCRIPTOR_FILE`.

    Raises:
        FileNotFoundError: the package or one of the two files is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        from fmix._optional import MissingExtraError, install_hint

        raise MissingExtraError(install_hint("face_recognition_models", "judge"), name="face_recognition_models")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    for name in (LANDMARKS_FILE, DESCRIPTOR_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"dlib model file missing: {folder / name} (reinstall face-recognition-models)")
    return folder


def as_hwc_uint8(images: object, name: str = "images") -> np.ndarray:
    """A batch of RGB crops as a contiguous (N, H, W, 3) uint8 array.

    Args:
        images: numpy array or torch tensor, uint8 or float in [0, 255] (floats are rounded),
            channels first or last.
        name: how error messages call the input.

    Shape:
        - images: :math:`(N, 3, S, S)` or :math:`(N, S, S, 3)`, :math:`S \\geq 32`.
        - Output: :math:`(N, S, S, 3)`.

    Returns:
        The crops as uint8.

    Raises:
        TypeError: not an array or tensor, or a dtype other than uint8 or floating.
        ValueError: a wrong shape, or float values outside [0, 255] or not finite.
    """
    if isinstance(images, Tensor):
        array = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        array = images
    else:
        raise TypeError(f"Expected {name} to be a numpy array or torch.Tensor, got {type(images).__name__}")
    if array.ndim != 4 or 3 not in (array.shape[1], array.shape[-1]):
        raise ValueError(f"Expected {name} of shape (N, 3, S, S) or (N, S, S, 3), got {tuple(array.shape)}")
    if array.shape[-1] != 3:
        array = array.transpose(0, 2, 3, 1)
    side = array.shape[1]
    if array.shape[2] != side or side < MIN_SIDE:
        raise ValueError(f"Expected square {name} of side >= {MIN_SIDE} (aligned crops), got {tuple(images.shape)}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"Expected {name} of dtype uint8 or floating, got {array.dtype}")
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"Expected finite {name}, got NaN or infinity")
    if array.size and (array.min() < 0.0 or array.max() > 255.0):
        raise ValueError(f"Expected {name} in [0, 255], got values in [{array.min():.3g}, {array.max():.3g}]")
    return np.ascontiguousarray(np.rint(array).astype(np.uint8))


class DlibJudge:
    """dlib's 128-d ResNet face descriptor for aligned 112x112 crops (pretrained, never trained here).

    Args:
        pad: edge padding on each side, as a fraction of the crop side (0.5: a 112 crop becomes 224).
        upscale: integer upscaling of the padded crop before landmarking (bicubic).
        jitters: dlib's test-time jitters per face (0: one pass; more is slower and smoother).
        batch_size: chips per call of the descriptor network.

    Shape:
        - images: :math:`(N, 3, S, S)` or :math:`(N, S, S, 3)`, RGB, uint8 or float in [0, 255].
        - Output of :meth:`embed`: :math:`(N, 128)`.
    """

    threshold = THRESHOLD

    def __init__(self, pad: float = 0.5, upscale: int = 2, jitters: int = 0, batch_size: int = 32) -> None:
        from fmix._optional import require

        dlib = require("dlib", "judge")
        if isinstance(pad, bool) or not isinstance(pad, (int, float)) or not 0.0 <= pad <= 2.0:
            raise ValueError(f"Expected pad in [0, 2], got {pad!r}")
        for value, label, low in ((upscale, "upscale", 1), (jitters, "jitters", 0), (batch_size, "batch_size", 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Expected {label} to be an int >= {low}, got {value!r}")
        folder = model_folder()
        self._dlib = dlib
        self.landmarks = dlib.shape_predictor(str(folder / LANDMARKS_FILE))
        self.descriptor = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR_FILE))
        self.pad, self.upscale, self.jitters, self.batch_size = float(pad), upscale, jitters, batch_size

    def face_box(self, side: int) -> tuple[int, int, int, int]:
        """The fixed face box in the padded, upscaled image of a crop of side ``side``."""
        margin = round(self.pad * side)
        scale = side / 112.0
        return tuple(int(round((v * scale + margin) * self.upscale)) for v in FACE_BOX_112)  # type: ignore[return-value]

    def chips(self, images: object) -> np.ndarray:
        """dlib's aligned 150x150 chips of the crops (what the descriptor network sees).

        Args:
            images: aligned RGB crops (see the class's Shape).

        Shape:
            - Output: :math:`(N, 150, 150, 3)`.

        Returns:
            The chips, uint8.
        """
        faces = as_hwc_uint8(images)
        side = faces.shape[1]
        margin = round(self.pad * side)
        box = self._dlib.rectangle(*self.face_box(side))
        chips = np.empty((len(faces), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
        for i, face in enumerate(faces):
            padded = np.pad(face, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
            if self.upscale > 1:
                import cv2

                padded = cv2.resize(padded, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_CUBIC)
            shape = self.landmarks(padded, box)
            chips[i] = self._dlib.get_face_chip(padded, shape, size=CHIP_SIZE, padding=0.25)
        return chips

    def embed(self, images: object) -> Tensor:
        """dlib descriptors of aligned crops.

        Args:
            images: aligned RGB crops (see the class's Shape); an empty batch gives an empty result.

        Shape:
            - Output: :math:`(N, 128)`.

        Returns:
            The descriptors, float32 on the CPU (not normalised: compare them by Euclidean distance).
        """
        faces = as_hwc_uint8(images)
        out = np.empty((len(faces), DESCRIPTOR_SIZE), dtype=np.float32)
        beat = Heartbeat("judge descriptors", total=len(faces))
        for start in range(0, len(faces), self.batch_size):
            beat(start)
            chips = list(self.chips(faces[start : start + self.batch_size]))
            out[start : start + len(chips)] = np.asarray(self.descriptor.compute_face_descriptor(chips, self.jitters))
        return torch.from_numpy(out)

    @staticmethod
    def distance(a: Tensor, b: Tensor) -> Tensor:
        """Euclidean distances between two sets of descriptors.

        Args:
            a: descriptors :math:`(A, 128)`.
            b: descriptors :math:`(B, 128)`.

        Shape:
            - Output: :math:`(A, B)`.

        Returns:
            The distance matrix; below :data:`THRESHOLD` means the same person.
        """
        for value, label in ((a, "a"), (b, "b")):
            if not isinstance(value, Tensor):
                raise TypeError(f"Expected {label} to be a torch.Tensor, got {type(value).__name__}")
            if value.dim() != 2 or value.shape[1] != DESCRIPTOR_SIZE:
                raise ValueError(f"Expected {label} of shape (N, {DESCRIPTOR_SIZE}), got {tuple(value.shape)}")
        return torch.cdist(a.float(), b.float())
