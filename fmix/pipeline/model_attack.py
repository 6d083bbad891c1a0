"""The reconstruction attack against the protection a trained model of the sweep was trained with.

The model's method says what to attack (:attr:`fmix.methods.base.Method.attack_surface`): ``mixed``
methods through their masker and mixing (``adaptive``: its own trained k policy; fixed-k
methods: a masker with the model's k), ``masked`` ones through the masking alone (no mix);
methods whose network sees the faces' own pixels or channels (``none``, ``freq``, ``dpsgd``) share
the faces themselves, so there is nothing to reconstruct: their record says so and holds no
scores. Methods that protect without a masker (``pixels``: ``instahide``; ``noisy``: ``dctdp``)
are attacked through the trained model's own protection (:func:`fmix.attacks.run.model_target`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from fmix.attacks.run import attack_method, attack_target, model_target
from fmix.io import write_json_atomic
from fmix.masker.export import export_masker
from fmix.methods import build_method
from fmix.methods.base import MASKER_SURFACES
from fmix.models.artifact import ModelRecord
from fmix.params import AttackParams, ExportParams


def attack_protection(
    model: str | Path,
    aligned: str | Path,
    splits: str | Path,
    evaluator: str | Path,
    out_dir: str | Path,
    export: ExportParams,
    attack: AttackParams,
    metrics: str | Path | None = None,
    name: str = "",
    gallery_file: str | Path | None = None,
    artifacts: str | Path | None = None,
    prior: str | Path | None = None,
) -> dict:
    """Export the model's protection as a masker (or take the model's own), then run the white-box and black-box attacks.

    Args:
        model: ``model.pt`` of ``fmix train``.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split``.
        evaluator: ``model.pt`` of ``fmix evaluator``.
        out_dir: destination of ``masker.onnx`` (methods with a masker), ``privacy.json`` and the grids.
        export: the ``export`` section (the masking the model was trained with; the mixing is the
            model's own, as ``model.pt`` records it).
        attack: the ``attack`` section.
        metrics: the model's verification JSON (Score_cls).
        name: the sweep entry, for the report.
        gallery_file: the dlib judge's gallery from ``fmix attack gallery`` (None: embed it here).
        artifacts: the folder for ``masker.onnx`` and the grids (None: ``out_dir``). It is always
            created, and holds only what the method has (nothing for ``none``): a pipeline declares
            it as one output, while ``privacy.json`` stays in ``out_dir``.
        prior: the attackers' prior of ``fmix attack prior``, used when it inverts this method's masking.

    Returns:
        The privacy record (``row`` None for methods without a masker).
    """
    model, out_dir, splits = Path(model), Path(out_dir), Path(splits)
    if not model.is_file():
        raise FileNotFoundError(f"trained model not found: {model}")
    record = ModelRecord.load(model, "cpu")
    trained, mixing = record.params, record.mixing
    method = build_method(trained)
    files = out_dir if artifacts is None else Path(artifacts)
    files.mkdir(parents=True, exist_ok=True)
    if method.attack_surface is None:
        record = {
            "method": name or method.name,
            "train_method": method.name,
            "row": None,
            "reason": f"method {method.name!r} has no masker to attack: nothing to reconstruct (it trains on {method.summary})",
        }
        write_json_atomic(out_dir / "privacy.json", record)
        return record
    score_cls = json.loads(Path(metrics).read_text())["verification"]["accuracy_mean"] if metrics else None
    if method.attack_surface not in MASKER_SURFACES:  # the model protects by itself: its own mixing or noise
        record = attack_target(
            model_target(model, attack.black_box_k),
            aligned,
            splits,
            evaluator,
            files,
            attack,
            score_cls,
            name or method.name,
            gallery_file,
            prior=prior,
        )
        return _record_beside(record, files, out_dir)
    masker = files / "masker.onnx"
    if method.learns_policy:
        export_masker(aligned, splits / "public.csv", masker, export, policy_model=model)
    else:
        k = method.masker_k()
        if k is not None and k not in mixing.k_values:
            raise ValueError(f"the model mixes k={k}, which is not in its mixing.k_values={list(mixing.k_values)}")
        params = method.masker_params(export)
        export_masker(
            aligned,
            splits / "public.csv",
            masker,
            dataclasses.replace(params, k=params.k if k is None else k),
            mixing=mixing,
        )
    policy = model if method.learns_policy else None
    record = attack_method(
        masker,
        aligned,
        splits,
        evaluator,
        files,
        attack,
        method.attack_surface == "mixed",
        policy,
        score_cls,
        name or method.name,
        gallery_file,
        prior=prior,
    )
    return _record_beside(record, files, out_dir)


def _record_beside(record: dict, files: Path, out_dir: Path) -> dict:
    """Move ``privacy.json``, which the attacks write beside their grids, from ``files`` to ``out_dir``."""
    if files.resolve() != out_dir.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        os.replace(files / "privacy.json", out_dir / "privacy.json")
    return record
