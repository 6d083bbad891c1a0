"""Profiles: named overlays of params.yaml (``workflow/params/<name>.yaml``).

``quick`` is params.yaml itself (the defaults). An overlay holds only what differs; it is merged
into params.yaml key by key (mappings recursively, everything else replaced), the way Snakemake
merges ``--configfile``/``--config``. The ``sweep`` section is replaced as a whole, so a profile
names exactly the methods it runs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml

from fmix.io import atomic_write
from fmix.params import DEFAULT_SWEEP, SECTIONS, ParamsError, defaults_as_dict, read_params_file

PROFILES_DIR = Path("workflow") / "params"


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in (nested mappings merged, other values and ``sweep`` replaced)."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "sweep":
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def profile_names(root: str | Path = ".") -> list[str]:
    """The profiles available: ``quick`` and one per overlay file."""
    return ["quick"] + sorted(path.stem for path in (Path(root) / PROFILES_DIR).glob("*.yaml"))


def _holds(params: dict[str, Any], overlay: dict[str, Any]) -> bool:
    """Whether ``params`` has every value of ``overlay`` (mappings recursively; ``sweep`` as a whole)."""
    for key, value in overlay.items():
        if key not in params:
            return False
        if isinstance(value, dict) and isinstance(params[key], dict) and key != "sweep":
            if not _holds(params[key], value):
                return False
        elif params[key] != value:
            return False
    return True


def _settings(overlay: dict[str, Any]) -> int:
    return sum(_settings(value) if isinstance(value, dict) else 1 for value in overlay.values())


def profile_of(params: dict[str, Any], root: str | Path = ".") -> str | None:
    """The profile a params mapping was made with, read from its values.

    A named profile when ``params`` holds all of its overlay (the one with most settings where
    several do), ``quick`` when its stage sections and sweep are the code's defaults, else None
    (params edited by hand).

    Args:
        params: a params mapping (``params.yaml``, or Snakemake's config copy).
        root: the repository root holding ``workflow/params/``.

    Returns:
        The profile's name, or None.
    """
    held = []
    for name in profile_names(root)[1:]:
        overlay = read_params_file(Path(root) / PROFILES_DIR / f"{name}.yaml")
        if _holds(params, overlay):
            held.append((_settings(overlay), name))
    if held:
        return max(held)[1]
    stages = {name: params.get(name) for name in SECTIONS}
    return "quick" if stages == defaults_as_dict() and params.get("sweep") == DEFAULT_SWEEP else None


def apply_profile(params_path: str | Path, name: str, root: str | Path = ".") -> dict[str, Any]:
    """Merge profile ``name``'s overlay into a params file, atomically.

    Args:
        params_path: the params file (``params.yaml``), rewritten in place.
        name: the profile (``quick`` changes nothing: use ``git checkout params.yaml`` to return).
        root: the repository root holding ``workflow/params/``.

    Returns:
        The merged params.
    """
    base = read_params_file(params_path)
    if name == "quick":
        return base
    overlay_path = Path(root) / PROFILES_DIR / f"{name}.yaml"
    if not overlay_path.is_file():
        raise ParamsError(f"unknown profile {name!r}; profiles: {', '.join(profile_names(root))}")
    overlay = read_params_file(overlay_path)
    merged = merge(base, overlay)
    document = _round_trip().load(Path(params_path).read_text(encoding="utf-8"))
    _merge_keeping_comments(document, overlay)
    text = io.StringIO()
    _round_trip().dump(document, text)
    with atomic_write(params_path) as out:
        out.write(f"# params.yaml with profile {name} ({overlay_path}) merged in by `fmix pipeline profile {name}`\n")
        out.write(text.getvalue())
    return merged


def _round_trip():
    """A YAML loader/dumper that keeps comments and key order (ruamel.yaml's round-trip mode)."""
    from fmix._optional import require

    handler = require("ruamel.yaml", "pipeline").YAML(typ="rt")
    handler.preserve_quotes = True
    handler.width = 4096  # never re-wrap long comments or values
    return handler


def _merge_keeping_comments(document, overlay: dict[str, Any]) -> None:
    """:func:`merge` applied in place to a round-trip document, so its comments stay where they were."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict) and key != "sweep":
            _merge_keeping_comments(document[key], value)
        else:
            document[key] = value


def params_file_for(
    config: dict[str, Any], params_path: str | Path = "params.yaml", copy: str | Path = "logs/params/config.yaml"
) -> str:
    """The params file Snakemake's commands read: ``params.yaml``, or a copy holding ``config``.

    Snakemake's ``--configfile``/``--config`` change ``config`` but not params.yaml, which the
    ``fmix`` commands read; when they differ, ``config`` is written to ``copy`` (one fixed name,
    so a changed override reruns only the stages whose sections it changes).

    Args:
        config: Snakemake's config (params.yaml with the overrides applied).
        params_path: the params file Snakemake loaded.
        copy: where the copy goes.

    Returns:
        The path to pass as ``--params``.
    """
    if read_params_file(params_path) == config:
        return str(params_path)
    text = "# Snakemake's config (params.yaml with --configfile/--config applied): what the commands read.\n"
    text += yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)
    copy = Path(copy)
    if not copy.is_file() or copy.read_text() != text:
        with atomic_write(copy) as out:
            out.write(text)
    return str(copy)
