"""The metadata of an exported masker: its schema, and the binding of the fields that decide a release.

``fmix export`` stores the masker's parameters as JSON strings in the ONNX model's metadata. The
fields in :data:`BOUND_FIELDS` decide what a release of ``fmix mask`` protects: the input size, the
transform (upsampling, kept channels and their statistics), the k the policy may draw, and the
mixing (weight law, cap, sign mask, noise, ...). ``binding`` holds a SHA-256 per bound field,
computed at export; :func:`validate_masker_metadata` recomputes each and refuses a masker whose
metadata was edited afterwards, naming the field.

What the binding protects against: accidents, stale files and careless edits (noise set to 0 or a
sign mask switched off by hand, a metadata block copied from another masker). It is not a
signature: whoever edits a field and recomputes its hash with this code is not stopped. The graph
itself is checked separately, against these fields, on a probe batch
(:class:`fmix.masker.onnx_masker.OnnxMasker`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from typing import Any

from fmix.freq import NUM_CHANNELS
from fmix.io import parse_json_field
from fmix.masker.protection import MixingConfig

BOUND_FIELDS = (
    "input_size",
    "upsample",
    "kept_channels",
    "channel_mean",
    "channel_std",
    "k_values",
    "policy",
    "mixing",
)
REQUIRED_FIELDS = (*BOUND_FIELDS, "params_hash", "binding")
UPSAMPLE_FACTORS = (1, 2, 4, 8)


def field_digest(value: Any) -> str:
    """SHA-256 (hex) of a metadata value in canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def bind_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The metadata with ``binding``: one digest per field of :data:`BOUND_FIELDS`.

    Args:
        metadata: key -> JSON string, every bound field present.

    Returns:
        A copy with ``binding`` added (a JSON object field -> digest).
    """
    values = {key: json.loads(metadata[key]) for key in BOUND_FIELDS}
    return {**metadata, "binding": json.dumps({key: field_digest(value) for key, value in values.items()})}


def binding_digest(metadata: dict[str, str]) -> str:
    """One digest over the whole binding: what ``run.json`` records of the masker's release settings."""
    return field_digest(json.loads(metadata["binding"]))[:16]


def _finite_numbers(values: Any, name: str, source: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{source}: its metadata field {name!r} must be a non-empty list of numbers")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{source}: its metadata field {name!r} holds {value!r}, not a finite number")
    return values


def _positive_ints(values: Any, name: str, source: str) -> list[int]:
    if not isinstance(values, list) or not values or not all(type(v) is int and v >= 1 for v in values):
        raise ValueError(
            f"{source}: its metadata field {name!r} must be a non-empty list of integers >= 1, got {values!r}"
        )
    return values


def _mixing(value: Any, source: str) -> MixingConfig:
    known = [f.name for f in fields(MixingConfig)]
    if not isinstance(value, dict):
        raise ValueError(
            f"{source}: its metadata field 'mixing' must be a JSON object with keys {known}, got {value!r}"
        )
    unknown, missing = sorted(set(value) - set(known)), [key for key in known if key not in value]
    if unknown or missing:
        raise ValueError(
            f"{source}: its metadata field 'mixing' has unknown keys {unknown} / lacks {missing} (keys: {known})"
        )
    try:
        return MixingConfig(**value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: its metadata field 'mixing' is invalid: {err}") from err


def validate_masker_metadata(metadata: dict[str, str], source: str) -> dict[str, Any]:
    """Check an exported masker's metadata: every field present, well-typed, finite and as bound at export.

    Args:
        metadata: key -> JSON string, as stored in ``masker.onnx``.
        source: the masker file, for messages.

    Returns:
        The parsed bound fields (``mixing`` as a :class:`MixingConfig`).

    Raises:
        ValueError: a field is missing, not JSON, of the wrong type or not finite, or differs from
            what the masker was exported with (its ``binding``); the message names the field.
    """
    missing = [key for key in REQUIRED_FIELDS if key not in metadata]
    if missing:
        hint = (
            " (a masker exported before its release settings were bound: export it again)"
            if missing == ["binding"]
            else ""
        )
        raise ValueError(f"{source} is not a masker of this fmix: its metadata lacks {', '.join(missing)}{hint}")
    values = {key: parse_json_field(metadata[key], key, source) for key in (*BOUND_FIELDS, "binding")}
    binding = values.pop("binding")
    if not isinstance(binding, dict) or sorted(binding) != sorted(BOUND_FIELDS):
        raise ValueError(f"{source}: its metadata field 'binding' must map each of {list(BOUND_FIELDS)} to a digest")
    changed = [key for key in BOUND_FIELDS if binding[key] != field_digest(values[key])]
    if changed:
        raise ValueError(
            f"{source}: its metadata field(s) {', '.join(changed)} differ from what the masker was exported with "
            "(the binding's digest does not match): refusing an edited masker; export it again"
        )
    for key in ("input_size", "upsample"):
        if type(values[key]) is not int or values[key] < 1:
            raise ValueError(f"{source}: its metadata field {key!r} must be a positive integer, got {values[key]!r}")
    if values["upsample"] not in UPSAMPLE_FACTORS:
        raise ValueError(
            f"{source}: its metadata field 'upsample' must be one of {UPSAMPLE_FACTORS}, got {values['upsample']}"
        )
    kept = values["kept_channels"]
    if not isinstance(kept, list) or not kept or not all(type(c) is int and 0 <= c < NUM_CHANNELS for c in kept):
        raise ValueError(
            f"{source}: its metadata field 'kept_channels' must be a non-empty list of channels in [0, {NUM_CHANNELS})"
        )
    for key in ("channel_mean", "channel_std"):
        if len(_finite_numbers(values[key], key, source)) != len(kept):
            raise ValueError(
                f"{source}: its metadata field {key!r} has {len(values[key])} values for {len(kept)} kept channels"
            )
    if min(values["channel_std"]) <= 0:
        raise ValueError(f"{source}: its metadata field 'channel_std' must be positive")
    k_values = _positive_ints(values["k_values"], "k_values", source)
    policy = values["policy"]
    kind, _, fixed = policy.partition(":") if isinstance(policy, str) else ("", "", "")
    if not (policy == "strategy" or (kind == "fixed" and fixed.isdigit() and int(fixed) in k_values)):
        raise ValueError(
            f"{source}: its metadata field 'policy' must be 'strategy' or 'fixed:K' with K in k_values {k_values}, got {policy!r}"
        )
    values["mixing"] = _mixing(values["mixing"], source)
    if values["mixing"].k_max != max(k_values):
        raise ValueError(
            f"{source}: its metadata's mixing.k_max={values['mixing'].k_max} is not the largest of k_values {k_values}"
        )
    return values


def policy_k_values(values: dict[str, Any]) -> list[int]:
    """The k a masker's policy can draw (its fixed k, or every k of a strategy network).

    Args:
        values: the parsed metadata of :func:`validate_masker_metadata`.
    """
    kind, _, fixed = values["policy"].partition(":")
    return [int(fixed)] if kind == "fixed" else list(values["k_values"])
