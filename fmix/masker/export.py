"""``fmix export``: the masker to ONNX, with its parameters in the model's metadata."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from fmix.data.faces import read_face_list
from fmix.masker.build import build_masker, masker_metadata, public_channel_stats
from fmix.masker.module import Masker, StrategyPolicy
from fmix.models.artifact import ModelRecord, load_trained_model
from fmix.models.strategy import ConfidenceSignal, StrategyNetwork
from fmix.onnx_export import export_module
from fmix.params import ExportParams, MixingParams, cap_problem

MIN_OPSET = 17  # the oldest opset the masker's operators export to
INPUT_NAMES = ("images", "policy_noise")
OUTPUT_NAMES = ("masked", "k")


def export_onnx(
    masker: Masker, path: str | Path, metadata: dict[str, str], input_size: int = 112, opset: int = 18
) -> None:
    """Write the masker as an ONNX model with a dynamic batch dimension and metadata.

    Inputs ``images`` (B, 3, S, S) float32 RGB in [0, 255] and ``policy_noise`` (B,) uniform
    in [0, 1); outputs ``masked`` (B, K, h, w) float32 and ``k`` (B,) int64.

    Args:
        masker: the masker (eval mode).
        path: destination ``.onnx`` file (written atomically).
        metadata: key -> string, stored as the model's metadata_props.
        input_size: side of the aligned faces.
        opset: ONNX opset version.
    """
    masker = masker.eval()
    example = (torch.rand(2, 3, input_size, input_size) * 255, torch.rand(2))
    batch = torch.export.Dim("batch", min=1)
    export_module(
        masker,
        example,
        path,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"images": {0: batch}, "policy_noise": {0: batch}},
        opset=opset,
        metadata=metadata,
        what="the masker",
        opset_hint="use export.opset 18",
    )


def check_opset(opset: int) -> None:
    """Refuse an opset the installed ``onnx`` cannot write (the exporter would fall back silently).

    Args:
        opset: the requested ``export.opset``.
    """
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"export.opset must be in [{MIN_OPSET}, {newest}] (the installed onnx's range), got {opset}")


def check_cap(cap: float | None, k_values: tuple[int, ...]) -> None:
    """Refuse a cap no mix of the smallest k can meet: k weights summing to 1 need ``cap * k >= 1``.

    Args:
        cap: ``mixing.cap``, the largest mixing weight (None: no cap).
        k_values: the k the policy can choose (k = 1 does not mix).

    Raises:
        ValueError: the cap is infeasible.
    """
    problem = cap_problem(cap, k_values)
    if problem is not None:
        raise ValueError(problem)


def masker_with_trained_policy(model_path: str | Path) -> Masker:
    """The masker a model was trained with, its policy replaced by the trained strategy network."""
    model, record = load_trained_model(model_path)
    if not record.policy:
        raise ValueError(f"{model_path} has no strategy network (train with method 'adaptive')")
    frequency = model.encoder.transform
    try:
        k_values = tuple(record.policy["k_table"].tolist())  # the actions the policy was trained with
        network = StrategyNetwork(
            frequency.mask.num_kept, k_values, signals=int(record.params.adaptive.policy_signal == "confidence")
        )
        network.load_state_dict(record.policy)
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{model_path} holds a damaged strategy network: {type(err).__name__}: {err}") from err
    signal = (
        ConfidenceSignal(model.backbone, model.head) if network.signals else None
    )  # the FR network travels with the policy
    return Masker(frequency.mask, frequency.upsample, StrategyPolicy(network, signal), k_values).eval()


def public_masker(
    aligned: str | Path, public_csv: str | Path, params: ExportParams, mixing: MixingParams | None = None
) -> tuple[Masker, int]:
    """The masker of ``params`` with statistics of (up to ``export.stats_images``) public faces.

    Args:
        aligned: output folder of ``fmix align``.
        public_csv: the attacker-public split: statistics never come from private faces.
        params: the ``export`` parameters.
        mixing: the ``mixing`` parameters (the policy's k values).

    Returns:
        (the masker in eval mode, the number of faces its statistics came from).
    """
    rows = read_face_list(public_csv)
    rows = random.Random(0).sample(rows, min(len(rows), params.stats_images))
    stats, used = public_channel_stats([Path(aligned) / path for path, _ in rows], params.upsample)
    return build_masker(params, stats, mixing), used


def export_masker(
    aligned: str | Path,
    public_csv: str | Path,
    out_path: str | Path,
    params: ExportParams,
    input_size: int = 112,
    policy_model: str | Path | None = None,
    mixing: MixingParams | None = None,
) -> dict:
    """Compute public channel statistics, build the masker and export it.

    Args:
        aligned: output folder of ``fmix align``.
        public_csv: the attacker-public split (``public.csv`` of ``fmix split``): statistics come
            from public faces only, never from the private ones.
        out_path: destination ``masker.onnx``.
        params: ``export`` parameters.
        input_size: side of the aligned faces.
        policy_model: a ``model.pt`` trained with the adaptive method: its strategy network becomes
            the policy, and its masking (channels, statistics) and mixing are kept exactly as trained.
        mixing: the ``mixing`` parameters (default: the defaults); with ``policy_model``, the
            model's own mixing is used instead.

    Returns:
        A summary: channels kept, faces used, file size.
    """
    check_opset(params.opset)
    mixing = mixing or MixingParams()
    if policy_model is not None:
        masker, used = masker_with_trained_policy(policy_model), None
        mixing = ModelRecord.load(policy_model).mixing  # what the policy was trained with
        check_cap(mixing.cap, tuple(masker.k_values.tolist()))
    else:
        check_cap(mixing.cap, mixing.k_values)
        if params.k not in mixing.k_values:
            raise ValueError(f"export.k={params.k} must be one of mixing.k_values={list(mixing.k_values)}")
        masker, used = public_masker(aligned, public_csv, params, mixing)
    metadata = masker_metadata(
        masker, params, input_size, used, mixing, policy="strategy" if policy_model is not None else None
    )
    export_onnx(masker, out_path, metadata, input_size, params.opset)
    return {
        "kept_channels": masker.mask.num_kept,
        "map_size": input_size * masker.upsample // 8,
        "public_faces_for_stats": used,
        "bytes": Path(out_path).stat().st_size,
    }
