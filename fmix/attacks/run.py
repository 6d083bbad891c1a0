"""``fmix attack``: the privacy measurement of one protection method (DESIGN 5 and 6).

For private training faces protected exactly as the data owner protects them:
- S1, S2: SSIM and evaluator identity accuracy of the protected samples' visualisation;
- S3, S4 (white-box): an inversion network trained on public faces protected with the real
  masker and mixing, then applied to the private samples; best-constituent SSIM, PSNR, evaluator
  top-1 / top-5; the same for a black-box attacker (surrogate masking, guessed k);
- the free floors: the mean public face against the private faces (best constituent for mixes);
- Score_pp = 0.4 (1 - (S1 + S2) / 2) + 0.6 (1 - (S3 + S4) / 2), and Score_cls when given.
A mixed sample counts as identified when the evaluator's top-1 is the identity of any of its
constituents (the attacker wins by recognising anyone in the mix).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fmix.attacks.grids import write_attack_grid
from fmix.attacks.protectors import MaskerProtector, surrogate_protector
from fmix.attacks.reconstruction import AttackConfig, ReconstructionAttack, constituents_of, evaluate_reconstruction
from fmix.freq import protected_to_image
from fmix.io import write_json_atomic
from fmix.masker.build import masker_from_metadata, public_channel_stats, read_masker_metadata
from fmix.masker.protect import MixingConfig
from fmix.metrics import PrivacyRow, best_constituent_ssim
from fmix.train.data import FaceSet, load_face_set


@dataclass(frozen=True)
class AttackRun:
    """What to attack and how hard."""

    seconds: float = 90.0  # CPU seconds of inversion-network training per attacker
    eval_faces: int = 256  # private faces attacked
    mix: bool = True  # protect the private faces with mixing (training data) or mask only
    black_box_k: int = 2  # the black-box attacker's guess of k
    seed: int = 0


class Evaluator:
    """The independent evaluator: an FR model trained on clean private faces, never a target."""

    def __init__(self, model_path: str | Path) -> None:
        from fmix.evaluate.run import load_trained_model

        self.model, record = load_trained_model(model_path)
        if record["params"]["method"] != "none":
            raise ValueError(f"the evaluator must be trained on clean RGB faces (method none), {model_path} used {record['params']['method']!r}")

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        model = self.model
        return torch.cat([model.head.logits(model.backbone(model.encoder(images[i : i + 128]))) for i in range(0, len(images), 128)])

    def embed(self, images: Tensor) -> Tensor:
        """Normalised embeddings (no flip averaging: reconstructions are scored as they are)."""
        return self.model.embed(images, flip_average=False, batch_size=128)

    def identified(self, images: Tensor, labels: Tensor, valid: Tensor) -> dict:
        """Top-1 / top-5 identification: a hit when the prediction is any valid constituent's identity.

        Args:
            images: (B, 3, 112, 112) in [0, 255].
            labels: identity of each constituent (B, k_max).
            valid: which constituents exist (B, k_max).
        """
        logits = self.logits(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1_hit = ((top5[:, :1] == labels) & valid).any(dim=1)
        top5_hit = ((top5[:, :, None] == labels[:, None, :]) & valid[:, None, :]).any(dim=(1, 2))
        return {"top1": top1_hit.float().mean().item(), "top5": top5_hit.float().mean().item()}


def spread_subset(faces: FaceSet, count: int) -> FaceSet:
    """``count`` faces spread over the file (identities are grouped in the split CSVs)."""
    if count >= len(faces):
        return faces
    index = torch.tensor([round(i * len(faces) / count) for i in range(count)])
    return FaceSet(faces.images[index], faces.labels[index], [faces.paths[i] for i in index.tolist()])


def load_protector(masker_path: str | Path, policy_model: str | Path | None, mix: bool) -> tuple[MaskerProtector, dict]:
    """The data owner's protection as the white-box attacker knows it: masker, k policy, mixing."""
    metadata = read_masker_metadata(masker_path)
    if json.loads(metadata["policy"]) == "strategy":
        if policy_model is None:
            raise ValueError(f"{masker_path} holds a trained policy: pass the model it came from (--policy)")
        from fmix.masker.export import masker_with_trained_policy

        masker = masker_with_trained_policy(policy_model)
    else:
        masker = masker_from_metadata(metadata)
    mixing = MixingConfig(**json.loads(metadata["mixing"])) if mix else None
    return MaskerProtector(masker, mixing), metadata


def attack_method(
    masker_path: str | Path,
    aligned: str | Path,
    splits: str | Path,
    evaluator_path: str | Path,
    out_dir: str | Path,
    run: AttackRun,
    policy_model: str | Path | None = None,
    score_cls: float | None = None,
    method: str = "",
    attack: AttackConfig | None = None,
) -> dict:
    """Measure the privacy of one protection method; writes ``privacy.json`` and PNG grids.

    Args:
        masker_path: the method's exported masker.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split``.
        evaluator_path: ``model.pt`` of the evaluator (``fmix train --method none``, another seed).
        out_dir: destination of ``privacy.json`` and the grids.
        run: budgets and choices.
        policy_model: the adaptive model, when the masker holds a trained policy.
        score_cls: the method's verification accuracy, for the report row.
        method: the method's name, for the report row.
        attack: inversion-network settings (default :class:`AttackConfig` with ``run.seed``).

    Returns:
        The privacy record.
    """
    out_dir, splits = Path(out_dir), Path(splits)
    attack = attack or AttackConfig(seed=run.seed)
    protector, metadata = load_protector(masker_path, policy_model, run.mix)
    evaluator = Evaluator(evaluator_path)
    public = load_face_set(aligned, splits / "public.csv")
    private = spread_subset(load_face_set(aligned, splits / "private_train.csv"), run.eval_faces)
    originals = private.float_images(torch.arange(len(private)))
    mean_face = public.float_images(torch.arange(len(public))).mean(dim=0)
    pairs = protector(originals, private.labels, torch.Generator().manual_seed(run.seed + 1))
    constituents, valid = constituents_of(originals, pairs)
    labels = private.labels[pairs.partners]
    upsample = json.loads(metadata["upsample"])
    visual = protected_to_image(pairs.x, protector.masker.mask, upsample)
    s1 = best_constituent_ssim(visual, constituents, valid)[0].mean().item()
    s2 = evaluator.identified(visual, labels, valid)
    record = {"method": method, "masker": str(masker_path), "faces": len(private), "mixed": run.mix, "S1": s1, "S2": s2["top1"], "S2_top5": s2["top5"]}
    attackers = {"white": protector, "black": surrogate_protector(public_channel_stats([Path(aligned) / p for p in public.paths], upsample)[0], run.black_box_k if run.mix else None)}
    recon_white = None
    for mode, attacker_protector in attackers.items():
        start = time.process_time()
        fitted = ReconstructionAttack(attack).fit(public.images.permute(0, 3, 1, 2).contiguous(), attacker_protector, labels=public.labels, seconds=run.seconds)
        recon = fitted.invert(pairs.x)
        scores = evaluate_reconstruction(recon, constituents, valid, mean_face).summary()
        hits = evaluator.identified(recon, labels, valid)
        record[mode] = {**scores, "S4": hits["top1"], "top5": hits["top5"], "steps": len(fitted.history), "cpu_seconds": time.process_time() - start}
        if mode == "white":
            recon_white = recon
    record["free_floor"] = record["white"]["floor"]
    record["chance_top1"] = 1.0 / evaluator.logits(originals[:1]).shape[1]
    row = PrivacyRow(method, s1, s2["top1"], record["white"]["S3"], record["white"]["S4"], record["white"]["psnr"], record["white"]["top5"], record["free_floor"], score_cls)
    record["row"] = row.to_dict()
    heaviest = pairs.heaviest()
    show = torch.arange(min(8, len(private)))
    write_attack_grid(out_dir / "grid.png", originals[heaviest[show]], visual[show], recon_white[show])
    write_json_atomic(out_dir / "privacy.json", record)
    return record



def invert_model(
    model_path: str | Path, aligned: str | Path, splits: str | Path, evaluator_path: str | Path, out_dir: str | Path, seconds: float = 60.0, optimise_identities: int = 32, seed: int = 0
) -> dict:
    """Model inversion of a trained FR model; writes ``inversion.json`` and a grid.

    (a) a decoder from the target's embeddings to faces, fitted on public faces, applied to each
    private identity's class centre; (b) input optimisation of the identity logit from the mean
    public face, for the first ``optimise_identities`` identities. Both scored by the evaluator
    (top-1, top-5, cosine to the identity's clean template).

    Returns:
        The inversion record.
    """
    from fmix.attacks.inversion import identity_scores, optimise_identity_images, train_decoder
    from fmix.evaluate.run import load_trained_model

    out_dir, splits = Path(out_dir), Path(splits)
    target, record = load_trained_model(model_path)
    evaluator = Evaluator(evaluator_path)
    public = load_face_set(aligned, splits / "public.csv")
    private = load_face_set(aligned, splits / "private_train.csv")
    public_images = public.float_images(torch.arange(len(public)))
    embed = lambda images: target.backbone(target.encoder(images))  # noqa: E731 - the target as the attacker queries it
    start = time.process_time()
    decoder, losses = train_decoder(embed, public_images, record["params"]["embedding_size"], steps=100_000, seconds=seconds, seed=seed)
    identities = torch.arange(record["num_classes"])
    with torch.no_grad():
        decoded = decoder(target.head.centres())
    clean = evaluator.embed(private.float_images(torch.arange(len(private))))
    templates = torch.nn.functional.normalize(torch.zeros(record["num_classes"], clean.shape[1]).index_add_(0, private.labels, clean), dim=1)
    result = {
        "method": record["params"]["method"],
        "decoder": {**identity_scores(evaluator.logits, evaluator.embed, decoded, identities, templates), "steps": len(losses), "final_l1": losses[-1], "cpu_seconds": time.process_time() - start},
    }
    chosen = identities[:optimise_identities]
    logits_fn = lambda images: target.head.logits(target.backbone(target.encoder(images)))  # noqa: E731
    target.eval()
    optimised = optimise_identity_images(logits_fn, chosen, public_images.mean(dim=0))
    result["optimisation"] = identity_scores(evaluator.logits, evaluator.embed, optimised, chosen, templates)
    shown = chosen[:8]
    reference = torch.stack([private.float_images(torch.nonzero(private.labels == i)[0])[0] for i in shown.tolist()])
    write_attack_grid(out_dir / "inversion_grid.png", reference, decoded[shown], optimised[: len(shown)])
    write_json_atomic(out_dir / "inversion.json", result)
    return result
