"""One rule for devices: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, as every stage reads it.

The ``device`` keys of ``params.yaml`` (``train``, ``evaluate``, ``evaluator``, ``attack``) and
:class:`~fmix.attacks.reconstruction.AttackConfig` take one of these strings. A params file is
checked with :func:`check_device_spec` (the string only: a file written for a GPU machine loads
on a laptop); the stage that runs torch work turns it into a :class:`torch.device` with
:func:`resolve_device`, which is where a CUDA request without CUDA fails.

- ``auto``: the first CUDA device when CUDA is available, else the CPU;
- ``cpu``: the CPU;
- ``cuda``: the current CUDA device (an error without CUDA);
- ``cuda:N``: CUDA device N (an error without CUDA, or when N is not below the device count).

This module imports torch only inside :func:`resolve_device`, so :mod:`fmix.params` can check
the strings without loading it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N")
_SPEC = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]*))?")


def check_device_spec(spec: object, name: str = "device") -> str:
    """Check the form of a device string without looking for CUDA.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (N a non-negative integer).
        name: what the value is called in messages (e.g. ``"train.device"``).

    Returns:
        ``spec``, unchanged.

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: any other string.

    Example:
        >>> check_device_spec("cuda:1")
        'cuda:1'
    """
    if not isinstance(spec, str):
        raise TypeError(f"Expected {name} to be a string ({' | '.join(DEVICE_SPECS)}), got {type(spec).__name__}")
    if not _SPEC.fullmatch(spec):
        raise ValueError(f"Expected {name} to be one of {' | '.join(DEVICE_SPECS)} (N a device index), got {spec!r}")
    return spec


def resolve_device(spec: str = "auto") -> "torch.device":
    """The torch device a device string names on this machine.

    Args:
        spec: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``torch.device("cpu")``, ``torch.device("cuda")`` or ``torch.device("cuda", N)``
        (``auto`` gives ``cuda:0``).

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: a malformed string, a CUDA device on a machine without CUDA, or an index
            not below ``torch.cuda.device_count()``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    check_device_spec(spec)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        return torch.device("cuda", 0) if available else torch.device("cpu")
    if not available:
        raise ValueError(
            f"device {spec!r} asks for CUDA, but CUDA is not available on this machine (use 'auto' or 'cpu')"
        )
    if spec == "cuda":
        return torch.device("cuda")
    index, count = int(spec.split(":")[1]), torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"device {spec!r} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def rank_device(spec: str, rank: int = 0) -> "torch.device":
    """The device of one training process: ``auto`` and ``cuda`` spread the ranks over the GPUs.

    Args:
        spec: a device string (:func:`resolve_device`).
        rank: the process's rank (``torchrun``); with ``auto`` or ``cuda``, rank r gets
            ``cuda:(r mod device count)``; an explicit ``cuda:N`` or ``cpu`` is kept for every rank.

    Returns:
        The device.

    Raises:
        ValueError: as :func:`resolve_device`.
    """
    import torch

    device = resolve_device(spec)
    if device.type == "cuda" and spec in ("auto", "cuda"):
        return torch.device("cuda", rank % torch.cuda.device_count())
    return device


def budget_clock(device: "torch.device | str") -> str:
    """What a time budget counts on ``device``: ``"process"`` CPU seconds on the CPU (fair on a
    shared machine), ``"wall"`` seconds on CUDA (the CPU mostly waits for the GPU there).

    Args:
        device: a torch device or its string.

    Returns:
        ``"process"`` or ``"wall"``.
    """
    return "wall" if str(device).startswith("cuda") else "process"


def clock_function(clock: str):
    """The clock a budget of kind ``clock`` reads: :func:`time.process_time` or :func:`time.perf_counter`.

    Raises:
        ValueError: ``clock`` is neither ``"process"`` nor ``"wall"``.
    """
    if clock not in ("process", "wall"):
        raise ValueError(f"Expected clock 'process' or 'wall', got {clock!r}")
    return time.process_time if clock == "process" else time.perf_counter


def onnx_providers(device: str = "auto") -> list:
    """ONNX Runtime providers for a device string: CUDA first where asked (``auto``: when present), then the CPU.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`fmix.device.check_device_spec`);
            ``cuda:N`` runs on device N (the provider's ``device_id``).

    Returns:
        Provider names, or ``(name, options)`` for CUDA device N.

    Raises:
        ValueError: a CUDA device asked for, but this ONNX Runtime has no CUDA provider.
    """
    import onnxruntime as ort

    check_device_spec(device)
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        cuda = (
            ("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])})
            if ":" in device
            else "CUDAExecutionProvider"
        )
        return [cuda, "CPUExecutionProvider"]
    if device != "auto":
        raise ValueError(
            f"device {device!r} asks for CUDA, but this ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    return ["CPUExecutionProvider"]
