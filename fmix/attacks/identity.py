"""Who does an attacked image show? The identity scores S2 and S4 of docs/design.md §6, by two judges.

- ``dlib`` (the default judge): dlib's pretrained ResNet face descriptor
  (:class:`~fmix.models.dlib_judge.DlibJudge`), which no fmix run trains. Its gallery is the
  private identities' clean faces. It scores (a) top-1 / top-5 identification among the private
  identities, each represented by the mean descriptor of its clean faces, and (b) verification
  against the person's other photos: the share of those photos within the judge's own 0.6
  distance (TAR).
- ``evaluator``: the RGB FR model that ``fmix evaluator`` trains on the clean private faces:
  top-1 / top-5 of its classifier.
- a path ending in ``.onnx``: any ONNX face embedder of 112 x 112 aligned RGB faces (``fmix
  export-fr`` writes one; insightface's ONNX models are others), run by ONNX Runtime
  (:class:`~fmix.models.fr_export.OnnxFaceEmbedder`). Its gallery is the private identities'
  clean faces: top-1 / top-5 against each identity's mean normalised embedding (cosine), with
  the mean cosine to the nearest constituent's template. No verification threshold is known
  for a foreign embedder, so it gives no TAR.

A mixed sample counts as identified when the judge names any of its constituents; its TAR is
that of its best-verified constituent. Chance is given beside every score: for identification
the hit rate of a uniformly random ranking of the identities, for verification the same TAR
computed against the identities of another sample of the batch (impostors).
:class:`IdentityScorer` is the one interface the attacks use: the chosen judge's numbers as the
headline, and the RGB evaluator's always beside them.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import Tensor

from fmix.attacks.judge_gallery import load_gallery
from fmix.data.faces import FaceSet
from fmix.models.artifact import load_trained_model
from fmix.models.checkpoint import load_checkpoint, save_checkpoint
from fmix.models.dlib_judge import DlibJudge

JUDGES = ("dlib", "evaluator")  # besides these names: the path of an ONNX face embedder (PATH.onnx)
ONNX_JUDGE = "onnx"  # the key of an ONNX judge's scores in ``by_judge``


def is_onnx_judge(judge: str) -> bool:
    """Whether ``attack.judge`` names an ONNX face embedder (a path ending in ``.onnx``)."""
    return isinstance(judge, str) and judge.lower().endswith(".onnx")


def check_judge(judge: object) -> str:
    """Check an ``attack.judge`` value: ``dlib``, ``evaluator`` or the path of an ONNX face embedder.

    Args:
        judge: the value.

    Returns:
        ``judge``.

    Raises:
        ValueError: anything else (the file itself is opened when the judge is built).
    """
    if judge in JUDGES or is_onnx_judge(judge):  # type: ignore[arg-type]
        return judge  # type: ignore[return-value]
    raise ValueError(f"Expected judge in {JUDGES} or the path of an ONNX face embedder ending in .onnx, got {judge!r}")


def judge_key(judge: str) -> str:
    """The key of a judge's scores in ``by_judge``: its name, or ``onnx`` for an ONNX embedder."""
    return ONNX_JUDGE if is_onnx_judge(judge) else judge


def _check_constituents(images: Tensor, labels: Tensor, valid: Tensor, sources: Tensor | None) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images of shape (B, 3, H, W), got {tuple(getattr(images, 'shape', ()))}")
    batch = images.shape[0]
    for value, name in ((labels, "labels"), (valid, "valid"), (sources, "sources")):
        if value is None:
            continue
        if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[0] != batch:
            raise ValueError(f"Expected {name} of shape ({batch}, K), got {tuple(getattr(value, 'shape', ()))}")
        if value.shape != labels.shape:
            raise ValueError(f"Expected {name} of the shape of labels {tuple(labels.shape)}, got {tuple(value.shape)}")
    if valid.dtype != torch.bool:
        raise TypeError(f"Expected valid with dtype bool, got {valid.dtype}")
    if batch and not valid.any(dim=1).all():
        raise ValueError("Expected every sample to have at least one valid constituent")


def chance_hit_rate(labels: Tensor, valid: Tensor, num_identities: int, ranks: int = 1) -> float:
    """Hit rate of a uniformly random ranking of the identities: any constituent within the first ``ranks``.

    Args:
        labels: identity of each constituent :math:`(B, K)`.
        valid: which constituents exist :math:`(B, K)`.
        num_identities: identities the judge chooses among.
        ranks: 1 for top-1, 5 for top-5.

    Returns:
        The mean over samples of ``1 - C(n - m, r) / C(n, r)``, ``m`` distinct identities in the sample.
    """
    if num_identities < 1:
        raise ValueError(f"Expected num_identities >= 1, got {num_identities}")
    ranks = min(ranks, num_identities)
    rates = []
    for row, keep in zip(labels.tolist(), valid.tolist()):
        m = len({label for label, ok in zip(row, keep) if ok})
        rates.append(1.0 - math.comb(num_identities - m, ranks) / math.comb(num_identities, ranks))
    return sum(rates) / len(rates) if rates else float("nan")


class Evaluator:
    """The independent evaluator: an FR model trained on clean private faces, never a target.

    Args:
        model_path: its ``model.pt``.
        device: where it runs (images move there; scores come back to the CPU).
    """

    def __init__(self, model_path: str | Path, device: torch.device | str = "cpu") -> None:
        self.model, record = load_trained_model(model_path, device)
        self.device = torch.device(device)
        if record.method != "none":
            raise ValueError(
                f"the evaluator must be trained on clean RGB faces (method none), {model_path} used {record.method!r}"
            )
        self.num_classes = record.num_classes

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        model = self.model
        return torch.cat(
            [
                model.head.logits(model.backbone(model.encoder(images[i : i + 128].to(self.device)))).cpu()
                for i in range(0, len(images), 128)
            ]
        )

    def embed(self, images: Tensor) -> Tensor:
        """Normalised embeddings (no flip averaging: reconstructions are scored as they are)."""
        return self.model.embed(images, flip_average=False, batch_size=128)

    def identified(self, images: Tensor, labels: Tensor, valid: Tensor) -> dict:
        """Top-1 / top-5 identification: a hit when the prediction is any valid constituent's identity.

        Args:
            images: (B, 3, 112, 112) in [0, 255].
            labels: identity of each constituent (B, k_max).
            valid: which constituents exist (B, k_max).

        Returns:
            top1, top5 and their chance rates (:func:`chance_hit_rate`); ``top1_hits``: each sample's top-1 hit.
        """
        logits = self.logits(images)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1_hit = ((top5[:, :1] == labels) & valid).any(dim=1)
        top5_hit = ((top5[:, :, None] == labels[:, None, :]) & valid[:, None, :]).any(dim=(1, 2))
        return {
            "top1": top1_hit.float().mean().item(),
            "top5": top5_hit.float().mean().item(),
            "top1_hits": top1_hit.tolist(),
            "chance_top1": chance_hit_rate(labels, valid, logits.shape[1], 1),
            "chance_top5": chance_hit_rate(labels, valid, logits.shape[1], 5),
        }


class DlibGallery:
    """The dlib judge with the private identities' clean faces as its gallery.

    Args:
        gallery: the clean private faces, labels in ``[0, num_identities)``.
        num_identities: identities to choose among (default: the largest label + 1); an
            identity without gallery faces is never predicted.
        judge: a :class:`~fmix.models.dlib_judge.DlibJudge` (default: a new one).
        gallery_file: descriptors of ``gallery`` written by ``fmix attack gallery`` (None: embed them now).

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255] (or uint8).
        - labels, valid, sources: :math:`(B, K)`, one column per constituent.
    """

    def __init__(
        self, gallery: FaceSet, num_identities: int | None = None, judge=None, gallery_file: str | Path | None = None
    ) -> None:

        if len(gallery) == 0:
            raise ValueError("Expected a non-empty gallery of clean private faces")
        if int(gallery.labels.min()) < 0:
            raise ValueError("Expected labelled gallery faces (labels >= 0)")
        self.judge = judge or DlibJudge()
        self.labels = gallery.labels.clone()
        self.num_identities = int(self.labels.max()) + 1 if num_identities is None else num_identities
        if self.num_identities <= int(self.labels.max()):
            raise ValueError(
                f"Expected num_identities > the largest gallery label {int(self.labels.max())}, got {self.num_identities}"
            )
        if gallery_file is None:
            self.descriptors = self.judge.embed(gallery.images)
        else:
            self.descriptors = load_gallery(gallery_file, gallery, self.judge)
        counts = torch.bincount(self.labels, minlength=self.num_identities)
        sums = torch.zeros(self.num_identities, self.descriptors.shape[1]).index_add_(0, self.labels, self.descriptors)
        self.templates = sums / counts.clamp(min=1)[:, None]
        self.has_faces = counts > 0

    def _verification(
        self, accepted: Tensor, labels: Tensor, valid: Tensor, sources: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Per sample: TAR of its best constituent, and whether any constituent had photos to verify against."""
        genuine = (self.labels[None, None, :] == labels[:, :, None]) & valid[:, :, None]
        if sources is not None:
            genuine &= torch.arange(len(self.labels))[None, None, :] != sources[:, :, None]
        pairs = genuine.sum(dim=2)
        rate = (genuine & accepted[:, None, :]).sum(dim=2) / pairs.clamp(min=1)
        rate = torch.where(pairs > 0, rate, torch.full_like(rate, -1.0))
        return rate.max(dim=1).values, (pairs > 0).any(dim=1)

    @torch.no_grad()
    def identified(self, images: Tensor, labels: Tensor, valid: Tensor, sources: Tensor | None = None) -> dict:
        """Identification among the private identities and verification against the person's other photos.

        Args:
            images: the images to judge (reconstructions, visualisations, decoded templates).
            labels: identity of each constituent.
            valid: which constituents exist (bool).
            sources: index into the gallery of each constituent's own photo, left out of its
                verification (None: verify against all of the person's photos).

        Returns:
            ``top1``, ``top5``, ``tar`` (mean over samples of the best constituent's share of
            the person's other photos within the judge's threshold), ``template_distance``
            (mean distance to the nearest constituent's template), each chance
            (``chance_top1``, ``chance_top5``, ``chance_tar``: the same TAR against another
            sample's identities), the ``threshold`` and ``verified`` (samples with photos to
            verify against); ``top1_hits``: each sample's top-1 hit. TARs are None when no sample has such photos.
        """
        _check_constituents(images, labels, valid, sources)
        descriptors = self.judge.embed(images)
        to_templates = self.judge.distance(descriptors, self.templates)
        to_templates[:, ~self.has_faces] = float("inf")
        ranked = to_templates.topk(min(5, int(self.has_faces.sum())), dim=1, largest=False).indices
        top1 = ((ranked[:, :1] == labels) & valid).any(dim=1)
        top5 = ((ranked[:, :, None] == labels[:, None, :]) & valid[:, None, :]).any(dim=(1, 2))
        nearest = to_templates.gather(1, labels).masked_fill(~valid, float("inf")).min(dim=1).values
        accepted = self.judge.distance(descriptors, self.descriptors) < self.judge.threshold
        tar, verified = self._verification(accepted, labels, valid, sources)
        # Impostors: the constituents of the sample half a batch away, minus this sample's identities.
        shift = len(images) // 2
        other_labels, other_valid = labels.roll(shift, 0), valid.roll(shift, 0)
        other_valid = other_valid & ~((other_labels[:, :, None] == labels[:, None, :]) & valid[:, None, :]).any(dim=2)
        other_sources = sources.roll(shift, 0) if sources is not None else None
        impostor, impostor_ok = self._verification(accepted, other_labels, other_valid, other_sources)
        identities = int(self.has_faces.sum())
        return {
            "top1": top1.float().mean().item(),
            "top5": top5.float().mean().item(),
            "top1_hits": top1.tolist(),
            "tar": tar[verified].mean().item() if verified.any() else None,
            "template_distance": nearest[torch.isfinite(nearest)].mean().item()
            if torch.isfinite(nearest).any()
            else None,
            "chance_top1": chance_hit_rate(labels, valid, identities, 1),
            "chance_top5": chance_hit_rate(labels, valid, identities, 5),
            "chance_tar": impostor[impostor_ok].mean().item() if impostor_ok.any() else None,
            "threshold": self.judge.threshold,
            "verified": int(verified.sum()),
        }


class OnnxGallery:
    """An ONNX face embedder as judge, with the private identities' clean faces as its gallery.

    Each identity's template is the normalised mean of its clean faces' normalised embeddings;
    an image is identified by cosine to the templates (identities without gallery faces are
    never predicted).

    Args:
        embedder: an :class:`~fmix.models.fr_export.OnnxFaceEmbedder`, or the path of its ``.onnx`` file.
        gallery: the clean private faces, labels in ``[0, num_identities)``.
        num_identities: identities to choose among (default: the largest label + 1).
        device: where ONNX Runtime runs when ``embedder`` is a path (``auto``: CUDA when it has it).

    Shape:
        - images: :math:`(B, 3, 112, 112)` RGB in [0, 255] (or uint8).
        - labels, valid: :math:`(B, K)`, one column per constituent.

    Raises:
        ValueError: an empty or unlabelled gallery, or ``num_identities`` not above its largest label.
        FileNotFoundError: no such ``.onnx`` file.
    """

    def __init__(self, embedder, gallery: FaceSet, num_identities: int | None = None, device: str = "auto") -> None:
        from fmix.models.fr_export import OnnxFaceEmbedder

        if len(gallery) == 0:
            raise ValueError("Expected a non-empty gallery of clean private faces")
        if int(gallery.labels.min()) < 0:
            raise ValueError("Expected labelled gallery faces (labels >= 0)")
        self.embedder = embedder if isinstance(embedder, OnnxFaceEmbedder) else OnnxFaceEmbedder(embedder, device)
        self.labels = gallery.labels.clone()
        self.num_identities = int(self.labels.max()) + 1 if num_identities is None else num_identities
        if self.num_identities <= int(self.labels.max()):
            raise ValueError(
                f"Expected num_identities > the largest gallery label {int(self.labels.max())}, got {self.num_identities}"
            )
        embeddings = self.embedder.embed(gallery.float_images(torch.arange(len(gallery))))
        counts = torch.bincount(self.labels, minlength=self.num_identities)
        sums = torch.zeros(self.num_identities, embeddings.shape[1]).index_add_(0, self.labels, embeddings)
        self.templates = torch.nn.functional.normalize(sums, dim=1)
        self.has_faces = counts > 0

    @torch.no_grad()
    def identified(self, images: Tensor, labels: Tensor, valid: Tensor, sources: Tensor | None = None) -> dict:
        """Identification among the private identities by cosine to their templates.

        Args:
            images: the images to judge.
            labels: identity of each constituent.
            valid: which constituents exist (bool).
            sources: unused (accepted for the scorer's one interface: no verification here).

        Returns:
            ``top1``, ``top5``, ``template_cosine`` (mean cosine to the nearest valid
            constituent's template), ``chance_top1`` and ``chance_top5``; ``top1_hits``: each sample's top-1 hit.
        """
        _check_constituents(images, labels, valid, sources)
        cosines = self.embedder.embed(images.float()) @ self.templates.T
        cosines[:, ~self.has_faces] = -float("inf")
        ranked = cosines.topk(min(5, int(self.has_faces.sum())), dim=1).indices
        top1 = ((ranked[:, :1] == labels) & valid).any(dim=1)
        top5 = ((ranked[:, :, None] == labels[:, None, :]) & valid[:, None, :]).any(dim=(1, 2))
        nearest = cosines.gather(1, labels).masked_fill(~valid, -float("inf")).max(dim=1).values
        identities = int(self.has_faces.sum())
        finite = torch.isfinite(nearest)
        return {
            "top1": top1.float().mean().item(),
            "top5": top5.float().mean().item(),
            "top1_hits": top1.tolist(),
            "template_cosine": nearest[finite].mean().item() if finite.any() else None,
            "chance_top1": chance_hit_rate(labels, valid, identities, 1),
            "chance_top5": chance_hit_rate(labels, valid, identities, 5),
        }


TEMPLATES_FILE = "templates.pt"  # beside the evaluator's model.pt: its templates of the clean private training faces


def _templates_key(model_path: Path, faces: FaceSet, num_classes: int) -> str:
    """What the templates depend on: the evaluator's weights, the faces (paths, pixels, labels) and the class count."""
    digest = hashlib.sha256(Path(model_path).read_bytes())
    digest.update("\n".join(faces.paths).encode())
    digest.update(faces.images.numpy().tobytes())
    digest.update(faces.labels.numpy().tobytes())
    digest.update(str(num_classes).encode())
    return digest.hexdigest()


def clean_templates(evaluator: Evaluator, faces: FaceSet, num_classes: int) -> Tensor:
    """Each identity's clean template: the normalised sum of the evaluator's embeddings of its faces.

    Args:
        evaluator: the RGB evaluator.
        faces: the clean private training faces.
        num_classes: identities (rows; an identity without faces gets a zero row).

    Shape:
        - Output: :math:`(num\\_classes, E)`.
    """
    clean = evaluator.embed(faces.float_images(torch.arange(len(faces))))
    sums = torch.zeros(num_classes, clean.shape[1]).index_add_(0, faces.labels, clean)
    return torch.nn.functional.normalize(sums, dim=1)


def write_templates(evaluator_path: str | Path, faces: FaceSet, device: torch.device | str = "cpu") -> Path:
    """Embed the clean private faces once with the evaluator, into :data:`TEMPLATES_FILE` beside its ``model.pt``.

    Every model inversion reads them (:func:`load_templates`) instead of embedding the faces again.

    Args:
        evaluator_path: the evaluator's ``model.pt``.
        faces: the clean private training faces.
        device: where the evaluator runs.

    Returns:
        The templates file.
    """
    evaluator_path = Path(evaluator_path)
    evaluator = Evaluator(evaluator_path, device)
    templates = clean_templates(evaluator, faces, evaluator.num_classes)
    out = evaluator_path.parent / TEMPLATES_FILE
    save_checkpoint({"key": _templates_key(evaluator_path, faces, evaluator.num_classes), "templates": templates}, out)
    return out


def load_templates(evaluator_path: str | Path, evaluator: Evaluator, faces: FaceSet, num_classes: int) -> Tensor:
    """The evaluator's clean templates: from :data:`TEMPLATES_FILE` when it was made by this evaluator for these
    faces and classes, else embedded here (:func:`clean_templates`)."""
    cached = Path(evaluator_path).parent / TEMPLATES_FILE
    if cached.is_file():
        record = load_checkpoint(cached)
        if record.get("key") == _templates_key(Path(evaluator_path), faces, num_classes):
            return record["templates"]
    return clean_templates(evaluator, faces, num_classes)


class IdentityScorer:
    """S2 / S4 scoring for the attacks: the chosen judge's numbers and the RGB evaluator's beside them.

    Args:
        judge: ``"dlib"``, ``"evaluator"`` or the path of an ONNX face embedder (the headline judge,
            :func:`check_judge`).
        evaluator: the RGB evaluator (always scored).
        gallery: the clean private faces (the dlib and ONNX judges' gallery; unused by the evaluator).
        num_identities: private identities (default: the evaluator's classes).
        gallery_file: the dlib gallery's descriptors from ``fmix attack gallery`` (None: embed them;
            unused by the other judges).
        device: where an ONNX judge runs (``auto``: CUDA when ONNX Runtime has it).
    """

    def __init__(
        self,
        judge: str,
        evaluator: Evaluator,
        gallery: FaceSet,
        num_identities: int | None = None,
        gallery_file: str | Path | None = None,
        device: str = "auto",
    ) -> None:
        self.judge, self.evaluator = check_judge(judge), evaluator
        self.key = judge_key(judge)
        identities = num_identities or evaluator.num_classes
        self.dlib = DlibGallery(gallery, identities, gallery_file=gallery_file) if judge == "dlib" else None
        self.onnx = OnnxGallery(judge, gallery, identities, device) if self.key == ONNX_JUDGE else None

    def identified(
        self,
        images: Tensor,
        labels: Tensor,
        valid: Tensor,
        sources: Tensor | None = None,
        strata: list[str] | None = None,
    ) -> dict:
        """Score images against the identities of their constituents.

        Args:
            images: :math:`(B, 3, H, W)` RGB in [0, 255].
            labels: identity of each constituent :math:`(B, K)`.
            valid: which constituents exist :math:`(B, K)`, bool.
            sources: gallery index of each constituent's own photo :math:`(B, K)` (see
                :meth:`DlibGallery.identified`), or None.
            strata: each sample's stratum of photos per identity (e.g. of its heaviest constituent,
                :func:`fmix.attacks.aggregate.stratum_of`), or None.

        Returns:
            ``judge``, the headline ``top1``, ``top5``, ``chance_top1`` (and ``tar``,
            ``chance_tar`` for dlib), ``by_judge``: every judge's full scores (an ONNX
            judge's under ``onnx``), and with ``strata`` ``by_stratum``: the headline judge's
            ``n`` and ``top1`` per stratum.
        """
        _check_constituents(images, labels, valid, sources)
        by_judge = {"evaluator": self.evaluator.identified(images, labels, valid)}
        if self.dlib is not None:
            by_judge["dlib"] = self.dlib.identified(images, labels, valid, sources)
        if self.onnx is not None:
            by_judge[ONNX_JUDGE] = self.onnx.identified(images, labels, valid, sources)
        headline = by_judge[self.key]
        keys = ("top1", "top5", "chance_top1", "tar", "chance_tar")
        out = {"judge": self.judge, **{key: headline[key] for key in keys if key in headline}, "by_judge": by_judge}
        if strata is not None:
            if len(strata) != len(images):
                raise ValueError(f"Expected one stratum per image ({len(images)}), got {len(strata)}")
            out["by_stratum"] = top1_by_stratum(headline["top1_hits"], strata)
        return out


def top1_by_stratum(hits: list[bool], strata: list[str]) -> dict[str, dict]:
    """Top-1 rate per stratum (in order of first appearance), with its number of samples.

    Args:
        hits: each sample's top-1 hit.
        strata: each sample's stratum.

    Returns:
        Stratum -> ``{"n", "top1"}``.
    """
    out = {}
    for name in dict.fromkeys(strata):
        chosen = [hit for hit, stratum in zip(hits, strata) if stratum == name]
        out[name] = {"n": len(chosen), "top1": sum(chosen) / len(chosen)}
    return out
