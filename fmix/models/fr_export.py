"""Face embedders in ONNX: ``fmix export-fr`` writes a trained model as one, and any can serve as a judge.

:func:`export_face_embedder` writes a ``model.pt`` of ``fmix train`` as an ONNX graph from aligned
faces to L2-normalised embeddings: input ``images`` (B, 3, 112, 112) float32 RGB in [0, 255],
output ``embedding`` (B, E) float32 of unit norm, batch dynamic. The graph holds the whole
model as ``fmix evaluate`` embeds a face: the method's frozen encoder (RGB normalisation, or
the masker's transform and channel masking), the backbone (reading ``|x|`` where the method
mixes under a sign mask) and the normalisation; optionally the average with the mirrored face.
The metadata (``metadata_props``) names the method, embedding size and input convention.

:class:`OnnxFaceEmbedder` runs such a file, or any ONNX face embedder of 112 x 112 aligned RGB
faces (e.g. insightface's ``w600k_r50.onnx``), on ONNX Runtime: the input convention comes from
the metadata (``input_mean``, ``input_std``), else insightface's ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix import __version__
from fmix.checks import check_float, check_shape_bchw, check_tensor
from fmix.device import onnx_providers
from fmix.models.artifact import TrainedModel, load_trained_model
from fmix.models.encoders import NoisyFrequencyEncoder
from fmix.onnx_export import export_module

FORMAT = "fmix-face-embedder"
INPUT_NAME, OUTPUT_NAME = "images", "embedding"
INPUT_SIZE = 112
# insightface's ArcFace ONNX models read (x - 127.5) / 127.5 of RGB faces: the default for a file without metadata
DEFAULT_MEAN, DEFAULT_STD = 127.5, 127.5
MIN_OPSET = 17


class FaceEmbedder(nn.Module):
    """A trained model as one function: aligned RGB faces -> L2-normalised embeddings.

    Args:
        model: the trained model (encoder, backbone; the head is not used).
        flip_average: add the mirrored face's normalised embedding before normalising (as
            ``evaluate.flip_average``).

    Shape:
        - images: :math:`(B, 3, 112, 112)` float RGB in [0, 255].
        - Output: :math:`(B, E)` float32, unit L2 norm.
    """

    def __init__(self, model: TrainedModel, flip_average: bool = False) -> None:
        super().__init__()
        self.encoder, self.backbone, self.flip_average = model.encoder, model.backbone, bool(flip_average)

    def forward(self, images: Tensor) -> Tensor:
        embedding = F.normalize(self.backbone(self.encoder(images)).float(), dim=1)
        if self.flip_average:
            mirrored = F.normalize(self.backbone(self.encoder(images.flip(-1))).float(), dim=1)
            embedding = F.normalize(embedding + mirrored, dim=1)
        return embedding


def embedder_metadata(record, flip_average: bool) -> dict[str, str]:
    """What ``export-fr`` writes into the ONNX file's ``metadata_props`` (strings)."""
    return {
        "fmix_format": FORMAT,
        "fmix_version": __version__,
        "method": record.method,
        "encoder": str(record.encoder.get("kind", "rgb" if record.method == "none" else "frequency")),
        "embedding_size": str(record.params.embedding_size),
        "input_size": str(INPUT_SIZE),
        "input": f"{INPUT_NAME}: (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) float32 aligned RGB in [0, 255]",
        "input_normalisation": "none outside the graph: it normalises (or masks) the faces itself",
        "input_mean": "0.0",
        "input_std": "1.0",
        "output": f"{OUTPUT_NAME}: (B, E) float32, L2-normalised",
        "flip_average": json.dumps(bool(flip_average)),
        "backbone": record.params.backbone,
    }


def export_face_embedder(model_path: str | Path, out: str | Path, flip_average: bool = False, opset: int = 18) -> dict:
    """Write a trained model as an ONNX face embedder (``fmix export-fr``).

    Args:
        model_path: ``model.pt`` of ``fmix train``.
        out: destination ``.onnx`` (written atomically).
        flip_average: embed the face and its mirror image (twice the work, as ``fmix evaluate``).
        opset: ONNX opset version, at least 17.

    Returns:
        ``method``, ``embedding_size``, ``bytes``, ``opset``, ``flip_average``, ``out``.

    Raises:
        FileNotFoundError: no such model.
        ValueError: not a model of ``fmix train``, a method whose encoder draws noise at every
            call (``dctdp``: no deterministic embedding to export), or an opset below 17.
    """

    if opset < MIN_OPSET:
        raise ValueError(f"Expected opset >= {MIN_OPSET}, got {opset}")
    model, record = load_trained_model(model_path, "cpu")
    if isinstance(model.encoder, NoisyFrequencyEncoder):
        raise ValueError(
            f"{model_path} ({record.method}) adds fresh Laplace noise to every input: export-fr writes deterministic embedders only"
        )
    embedder = FaceEmbedder(model, flip_average).eval()
    batch = torch.export.Dim("batch", min=1)
    data = export_module(
        embedder,
        (torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE) * 255,),
        out,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: batch}},
        opset=opset,
        metadata=embedder_metadata(record, flip_average),
        what="the FR model",
    )
    return {
        "method": record.method,
        "embedding_size": record.params.embedding_size,
        "bytes": len(data),
        "opset": opset,
        "flip_average": flip_average,
        "out": str(out),
    }


class OnnxFaceEmbedder:
    """An ONNX face embedder of 112 x 112 aligned RGB faces on ONNX Runtime.

    Args:
        path: the ``.onnx`` file: one input (B, 3, 112, 112) (batch may be dynamic), first output (B, E).
        device: ``auto`` (CUDA when ONNX Runtime has it), ``cpu``, ``cuda`` or ``cuda:N``.
        threads: intra-op threads on the CPU (None: ONNX Runtime's default).
        batch_size: faces per run (a file with a fixed batch of 1 is run face by face).

    Attributes:
        mean, std: the input convention, ``(x - mean) / std`` of RGB in [0, 255]: the file's
            ``input_mean`` / ``input_std`` metadata, else insightface's 127.5 / 127.5.
        metadata: the file's ``metadata_props``.
        embedding_size: E (None until the first run when the file leaves it symbolic).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX model, or its input is not of 3 x 112 x 112 faces.

    Shape:
        - images: :math:`(B, 3, 112, 112)` float in [0, 255].
        - Output: :math:`(B, E)` float32 on the CPU, unit L2 norm.
    """

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, batch_size: int = 64
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX face embedder not found: {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=onnx_providers(device))
        except Exception as err:  # onnxruntime raises its own InvalidGraph, InvalidProtobuf, Fail...
            raise ValueError(f"{path} is not an ONNX model ONNX Runtime can run: {err}") from err
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(
                f"{path} is not a face embedder: it takes {len(inputs)} inputs, expected one (B, 3, 112, 112)"
            )
        shape = inputs[0].shape
        if len(shape) != 4 or any(
            isinstance(want, int) and want != got for want, got in zip(shape[1:], (3, INPUT_SIZE, INPUT_SIZE))
        ):
            raise ValueError(
                f"{path} is not a face embedder of 112x112 RGB faces: its input has shape {shape}, expected (B, 3, 112, 112)"
            )
        if len(outputs[0].shape) != 2:
            raise ValueError(
                f"{path} is not a face embedder: its first output has shape {outputs[0].shape}, expected (B, E)"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.batch_size = self.fixed_batch or batch_size
        size = outputs[0].shape[1]
        self.embedding_size: int | None = size if isinstance(size, int) else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.mean = float(self.metadata.get("input_mean", DEFAULT_MEAN))
        self.std = float(self.metadata.get("input_std", DEFAULT_STD))

    @property
    def providers(self) -> list[str]:
        """The providers the session runs on."""
        return self.session.get_providers()

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embeddings of aligned faces (see the class's Shape)."""
        images = check_tensor(images, "images")
        check_shape_bchw(images, "images", 3)
        if tuple(images.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"Expected images of shape (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float()
        check_float(images, "images")
        parts = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = (
                ((images[start : start + self.batch_size].detach().float().cpu() - self.mean) / self.std)
                .contiguous()
                .numpy()
            )
            parts.append(torch.from_numpy(self.session.run([self.output_name], {self.input_name: batch})[0]).float())
        if not parts:
            return torch.zeros(0, self.embedding_size or 0)
        return F.normalize(torch.cat(parts), dim=1)


__all__ = ["FORMAT", "FaceEmbedder", "OnnxFaceEmbedder", "embedder_metadata", "export_face_embedder"]
