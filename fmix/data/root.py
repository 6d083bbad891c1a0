"""Where the data sets live: ``../shared/data`` by default, ``$FMIX_DATA`` when that is set.

params.yaml names the data under the default root (``data.images``: ``../shared/data/lfw/images_deepfunneled``,
``split.lfw_pairs_file``: ``../shared/data/lfw/pairs.txt``). With ``FMIX_DATA`` set, every such path
moves under it: ``FMIX_DATA=~/data`` reads ``~/data/lfw/images_deepfunneled`` (the layout
``fmix data lfw ~/data`` writes). This module is the one place that rule lives; the Snakemake
pipeline (workflow/rules/common.smk), ``fmix split`` and the tests apply it. DVC reads params.yaml
as it is: there, set the paths in params.yaml or per run (``dvc exp run -S data.images=...``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DATA_ENV = "FMIX_DATA"
DEFAULT_DATA_ROOT = "../shared/data"  # relative to the repository root, where the pipeline runs
# The params that name data under the root: every string of the data section, and these keys.
DATA_PATH_KEYS = (("split", "lfw_pairs_file"),)


def _env_root() -> str | None:
    value = os.environ.get(DATA_ENV, "").strip()
    return str(Path(value).expanduser()) if value else None


def data_root(relative_to: str | Path | None = None) -> Path:
    """The data root: ``$FMIX_DATA`` if set, else :data:`DEFAULT_DATA_ROOT`.

    Args:
        relative_to: the folder the default is relative to (the repository root); None: the working folder.
    """
    env = _env_root()
    if env is not None:
        return Path(env)
    if relative_to is None:
        return Path(DEFAULT_DATA_ROOT)
    return Path(os.path.normpath(Path(relative_to) / DEFAULT_DATA_ROOT))  # normalised, links not followed


def resolve_data_path(path: str | Path) -> str:
    """``path`` with the default data root replaced by ``$FMIX_DATA`` (when set); other paths as they are."""
    text = Path(path).as_posix() if isinstance(path, Path) else str(path)
    env = _env_root()
    if env is None:
        return text
    if text == DEFAULT_DATA_ROOT or text.startswith(DEFAULT_DATA_ROOT + "/"):
        return env + text[len(DEFAULT_DATA_ROOT) :]
    return text


def apply_data_root(params: dict[str, Any]) -> dict[str, Any]:
    """Params (a parsed params.yaml) with their data paths moved under ``$FMIX_DATA``, in place.

    Args:
        params: the whole params mapping (sections that are missing or not mappings are left alone).

    Returns:
        The same mapping.
    """
    data = params.get("data")
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str):
                data[key] = resolve_data_path(value)
    for section, key in DATA_PATH_KEYS:
        values = params.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            values[key] = resolve_data_path(values[key])
    return params
