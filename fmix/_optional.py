"""Optional dependencies: import a package that an extra of ``fmix-privacy`` installs, or say which extra.

The library installs without the pipeline engines, dlib or opacus (``pip install fmix-privacy``);
the code that needs one of them imports it through :func:`require`, so a missing package fails
with the ``pip install`` line that brings it instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

DIST_NAME = "fmix-privacy"

# Import name -> (the extra that installs it, what fmix uses it for). pyproject.toml's extras hold the
# same packages (tests/test_packaging.py checks that each extra named here exists).
EXTRAS: dict[str, tuple[str, str]] = {
    "dlib": ("judge", "the dlib judge of identity (attack.judge: dlib)"),
    "face_recognition_models": ("judge", "the dlib judge's model files"),
    "opacus": ("dp", "DP-SGD (method dpsgd)"),
    "matplotlib": ("pipeline", "the report's figures (fmix report)"),
    "snakemake": ("pipeline", "the Snakemake pipeline"),
    "dvc": ("pipeline", "the DVC pipeline"),
    "ruamel.yaml": ("pipeline", "fmix pipeline profile (keeps params.yaml's comments)"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def install_hint(module: str, extra: str | None = None) -> str:
    """The one-line message for a missing optional package."""
    extra = extra or EXTRAS[module.split(".")[0]][0]
    purpose = EXTRAS.get(module.split(".")[0], (extra, ""))[1]
    what = f" for {purpose}" if purpose else ""
    return (
        f"the package {module.split('.')[0]!r} is missing: fmix needs it{what}. "
        f"Install the extra: pip install '{DIST_NAME}[{extra}]' (or '{DIST_NAME}[all]')"
    )


def require(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module``, or fail with a message naming the extra of fmix-privacy that installs it.

    Args:
        module: the import name (``"dlib"``, ``"opacus.validators"``).
        extra: the extra that installs it (default: the one :data:`EXTRAS` gives for its top package).

    Returns:
        The imported module.

    Raises:
        MissingExtraError: the package (not a module inside an installed package) is missing.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name != top:
            raise  # the package is there, something inside or under it is not: a broken install, not a missing extra
        raise MissingExtraError(install_hint(module, extra), name=top) from err


# torch's dynamo ONNX exporter logs one warning per torchvision operator it cannot register when
# torchvision is not installed ("torchvision is not installed. Skipping torchvision::nms", ...).
# fmix uses no torchvision operator and does not depend on torchvision (a torchvision pin would
# replace a user's torch), so that notice is dropped; the exporter's other messages are kept.
TORCHVISION_NOTICE_LOGGER = "torch.onnx._internal.exporter._registration"


class _DropTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


def drop_torchvision_notice() -> None:
    """Filter the exporter's "torchvision is not installed" warnings (once; imports no torch)."""
    logger = logging.getLogger(TORCHVISION_NOTICE_LOGGER)
    if not any(isinstance(item, _DropTorchvisionNotice) for item in logger.filters):
        logger.addFilter(_DropTorchvisionNotice())
