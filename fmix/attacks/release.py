"""``fmix attack unmix``: the un-mixing attacks on a released folder, scored like every attack.

The attacks (:mod:`fmix.attacks.unmix`) read only the released files. Scoring is the owner's
side: the owner's ledger says which private faces each shard holds; every estimate is matched
to the nearest of them in the masked domain (relative error ``||m_hat - m|| / ||m||``, the best
case for the attacker), and the estimates then go through a white-box inversion network trained
on public faces masked without mixing, scored against the matched face: S3 (SSIM), PSNR, S4
(the independent evaluator's top-1), beside the mean-face floor and the same network applied
to the released mixes themselves (``mix_baseline``: what un-mixing must beat).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fmix.attacks.grids import write_attack_grid
from fmix.attacks.identity import Evaluator
from fmix.attacks.protectors import MaskerProtector
from fmix.attacks.reconstruction import AttackConfig, evaluate_reconstruction, fit_inverter
from fmix.attacks.unmix import ATTACKS, read_release, run_unmix_attacks
from fmix.data.faces import load_face_set, load_faces
from fmix.freq import protected_to_image
from fmix.io import write_json_atomic
from fmix.masker.build import faces_to_tensor, mask_from_metadata, masker_from_metadata
from fmix.masker.onnx_masker import OnnxMasker
from fmix.params import AttackParams
from fmix.release.ledger import Ledger, default_ledger_path
from fmix.release.protect import released_mixing

RECOVERED = 0.05  # an estimate within 5 % of a private masked face counts as that face recovered


def nearest_faces(estimates: Tensor, truth: Tensor) -> tuple[Tensor, Tensor]:
    """Relative error of each estimate to its nearest true masked face, and that face's index.

    Args:
        estimates: estimated masked faces.
        truth: the true masked faces they may be.

    Shape:
        - estimates: :math:`(B, K, h, w)`.
        - truth: :math:`(N, K, h, w)`.
        - Output: two tensors of shape :math:`(B,)`.

    Returns:
        ``(relative_error, index)`` with ``relative_error = ||e - t|| / ||t||``.
    """
    if estimates.shape[1:] != truth.shape[1:]:
        raise ValueError(
            f"Expected estimates and truth of one sample shape, got {tuple(estimates.shape)} and {tuple(truth.shape)}"
        )
    e, t = estimates.reshape(len(estimates), -1).double(), truth.reshape(len(truth), -1).double()
    t_norm = t.square().sum(dim=1)
    distance = (e.square().sum(dim=1, keepdim=True) + t_norm[None] - 2 * e @ t.T).clamp_min(0).sqrt()
    relative = distance / t_norm.sqrt().clamp_min(1e-12)[None]
    error, index = relative.min(dim=1)
    return error.float(), index


def _shard_truth(
    release_dir: Path, release_id: str, ledger_path: Path, aligned: Path, masker: OnnxMasker
) -> dict[int, tuple[list[str], Tensor, Tensor]]:
    """Shard -> (sources, images, true masked faces), from the owner's ledger."""
    shards = Ledger(ledger_path).shards(release_id)
    if not shards:
        raise ValueError(
            f"the ledger {ledger_path} holds no shard of the release {release_dir} (pass its ledger with --ledger)"
        )
    truth = {}
    for shard, sources in shards.items():
        faces, loaded, _ = load_faces([aligned / source for source in sources], masker.input_size)
        images = faces_to_tensor(faces)
        masked, _ = masker(images, torch.zeros(len(images)))
        truth[shard] = ([sources[i] for i in loaded], images, masked)
    return truth


def attack_release(
    release_dir: str | Path,
    masker_path: str | Path,
    aligned: str | Path,
    splits: str | Path,
    evaluator_path: str | Path,
    out_dir: str | Path,
    params: AttackParams = AttackParams(),
    attack: AttackConfig | None = None,
    ledger: str | Path | None = None,
) -> dict:
    """Run attacks (a)-(c) on a released folder and score them; writes ``unmix.json`` and ``unmix_grid.png``.

    Args:
        release_dir: output folder of ``fmix mask``.
        masker_path: the masker that made it (white-box).
        aligned: output folder of ``fmix align`` (the owner's faces, for scoring).
        splits: output folder of ``fmix split`` (public faces; labels of the private ones).
        evaluator_path: ``model.pt`` of the independent evaluator.
        out_dir: destination of ``unmix.json`` and the grid.
        params: the ``attack`` section: the inversion network's budget (``steps``, ``seconds``,
            whichever comes first) and ``eval_faces``, the samples (spread over the release)
            reconstructed and scored for S3 and S4.
        attack: inversion-network settings.
        ledger: the owner's ledger (default: :func:`fmix.release.ledger.default_ledger_path`).

    Returns:
        The record: per attack, the recovery error (median, fraction under 5 %), S3, PSNR, S4,
        floor, and the mix baseline.
    """
    release_dir, aligned, splits, out_dir = Path(release_dir), Path(aligned), Path(splits), Path(out_dir)
    release = read_release(release_dir)
    masker = OnnxMasker(masker_path)
    truth = _shard_truth(
        release_dir, release.run["release"], Path(ledger) if ledger else default_ledger_path(), aligned, masker
    )
    private = load_face_set(aligned, splits / "private_train.csv")
    label_of = dict(zip(private.paths, private.labels.tolist()))
    public = load_face_set(aligned, splits / "public.csv")
    mean_face = public.float_images(torch.arange(len(public))).mean(dim=0)
    evaluator = Evaluator(evaluator_path)
    attack = attack or AttackConfig()
    protector = MaskerProtector(masker_from_metadata(masker.metadata), None)
    inverter, took = fit_inverter(attack, public.chw_images(), protector, public.labels, params.steps, params.seconds)
    record = {
        "release": str(release_dir),
        "samples": sum(len(p.labels) for p in release.shards.values()),
        "run": release.run,
        "inversion_cpu_seconds": took["cpu_seconds"],
    }
    order = [(shard, row) for shard, part in sorted(release.shards.items()) for row in range(len(part.labels))]
    eval_faces = min(params.eval_faces, len(order))
    scored = [order[round(i * len(order) / eval_faces)] for i in range(eval_faces)]
    outcomes = {
        "mix_baseline": ({shard: part.samples for shard, part in release.shards.items()}, {})
    } | run_unmix_attacks(release, released_mixing(masker, release.run))
    grid = None
    for name, (estimates, info) in outcomes.items():
        errors, matched = [], {}
        for shard, part in release.shards.items():
            error, index = nearest_faces(estimates[shard], truth[shard][2])
            errors.append(error)
            matched[shard] = index
        errors = torch.cat(errors)
        chosen = torch.stack([estimates[shard][row] for shard, row in scored])
        faces = torch.stack([truth[shard][1][matched[shard][row]] for shard, row in scored])
        labels = torch.tensor([label_of.get(truth[shard][0][matched[shard][row]], -1) for shard, row in scored])
        recon = inverter.invert(chosen)
        scores = evaluate_reconstruction(recon, faces, mean_face=mean_face).summary()
        hits = evaluator.identified(recon, labels[:, None], (labels >= 0)[:, None])
        record[name] = {
            **({"attack": ATTACKS[name]} if name in ATTACKS else {}),
            "median_relative_error": errors.median().item(),
            "recovered_fraction": (errors < RECOVERED).float().mean().item(),
            **scores,
            "S4": hits["top1"],
            "top5": hits["top5"],
            "details": info,
        }
        if name == "structure":
            grid = (faces[:8], chosen[:8], recon[:8])
    for name in ATTACKS:
        record[name]["S3_minus_mix_baseline"] = record[name]["S3"] - record["mix_baseline"]["S3"]

    originals, estimates, recon = grid
    write_attack_grid(
        out_dir / "unmix_grid.png",
        originals,
        protected_to_image(estimates, mask_from_metadata(masker.metadata), masker.upsample),
        recon,
    )
    write_json_atomic(out_dir / "unmix.json", record)
    return record
