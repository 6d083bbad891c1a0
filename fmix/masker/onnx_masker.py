"""An exported masker run by ONNX Runtime, checked against its metadata before any face goes through it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from fmix.device import onnx_providers
from fmix.masker.build import masker_from_metadata
from fmix.masker.metadata import policy_k_values, validate_masker_metadata
from fmix.masker.protection import Protection


class OnnxMasker:
    """An exported masker on ONNX Runtime (CUDA when available, else CPU), with its metadata.

    The metadata is validated (:func:`~fmix.masker.metadata.validate_masker_metadata`: schema,
    finite numbers, the binding of the release settings) and the graph is run on a probe batch
    against the masking the metadata describes; either failing refuses the masker.

    Args:
        path: the ``masker.onnx`` file.
        providers: ONNX Runtime providers (default: CUDA first if present, then CPU).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"masker not found: {path} (make one with `fmix export`)")
        if providers is None:
            providers = onnx_providers("auto")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} is not a valid ONNX masker: {err}") from err
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.settings = validate_masker_metadata(self.metadata, str(path))
        self.input_size, self.upsample = self.settings["input_size"], self.settings["upsample"]
        self.protection = Protection(self, self.settings["mixing"], tuple(self.settings["k_values"]))
        self.mixing = self.protection.mixing
        shapes = {item.name: item.shape for item in self.session.get_inputs()}
        if shapes.get("images", [None])[1:] != [3, self.input_size, self.input_size] or "policy_noise" not in shapes:
            raise ValueError(
                f"{path} does not take faces of its metadata's input_size={self.input_size}: its inputs are {shapes}"
            )
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self._verify_graph(path)

    def _verify_graph(self, path: Path) -> None:
        """Refuse a graph that does not compute the masking its metadata describes.

        A probe batch goes through the graph and through the fused transform rebuilt from the
        metadata (channels, statistics, upsampling); a pass-through, re-weighted or zeroed graph
        gives other numbers. The k output must be one of the metadata's k values (its fixed k for
        a fixed policy).
        """
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(4, 3, self.input_size, self.input_size, generator=generator) * 255
        noise = torch.rand(4, generator=generator)
        try:
            masked, k = self(probe, noise)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} does not run as an fmix masker on a probe batch: {err}") from err
        with torch.no_grad():
            expected = masker_from_metadata(self.metadata).masked(probe.double())
        if tuple(masked.shape) != tuple(expected.shape):
            raise ValueError(
                f"{path}: its graph outputs {tuple(masked.shape)} where its metadata describes {tuple(expected.shape)}: refusing an altered masker"
            )
        error = ((masked.double() - expected).norm() / expected.norm()).item()
        if not error < 1e-4:
            raise ValueError(
                f"{path}: its graph does not compute the masking its metadata describes (relative error {error:.2g} on a probe batch): refusing an altered masker"
            )
        allowed = policy_k_values(self.settings)
        if not set(k.tolist()) <= set(allowed):
            raise ValueError(
                f"{path}: its graph draws k {sorted(set(k.tolist()))} outside its policy's {allowed}: refusing an altered masker"
            )

    def __call__(self, images: torch.Tensor, policy_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            masked, k = self.session.run(None, {"images": images.numpy(), "policy_noise": policy_noise.numpy()})
        except InvalidArgument as err:  # inputs the model's graph does not accept
            raise ValueError(f"the masker refuses faces of shape {tuple(images.shape)}: {err}") from err
        return torch.from_numpy(masked), torch.from_numpy(k)

    @property
    def draws_k(self) -> list[int]:
        """The k this masker's policy can draw (its fixed k, or every k of its strategy network)."""
        return policy_k_values(self.settings)
