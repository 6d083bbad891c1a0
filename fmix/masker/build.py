"""Building a masker from parameters and public faces, and back from its stored metadata."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from fmix import __version__
from fmix.data.faces import load_faces
from fmix.freq import NUM_CHANNELS, FrequencyMask, RunningChannelStats, block_dct, select_channels
from fmix.freq.transform import FrequencyTransform
from fmix.masker.metadata import bind_metadata, validate_masker_metadata
from fmix.masker.module import FixedKPolicy, Masker
from fmix.masker.protection import MixingConfig
from fmix.params import ExportParams, MixingParams


def faces_to_tensor(batch) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) float32 tensor in [0, 255]."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().contiguous()


def public_channel_stats(paths: list[Path], upsample: int, batch_size: int = 128) -> tuple[RunningChannelStats, int]:
    """Per-channel statistics of the block DCT of public faces (the attacker-public split).

    Args:
        paths: aligned public faces.
        upsample: the transform's ``u``.
        batch_size: faces per step.

    Returns:
        The accumulated statistics and the number of faces used.
    """
    stats, used = RunningChannelStats(), 0
    for start in range(0, len(paths), batch_size):
        faces, loaded, _ = load_faces(paths[start : start + batch_size])
        if loaded:
            with torch.no_grad():
                stats.update(block_dct(faces_to_tensor(faces), upsample))
            used += len(loaded)
    if used == 0:
        raise ValueError("no readable public face to compute channel statistics from")
    return stats, used


def params_hash(params: ExportParams, mixing: MixingParams | None = None) -> str:
    """Short hash of the masking and mixing parameters, stored with the masker."""
    values = {"export": asdict(params), "mixing": asdict(mixing or MixingParams())}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def build_masker(params: ExportParams, stats: RunningChannelStats, mixing: MixingParams | None = None) -> Masker:
    """Assemble the masker: channel selection, normalisation by public statistics, fixed-k policy.

    Args:
        params: the ``export`` parameters.
        stats: public-face channel statistics (:func:`public_channel_stats`).
        mixing: the ``mixing`` parameters (the policy's k values; default: the defaults).

    Returns:
        The masker in eval mode.

    Raises:
        ValueError: ``export.k`` is not one of ``mixing.k_values``.
    """
    k_values = (mixing or MixingParams()).k_values
    by_energy = params.keep_lowest_energy is not None or params.keep_highest_energy is not None
    kept = select_channels(
        params.drop,
        params.low_freq_threshold,
        params.keep_lowest_energy,
        stats.energy.float() if by_energy else None,
        keep_highest_energy=params.keep_highest_energy,
    )
    mean, std = stats.stats(kept)
    mask = FrequencyMask(kept, mean.float(), std.float())
    policy = FixedKPolicy(params.k, k_values)
    return Masker(mask, params.upsample, policy, k_values).eval()


def masker_metadata(
    masker: Masker,
    params: ExportParams,
    input_size: int,
    public_faces: int | None,
    mixing: MixingParams | None = None,
    policy: str | None = None,
) -> dict[str, str]:
    """The metadata stored in ``masker.onnx`` (all values JSON strings), its release settings bound.

    Args:
        masker: the masker.
        params: the ``export`` parameters.
        input_size: side of the aligned faces.
        public_faces: faces the statistics came from (None: from a trained model).
        mixing: the ``mixing`` parameters its samples are mixed with (default: the defaults).
        policy: ``"strategy"`` for a trained strategy network (default: ``fixed:<export.k>``).

    Returns:
        Key -> JSON string; ``mixing`` is the :class:`~fmix.masker.protection.MixingConfig` (k_max:
        the masker's largest k); ``binding`` the digests of :func:`fmix.masker.metadata.bind_metadata`.
    """
    mixing = mixing or MixingParams()
    config = MixingConfig.from_params(mixing)
    values = {
        "fmix_version": __version__,
        "input_size": input_size,
        "upsample": masker.upsample,
        "kept_channels": masker.mask.kept.tolist(),
        "channel_mean": masker.mask.mean.tolist(),
        "channel_std": masker.mask.std.tolist(),
        "k_values": masker.k_values.tolist(),
        "policy": policy or f"fixed:{params.k}",
        "mixing": {**config.to_dict(), "k_max": max(masker.k_values.tolist())},
        "params_hash": params_hash(params, mixing),
        "export_params": asdict(params),
        "mixing_params": asdict(mixing),
        "public_faces_for_stats": public_faces,
    }
    return bind_metadata({key: json.dumps(value) for key, value in values.items()})


def mask_from_metadata(metadata: dict[str, str]) -> FrequencyMask:
    """Rebuild the channel mask (for visualisation or the torch path) from stored metadata."""
    return FrequencyMask(
        torch.tensor(json.loads(metadata["kept_channels"])),
        torch.tensor(json.loads(metadata["channel_mean"])),
        torch.tensor(json.loads(metadata["channel_std"])),
    )


def read_masker_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported ``masker.onnx``, without starting a runtime session, validated.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX model, or its metadata fails :func:`~fmix.masker.metadata.validate_masker_metadata`.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"masker not found: {path} (make one with `fmix export`)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises protobuf's DecodeError and others
        raise ValueError(f"{path} is not an ONNX model: {err}") from err
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    validate_masker_metadata(metadata, str(path))
    return metadata


def masker_from_metadata(metadata: dict[str, str]) -> Masker:
    """The torch masker (fixed-k policy) with the channel selection and statistics of an exported one."""
    k_values = tuple(json.loads(metadata["k_values"]))
    kind, _, value = json.loads(metadata["policy"]).partition(":")
    policy = FixedKPolicy(int(value) if kind == "fixed" else k_values[0], k_values)
    return Masker(mask_from_metadata(metadata), json.loads(metadata["upsample"]), policy, k_values).eval()


def all_channel_transform(aligned: str | Path, public_paths: list[str], upsample: int) -> FrequencyTransform:
    """Every channel, DC included, normalised by public statistics (the ``freq`` baseline's encoder).

    Args:
        aligned: output folder of ``fmix align``.
        public_paths: public faces, relative to ``aligned``.
        upsample: the transform's ``u``.

    Returns:
        The transform (no policy: it never mixes).
    """
    stats, _ = public_channel_stats([Path(aligned) / p for p in public_paths], upsample)
    kept = torch.arange(NUM_CHANNELS)
    return FrequencyTransform(FrequencyMask(kept, stats.mean.float(), stats.std.float(), allow_dc=True), upsample)
