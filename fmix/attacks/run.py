"""``fmix attack``: the privacy measurement of one protection method (docs/design.md §5 and §6).

For private training faces protected exactly as the data owner protects them:
- S1, S2: SSIM and identity accuracy of the protected samples' visualisation;
- S3, S4 (white-box): an inversion network trained on public faces protected with the real
  masker and mixing, then applied to the private samples; best-constituent SSIM, PSNR, top-1 /
  top-5; the same for a black-box attacker (surrogate masking, guessed k);
- the free floors: the mean public face against the private faces (best constituent for mixes);
- the attack check: the same white-box attack on the same masking without its mixing. Only when
  it names at least ``attack.check_min_s4`` of those faces does the attack work at this budget,
  and only then do a mixed protection's low S3/S4 credit it with privacy (``attack_works``);
- Score_pp = 0.4 (1 - (S1 + S2) / 2) + 0.6 (1 - (S3 + S4) / 2), and Score_cls when given.
The protection is an :class:`AttackTarget`: an exported masker (:func:`masker_target`), or for a
method without one the trained model's own protection (:func:`model_target`: ``pixels``, the
model's pixel-domain mixing with its sign mask, visualised as ``|x|``; ``noisy``, the model's
frequency channels with Laplace noise at its learned scales).
Identities are judged by :class:`~fmix.attacks.identity.IdentityScorer`: by default dlib's
pretrained descriptor (top-1 among the private identities, and TAR against the person's other
photos), with the RGB evaluator's top-1 / top-5 beside it. A mixed sample counts as identified
when the judge names any of its constituents (the attacker wins by recognising anyone in the mix).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.attacks.grids import write_attack_grid
from fmix.attacks.identity import JUDGES, Evaluator, IdentityScorer, is_onnx_judge, load_templates
from fmix.attacks.inversion import identity_scores, optimise_identity_images, train_decoder
from fmix.attacks.prior import ANOTHER_MASKING, load_prior, masking_key
from fmix.attacks.protectors import (
    MaskerProtector,
    NoisyFrequencyProtector,
    PixelMixProtector,
    ProtectedPairs,
    Protector,
    pixel_mix_to_image,
    sign_blind,
    surrogate_protector,
)
from fmix.attacks.reconstruction import AttackConfig, ReconstructionAttack, constituents_of, evaluate_reconstruction
from fmix.attacks.strata import DEFAULT_STRATA, stratum_of
from fmix.data.faces import FaceSet, load_face_set
from fmix.device import resolve_device
from fmix.freq import protected_to_image
from fmix.io import write_json_atomic
from fmix.masker.build import masker_from_metadata, public_channel_stats, read_masker_metadata
from fmix.masker.export import masker_with_trained_policy
from fmix.masker.protection import MixingConfig, Protection
from fmix.methods import method_class
from fmix.metrics import PrivacyRow, best_constituent_ssim
from fmix.models.artifact import ModelRecord, load_trained_model
from fmix.models.encoders import NoisyFrequencyEncoder, encoder_from_spec
from fmix.params import AttackParams, ExportParams, MixingParams


def spread_subset(faces: FaceSet, count: int) -> FaceSet:
    """``count`` faces spread over the file (identities are grouped in the split CSVs)."""
    if count >= len(faces):
        return faces
    index = torch.tensor([round(i * len(faces) / count) for i in range(count)])
    return FaceSet(faces.images[index], faces.labels[index], [faces.paths[i] for i in index.tolist()])


class AttackTarget(NamedTuple):
    """A protection as the reconstruction attacks see it.

    Attributes:
        white: the white-box protector (the owner's algorithm and parameters, its own draws).
        black: (the private protected samples, the attacker's aligned public faces) -> the
            black-box protector (what the release shows plus a guess of the rest).
        visualise: protected samples -> RGB images in [0, 255] (S1, S2 and the grid).
        info: what ``privacy.json`` records about the protection (at least ``mixed``).
        sign_masked: the samples carry a random sign per coefficient; the attackers then invert
            ``|x|`` (:func:`~fmix.attacks.protectors.sign_blind`).
        unmixed: the white-box protection without its mixing (same masking, k = 1), the target of
            the attack check; None when the protection does not mix (its white-box attack is its check).
        masking: :func:`~fmix.attacks.prior.masking_key` of the white-box masking, as the attackers
            read it (None: not a masker's; no prior serves it).
    """

    white: Protector
    black: Callable[[Tensor, list[Path]], Protector]
    visualise: Callable[[Tensor], Tensor]
    info: dict
    sign_masked: bool = False
    unmixed: Protector | None = None
    masking: str | None = None

    def as_attackers_see(self, protector: Protector, pairs: ProtectedPairs) -> tuple[Protector, ProtectedPairs]:
        """A protector of this target and its samples as the attackers read them: ``|x|`` under a sign mask."""
        if not self.sign_masked:
            return protector, pairs
        return sign_blind(protector), pairs._replace(x=pairs.x.abs())


def gallery_sources(gallery: FaceSet, faces: FaceSet) -> Tensor:
    """Each face's row in the judge's gallery (the faces are gallery faces), shape :math:`(N,)`."""
    row = {path: i for i, path in enumerate(gallery.paths)}
    return torch.tensor([row[path] for path in faces.paths])


def load_protector(masker_path: str | Path, policy_model: str | Path | None, mix: bool) -> tuple[MaskerProtector, dict]:
    """The data owner's protection as the white-box attacker knows it: masker, k policy, mixing."""
    metadata = read_masker_metadata(masker_path)
    if json.loads(metadata["policy"]) == "strategy":
        if policy_model is None:
            raise ValueError(f"{masker_path} holds a trained policy: pass the model it came from (--policy)")
        masker = masker_with_trained_policy(policy_model)
    else:
        masker = masker_from_metadata(metadata)
    return MaskerProtector(masker, Protection.from_metadata(metadata, masker).mixing, mix), metadata


def masker_target(
    masker_path: str | Path, policy_model: str | Path | None, mix: bool, black_box_k: int
) -> AttackTarget:
    """An exported masker's protection: white-box the masker (and its mixing), black-box the default masking.

    Args:
        masker_path: the method's exported masker.
        policy_model: the adaptive model, when the masker holds a trained policy.
        mix: protect with mixing (training data) or mask only.
        black_box_k: the black-box attacker's guess of k.
    """
    protector, metadata = load_protector(masker_path, policy_model, mix)
    upsample = json.loads(metadata["upsample"])

    def black(released: Tensor, public_paths: list[Path]) -> Protector:
        # The black-box attacker sees the released maps' size (so u) and channel count, and guesses the rest.
        stats = public_channel_stats(public_paths, upsample)[0]
        return surrogate_protector(
            stats, black_box_k if mix else None, ExportParams(upsample=upsample), channels=released.shape[1]
        )

    sign_masked = protector.mixing is not None and protector.mixing.sign_flip
    unmixed = MaskerProtector(protector.masker, protector.mixing, mix=False) if mix else None
    visualise = lambda x: protected_to_image(x, protector.masker.mask, upsample)  # noqa: E731
    info = {"masker": str(masker_path), "mixed": mix}
    return AttackTarget(protector, black, visualise, info, sign_masked, unmixed, masking_key(metadata, sign_masked))


def _pixel_target(record: ModelRecord, black_box_k: int) -> AttackTarget:
    """InstaHide-style pixel mixing: white-box the model's own mixing and k; black-box a guessed k."""
    white = PixelMixProtector(MixingConfig.from_params(record.mixing), max(record.mixing.k_values))

    def black(released: Tensor, public_paths: list[Path]) -> Protector:
        # The release shows signed pixels (so a sign mask), not k nor the weight law: guess k with the default
        # law, and InstaHide's own scheme otherwise (no noise on the mixes).
        guess = dataclasses.replace(MixingParams(), k_values=(black_box_k,), sign_flip=True, noise=0.0)
        return PixelMixProtector(MixingConfig.from_params(guess), black_box_k)

    info = {
        "mixed": True,
        "black_box": f"pixel mixing of k={black_box_k} faces, default weight law, sign mask, no noise",
    }
    return AttackTarget(
        white, black, pixel_mix_to_image, info, white.mixing.sign_flip, PixelMixProtector(white.mixing, 1)
    )


def _noisy_target(record: ModelRecord, black_box_k: int) -> AttackTarget:
    """DCTDP-style noisy channels: white-box the model's transform, clip and learned noise scales;
    black-box the transform without DC and one noise scale guessed from the release."""
    encoder = encoder_from_spec(record.encoder)
    if not isinstance(encoder, NoisyFrequencyEncoder):
        raise ValueError(
            f"a 'noisy' protection needs a noisy_frequency encoder, got kind {record.encoder.get('kind')!r}"
        )
    upsample = encoder.transform.upsample

    def black(released: Tensor, public_paths: list[Path]) -> Protector:
        # The release shows u (the maps' size) and its channels (192 - 3: all but DC), not the noise. The
        # guess: DC dropped, public normalisation (unit variance), no clip, and one Laplace scale b for
        # every channel, from the release's variance beyond the signal's: 2 b^2 = var - 1.
        stats = public_channel_stats(public_paths, upsample)[0]
        masker = surrogate_protector(
            stats, None, ExportParams(upsample=upsample, low_freq_threshold=0), channels=released.shape[1]
        ).masker
        scale = ((released.var(dim=(0, 2, 3)).mean() - 1.0).clamp_min(0.0) / 2.0).sqrt()
        return NoisyFrequencyProtector(masker.transform, scale.expand(released.shape[1]).clone())

    info = {
        "mixed": False,
        "black_box": "all but DC, public normalisation, one Laplace scale from the release's variance, no clip",
    }
    return AttackTarget(
        NoisyFrequencyProtector.from_encoder(encoder),
        black,
        lambda x: protected_to_image(x, encoder.transform.mask, upsample),
        info,
    )


MODEL_TARGETS: dict[str, Callable[[ModelRecord, int], AttackTarget]] = {"pixels": _pixel_target, "noisy": _noisy_target}


def model_target(model_path: str | Path, black_box_k: int) -> AttackTarget:
    """The protection a trained model applies itself (no exported masker), by its method's ``attack_surface``.

    Args:
        model_path: ``model.pt`` of ``fmix train``.
        black_box_k: the black-box attacker's guess of k (mixing protections).

    Raises:
        ValueError: the method's protection is attacked through a masker, or not at all.
    """
    record = ModelRecord.load(model_path, "cpu")
    kind = method_class(record.method).attack_surface
    if kind not in MODEL_TARGETS:
        raise ValueError(
            f"method {record.method!r} has attack surface {kind!r}: only {', '.join(MODEL_TARGETS)} are attacked through the trained model"
        )
    target = MODEL_TARGETS[kind](record, black_box_k)
    return target._replace(info={"model": str(model_path), "protection": kind, **target.info})


def attack_method(
    masker_path: str | Path,
    aligned: str | Path,
    splits: str | Path,
    evaluator_path: str | Path,
    out_dir: str | Path,
    params: AttackParams,
    mix: bool = True,
    policy_model: str | Path | None = None,
    score_cls: float | None = None,
    method: str = "",
    gallery_file: str | Path | None = None,
    network: AttackConfig | None = None,
    prior: str | Path | None = None,
) -> dict:
    """Measure the privacy of one protection method's masker; writes ``privacy.json`` and PNG grids.

    Args:
        masker_path: the method's exported masker.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split``.
        evaluator_path: ``model.pt`` of the evaluator (``fmix train --method none``, another seed).
        out_dir: destination of ``privacy.json`` and the grids.
        params: the ``attack`` section (budget, faces, black-box k, seed, judge, batch size).
        mix: protect the private faces with mixing (training data) or mask only.
        policy_model: the adaptive model, when the masker holds a trained policy.
        score_cls: the method's verification accuracy, for the report row.
        method: the method's name, for the report row.
        gallery_file: the dlib judge's gallery from ``fmix attack gallery`` (None: embed it here).
        network: inversion-network settings (default: :meth:`AttackConfig.from_params`).
        prior: the attackers' prior of ``fmix attack prior`` (:mod:`fmix.attacks.prior`), used when
            it inverts this masking.

    Returns:
        The privacy record.
    """
    target = masker_target(masker_path, policy_model, mix, params.black_box_k)
    return attack_target(
        target, aligned, splits, evaluator_path, out_dir, params, score_cls, method, gallery_file, network, prior
    )


def worst_stratum(attackers: dict[str, dict]) -> dict | None:
    """The highest S4 over attackers and strata of photos per identity: the people most at risk.

    Args:
        attackers: attacker name -> its scores with ``S4_by_stratum`` (stratum -> ``{"n", "top1"}``).

    Returns:
        ``{"attacker", "stratum", "n", "S4"}`` of the highest top-1 (ties: the first attacker, the
        first stratum), or None without strata.
    """
    best = None
    for attacker, scores in attackers.items():
        for stratum, rate in (scores.get("S4_by_stratum") or {}).items():
            if rate["n"] and (best is None or rate["top1"] > best["S4"]):
                best = {"attacker": attacker, "stratum": stratum, "n": rate["n"], "S4": rate["top1"]}
    return best


def attack_target(
    target: AttackTarget,
    aligned: str | Path,
    splits: str | Path,
    evaluator_path: str | Path,
    out_dir: str | Path,
    params: AttackParams,
    score_cls: float | None = None,
    method: str = "",
    gallery_file: str | Path | None = None,
    network: AttackConfig | None = None,
    prior: str | Path | None = None,
) -> dict:
    """The white-box and black-box reconstruction attacks on a protection; writes ``privacy.json`` and PNG grids.

    A mixed protection gets a third attacker with the same budget, the check: the white-box
    attack on its masking un-mixed (``target.unmixed``). ``attack_works`` says whether the check
    named at least ``params.check_min_s4`` of the faces; where it did not, the attackers are too
    weak at this budget to credit the mixing with their low S3/S4.

    With a prior of the target's masking (:mod:`fmix.attacks.prior`) the check is the prior itself,
    the white-box attacker fine-tunes it on the mixes for the attack's budget, and a fourth attacker,
    ``transfer``, is the prior applied to the mixes as they are. The row's S3/S4 are the white-box
    attacker's that names the most (``row_attacker``: ``white`` or ``transfer``).

    Args: as :func:`attack_method`, with ``target`` (:class:`AttackTarget`) for the masker.

    Returns:
        The privacy record.
    """
    out_dir, splits = Path(out_dir), Path(splits)
    attack = network or AttackConfig.from_params(params)
    evaluator = Evaluator(evaluator_path, resolve_device(params.device))
    public = load_face_set(aligned, splits / "public.csv")
    gallery = load_face_set(aligned, splits / "private_train.csv")
    private = spread_subset(gallery, params.eval_faces)
    scorer = IdentityScorer(params.judge, evaluator, gallery, gallery_file=gallery_file, device=params.device)
    originals = private.float_images(torch.arange(len(private)))
    mean_face = public.float_images(torch.arange(len(public))).mean(dim=0)
    own_sources = gallery_sources(gallery, private)
    public_images = public.chw_images()
    photos = torch.bincount(gallery.labels, minlength=int(gallery.labels.max()) + 1)
    face_strata = [stratum_of(int(photos[label]), DEFAULT_STRATA) for label in private.labels.tolist()]

    def strata_of(pairs: ProtectedPairs) -> list[str]:
        """Each sample's stratum: its heaviest constituent's photos in the private training split."""
        return [face_strata[index] for index in pairs.heaviest().tolist()]

    def attacker(
        protector: Protector,
        protected: ProtectedPairs,
        constituents: Tensor,
        valid: Tensor,
        floor: Tensor | None,
        start: ReconstructionAttack | None = None,
        train: bool = True,
    ) -> tuple[dict, Tensor, Tensor]:
        # Train one inversion network on public faces (from scratch, or on from `start`), invert the private samples, score them.
        protector, protected = target.as_attackers_see(protector, protected)
        began = time.process_time()
        fitted, steps = start, 0
        if train:
            fitted = ReconstructionAttack(attack) if start is None else copy.deepcopy(start)
            fitted.fit(public_images, protector, labels=public.labels, steps=params.steps, seconds=params.seconds)
            steps = len(fitted.history)
        recon = fitted.invert(protected.x)
        scored = evaluate_reconstruction(recon, constituents, valid, mean_face, floor)
        cpu_seconds = time.process_time() - began
        hits = scorer.identified(
            recon, private.labels[protected.partners], valid, own_sources[protected.partners], strata_of(protected)
        )
        scores = {
            **scored.summary(),
            "S4": hits["top1"],
            "top5": hits["top5"],
            "S4_by_judge": hits["by_judge"],
            "S4_by_stratum": hits["by_stratum"],
            "steps": steps,
            "cpu_seconds": cpu_seconds,
        }
        return scores, recon, scored.floor

    pairs = target.white(originals, private.labels, torch.Generator().manual_seed(params.seed + 1))
    constituents, valid = constituents_of(originals, pairs)
    visual = target.visualise(pairs.x)
    s1 = best_constituent_ssim(visual, constituents, valid)[0].mean().item()
    s2 = scorer.identified(visual, private.labels[pairs.partners], valid, own_sources[pairs.partners], strata_of(pairs))
    record = {
        "method": method,
        **target.info,
        "faces": len(private),
        "judge": params.judge,
        "S1": s1,
        "S2": s2["top1"],
        "S2_top5": s2["top5"],
        "S2_by_judge": s2["by_judge"],
    }
    record["attackers_read"] = "|x|" if target.sign_masked else "x"
    loaded = None if prior is None else load_prior(prior, attack)
    shared = loaded.attack if loaded is not None and loaded.key == target.masking else None
    if loaded is not None:
        record["prior"] = loaded.info(shared is not None, "" if shared is not None else ANOTHER_MASKING)
    record["white"], recon_white, floor = attacker(target.white, pairs, constituents, valid, None, shared)
    record["black"] = attacker(
        target.black(pairs.x, [Path(aligned) / p for p in public.paths]), pairs, constituents, valid, floor
    )[0]
    if target.unmixed is None:
        record["check"] = {**record["white"], "protection": "the white-box attack's own (not mixed)"}
    else:  # the same attack on the same masking, un-mixed: does it invert the masking at this budget?
        unmixed = target.unmixed(originals, private.labels, torch.Generator().manual_seed(params.seed + 1))
        record["check"] = {
            **attacker(target.unmixed, unmixed, *constituents_of(originals, unmixed), None, shared, shared is None)[0],
            "protection": "un-mixed (k = 1)" + (", the prior" if shared is not None else ""),
        }
        if shared is not None:  # the un-mixed inverter on the mixes as they are
            record["transfer"] = attacker(target.white, pairs, constituents, valid, floor, shared, False)[0]
    record["check_min_s4"] = params.check_min_s4
    record["attack_works"] = record["check"]["S4"] >= params.check_min_s4
    white_box = [name for name in ("white", "transfer") if name in record]
    record["row_attacker"] = max(white_box, key=lambda name: record[name]["S4"])  # ties: the fine-tuned one
    record["worst_stratum"] = worst_stratum({name: record[name] for name in (*white_box, "black")})
    record["free_floor"] = record["white"]["floor"]
    record["chance_top1"] = s2["chance_top1"]
    strongest = record[record["row_attacker"]]
    row = PrivacyRow(
        method,
        s1,
        s2["top1"],
        strongest["S3"],
        strongest["S4"],
        strongest["psnr"],
        strongest["top5"],
        record["free_floor"],
        score_cls,
    )
    record["row"] = row.to_dict()
    if params.judge != "evaluator":  # the same row judged by the RGB evaluator, for comparison with earlier runs
        rgb_s2, rgb_s4 = s2["by_judge"]["evaluator"], strongest["S4_by_judge"]["evaluator"]
        record["row_evaluator"] = PrivacyRow(
            method,
            s1,
            rgb_s2["top1"],
            strongest["S3"],
            rgb_s4["top1"],
            strongest["psnr"],
            rgb_s4["top5"],
            record["free_floor"],
            score_cls,
        ).to_dict()
    heaviest = pairs.heaviest()
    show = torch.arange(min(8, len(private)))
    write_attack_grid(out_dir / "grid.png", originals[heaviest[show]], visual[show], recon_white[show])
    write_json_atomic(out_dir / "privacy.json", record)
    return record


def invert_model(
    model_path: str | Path,
    aligned: str | Path,
    splits: str | Path,
    evaluator_path: str | Path,
    out_dir: str | Path,
    params: AttackParams | None = None,
    gallery_file: str | Path | None = None,
) -> dict:
    """Model inversion of a trained FR model; writes ``inversion.json`` and a grid.

    (a) a decoder from the target's embeddings to faces, fitted on public faces, applied to each
    private identity's class centre; (b) input optimisation of the identity logit from the mean
    public face, for the first ``attack.invert_identities`` identities; each gets
    ``attack.invert_seconds`` of wall clock at most. Both scored by ``attack.judge``
    (:class:`~fmix.attacks.identity.IdentityScorer`: top-1, top-5, and for dlib the TAR against
    the identity's clean photos), with the RGB evaluator's top-1, top-5 and cosine to the
    identity's clean template beside it. The judge may also be the path of an ONNX face
    embedder (:func:`~fmix.attacks.identity.check_judge`). Target, decoder and evaluator run on
    ``attack.device`` (:func:`fmix.device.resolve_device`; these budgets are wall-clock seconds anyway).

    Args:
        model_path: ``model.pt`` of ``fmix train``.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split``.
        evaluator_path: ``model.pt`` of ``fmix evaluator``.
        out_dir: destination of ``inversion.json`` and the grid.
        params: the ``attack`` section (``invert_seconds``, ``invert_identities``, ``seed``,
            ``judge``, ``device``; default: its defaults).
        gallery_file: the dlib judge's gallery from ``fmix attack gallery`` (None: embed it here).

    Returns:
        The inversion record.
    """
    params = params or AttackParams()
    seconds, optimise_identities, seed, judge, device = (
        params.invert_seconds,
        params.invert_identities,
        params.seed,
        params.judge,
        params.device,
    )
    out_dir, splits = Path(out_dir), Path(splits)
    if not (judge in JUDGES or is_onnx_judge(judge)):
        raise ValueError(
            f"attack judge must be one of {JUDGES} or the path of an ONNX face embedder ending in .onnx, got {judge!r}"
        )
    torch_device = resolve_device(device)
    target, record = load_trained_model(model_path, torch_device)
    evaluator = Evaluator(evaluator_path, torch_device)
    public = load_face_set(aligned, splits / "public.csv")
    private = load_face_set(aligned, splits / "private_train.csv")
    public_images = public.float_images(torch.arange(len(public)))
    embed = lambda images: target.backbone(target.encoder(images.to(torch_device)))  # noqa: E731 - the target as the attacker queries it
    start = time.process_time()
    decoder, losses = train_decoder(
        embed,
        public_images,
        record.params.embedding_size,
        steps=100_000,
        seconds=seconds,
        seed=seed,
        device=torch_device,
    )
    identities = torch.arange(record.num_classes)
    with torch.no_grad():
        decoded = decoder(target.head.centres()).cpu()
    decoder_seconds = time.process_time() - start
    templates = load_templates(evaluator_path, evaluator, private, record.num_classes)
    scorer = IdentityScorer(judge, evaluator, private, record.num_classes, gallery_file=gallery_file, device=device)

    def judged(images, chosen):
        hits = scorer.identified(images, chosen[:, None], torch.ones(len(chosen), 1, dtype=torch.bool))
        by_judge = {
            **hits.pop("by_judge"),
            "evaluator": identity_scores(evaluator.logits, evaluator.embed, images, chosen, templates),
        }
        return {**hits, "chance": hits["chance_top1"], "by_judge": by_judge}

    result = {
        "method": record.method,
        "judge": judge,
        "decoder": {
            **judged(decoded, identities),
            "steps": len(losses),
            "final_l1": losses[-1],
            "cpu_seconds": decoder_seconds,
        },
    }
    chosen = identities[:optimise_identities]
    logits_fn = lambda images: target.head.logits(target.backbone(target.encoder(images)))  # noqa: E731
    target.eval()
    optimised = optimise_identity_images(
        logits_fn, chosen.to(torch_device), public_images.mean(dim=0).to(torch_device), seconds=seconds
    ).cpu()
    result["optimisation"] = judged(optimised, chosen)
    shown = chosen[:8]
    reference = torch.stack([private.float_images(torch.nonzero(private.labels == i)[0])[0] for i in shown.tolist()])
    write_attack_grid(out_dir / "inversion_grid.png", reference, decoded[shown], optimised[: len(shown)])
    write_json_atomic(out_dir / "inversion.json", result)
    return result
