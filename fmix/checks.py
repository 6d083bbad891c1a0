"""Input checks shared by the fmix modules (kornia style: clear TypeError / ValueError messages)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_tensor(x: object, name: str) -> Tensor:
    """Raise TypeError unless ``x`` is a tensor; return it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected {name} to be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(x: Tensor, name: str) -> None:
    """Raise TypeError unless ``x`` has a floating dtype."""
    if not x.is_floating_point():
        raise TypeError(f"Expected {name} with a floating dtype, got {x.dtype}")


def check_integer(x: Tensor, name: str) -> None:
    """Raise TypeError unless ``x`` has an integer (non-bool) dtype."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"Expected {name} with an integer dtype, got {x.dtype}")


def check_shape_bchw(x: Tensor, name: str, channels: int | None = None) -> None:
    """Raise ValueError unless ``x`` is (B, C, H, W), with C == ``channels`` when given."""
    wanted = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"Expected {name} of shape {wanted}, got {tuple(x.shape)}")


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """Raise TypeError unless ``value`` is a Python int (bool excluded), ValueError if below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected {name} to be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected {name} >= {minimum}, got {value}")
    return value


def check_number(value: object, name: str) -> float:
    """Raise TypeError unless ``value`` is a real Python number (bool excluded); return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected {name} to be a number, got {type(value).__name__}")
    return float(value)


def is_tracing() -> bool:
    """True while tracing, compiling or exporting, where data-dependent checks must be skipped."""
    return (
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )
