"""``fmix attack aggregate``: the worst-case attack on a release, aimed at the people it holds most of.

A release's ``index.csv`` publishes every sample's labels and weights, so an attacker knows, for each
published label ``L``, the samples in which ``L`` is the heaviest constituent, and every sample that
holds ``L`` at all. A person appears in as many samples as they have photos: the attacker picks the
labels that are the heaviest constituent of the most samples (the most photographed people) and
attacks them one by one (docs/design.md §1: privacy is judged per person, for the people most at risk):

- ``single``: the sample where ``L`` weighs most, inverted;
- ``heaviest``: the mean over the samples where ``L`` is heaviest, inverted: the other faces, the
  sign mask and the noise average out, the person's face does not;
- ``weighted``: the mean over every sample holding ``L``, each weighted by ``L``'s weight in it.

What is averaged and inverted is what the attackers read everywhere (:mod:`fmix.attacks.run`):
``|x|`` when the masker's mixing has a sign mask, else ``x``. The inverter is the attack check's
network: a :class:`~fmix.attacks.reconstruction.ReconstructionAttack` trained on public faces
masked *without* mixing (k = 1, ``|x|`` under a sign mask): the attackers' shared prior of ``fmix
attack prior`` (:mod:`fmix.attacks.prior`) when given, else one trained here with the ``attack``
section's budget. Training it on mixes instead would understate the attack.

Scoring is the owner's side: the ledger's header (``labels``: identity -> published label) names
each target's identity, and the judge (dlib by default, with ``fmix attack gallery``'s file when
given) identifies every reconstruction among *all* private identities: top-1 and top-5 beside
chance. Two controls: the positive control (the same inverter on un-mixed masked photos of the same
people; unless it names at least ``attack.check_min_s4`` of them the inverter is too weak at this
budget and a low score credits no privacy) and the shuffled control (each template scored as
another target: it must sit at chance). Results come per stratum of photos per identity in the
private training split; the headline is the maximum over the attacks run, and the worst stratum
(the one whose people are named most often) is named.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from fmix.attacks.grids import image_grid
from fmix.attacks.identity import DlibGallery, OnnxGallery, chance_hit_rate, is_onnx_judge
from fmix.attacks.prior import load_prior, masking_key, unmixed_inverter, unmixed_protector
from fmix.attacks.reconstruction import AttackConfig
from fmix.attacks.strata import DEFAULT_STRATA, parse_strata, stratum_names, stratum_of
from fmix.data.faces import FaceSet, load_face_set, read_face_list
from fmix.data.images import write_png_atomic
from fmix.io import read_json, write_json_atomic
from fmix.params import AttackParams
from fmix.release.folder import IndexRow, ReleaseFolder, read_release_folder
from fmix.release.ledger import Ledger, default_ledger_path, file_hash

ATTACKS = ("single", "heaviest", "weighted")  # the attacks the headline maximises over, in the order ties go
DEFAULT_TARGETS = 100


@dataclass(frozen=True)
class Target:
    """A published label the attacker aims at, and the samples that single it out.

    Attributes:
        label: the published label.
        heaviest: indices into the release's rows of the samples where ``label`` is the heaviest
            constituent (a tie for the largest weight counts for every label holding it), in row order.
        heaviest_weights: ``label``'s weight in each of them.
        containing: indices of every sample holding ``label``, in row order.
        containing_weights: ``label``'s total weight in each of them.
        single: the index of the sample where ``label`` weighs most among ``heaviest`` (ties: the first).
    """

    label: int
    heaviest: tuple[int, ...]
    heaviest_weights: tuple[float, ...]
    containing: tuple[int, ...]
    containing_weights: tuple[float, ...]
    single: int


def select_targets(rows: list[IndexRow], count: int = DEFAULT_TARGETS) -> list[Target]:
    """The published labels that are the heaviest constituent of the most samples, with their samples.

    Only what ``index.csv`` publishes is used. Labels are ranked by the number of samples where
    they are heaviest, then by the number of samples holding them, then by the label (smallest
    first): the ranking is deterministic.

    Args:
        rows: the release's index rows (:attr:`fmix.release.folder.ReleaseFolder.rows`).
        count: how many targets at most.

    Returns:
        Up to ``count`` targets, best first; only labels that are heaviest somewhere.

    Raises:
        ValueError: ``count`` < 1.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"Expected targets >= 1, got {count!r}")
    heaviest: dict[int, list[tuple[int, float]]] = {}
    containing: dict[int, list[tuple[int, float]]] = {}
    for index, row in enumerate(rows):
        totals: dict[int, float] = {}
        for label, weight in zip(row.labels, row.weights):
            totals[label] = totals.get(label, 0.0) + weight
        for label, total in totals.items():
            containing.setdefault(label, []).append((index, total))
        top = max(row.weights)
        for label in sorted({label for label, weight in zip(row.labels, row.weights) if weight == top}):
            heaviest.setdefault(label, []).append((index, top))
    ranked = sorted(heaviest, key=lambda label: (-len(heaviest[label]), -len(containing[label]), label))[:count]
    targets = []
    for label in ranked:
        own, held = heaviest[label], containing[label]
        single = min(own, key=lambda item: (-item[1], item[0]))[0]
        targets.append(
            Target(
                label,
                tuple(i for i, _ in own),
                tuple(w for _, w in own),
                tuple(i for i, _ in held),
                tuple(w for _, w in held),
                single,
            )
        )
    return targets


def attacker_view(x: Tensor, sign_masked: bool) -> Tensor:
    """What the attackers read of a protected sample: ``|x|`` under a sign mask (which carries nothing), else ``x``."""
    return x.abs() if sign_masked else x


def mean_template(views: Tensor, weights: Tensor | None = None) -> Tensor:
    """The mean of samples as read by the attacker, optionally weighted.

    Args:
        views: the samples (:func:`attacker_view`).
        weights: one weight per sample (None: the plain mean).

    Shape:
        - views: :math:`(n, K, h, w)`, n >= 1.
        - weights: :math:`(n,)`.
        - Output: :math:`(K, h, w)`.

    Raises:
        ValueError: no sample, weights of another length, or weights that do not sum to a positive number.
    """
    if views.dim() != 4 or views.shape[0] == 0:
        raise ValueError(f"Expected views of shape (n, K, h, w) with n >= 1, got {tuple(views.shape)}")
    if weights is None:
        return views.mean(dim=0)
    weights = torch.as_tensor(weights, dtype=views.dtype)
    if weights.shape != (views.shape[0],) or not float(weights.sum()) > 0:
        raise ValueError(f"Expected {views.shape[0]} weights with a positive sum, got {weights.tolist()}")
    return (weights[:, None, None, None] * views).sum(dim=0) / weights.sum()


def _iter_views(release: ReleaseFolder, wanted: set[int], sign_masked: bool) -> Iterator[tuple[int, Tensor]]:
    """(row index, attacker's view) of the wanted rows, one shard loaded at a time."""
    position = {id(row): index for index, row in enumerate(release.rows)}
    for shard, rows in release.shards().items():
        picked = [row for row in rows if position[id(row)] in wanted]
        if not picked:
            continue
        samples = torch.from_numpy(release.load_shard(shard, len(rows)))
        for row in picked:
            if row.row >= len(samples):
                raise ValueError(
                    f"{release.path}: index.csv lists row {row.row} of shard {shard}, which holds {len(samples)} samples"
                )
            yield position[id(row)], attacker_view(samples[row.row], sign_masked)


def load_views(release: ReleaseFolder, indices: list[int] | tuple[int, ...], sign_masked: bool) -> Tensor:
    """The attacker's view of some released samples.

    Args:
        release: the release (:func:`fmix.release.folder.read_release_folder`).
        indices: indices into ``release.rows``.
        sign_masked: read ``|x|`` (:func:`attacker_view`).

    Shape:
        - Output: :math:`(n, K, h, w)`, in the order of ``indices``.

    Returns:
        The views, float32.
    """
    found = dict(_iter_views(release, set(indices), sign_masked))
    return torch.stack([found[i] for i in indices])


def build_templates(release: ReleaseFolder, targets: list[Target], sign_masked: bool) -> dict[str, Tensor]:
    """Each target's single sample and its two aggregated templates, one shard in memory at a time.

    Args:
        release: the release.
        targets: from :func:`select_targets`.
        sign_masked: the samples carry a sign mask (the attacker reads ``|x|``).

    Shape:
        - Output: each :math:`(N, K, h, w)`, one row per target.

    Returns:
        ``single`` (the sample where the target weighs most), ``heaviest`` (the mean over the
        samples where it is heaviest) and ``weighted`` (the weight-weighted mean over every sample
        holding it).
    """
    uses: dict[int, list[tuple[int, str, float]]] = {}
    for t, target in enumerate(targets):
        uses.setdefault(target.single, []).append((t, "single", 1.0))
        for index in target.heaviest:
            uses.setdefault(index, []).append((t, "heaviest", 1.0))
        for index, weight in zip(target.containing, target.containing_weights):
            uses.setdefault(index, []).append((t, "weighted", weight))
    sums: dict[str, Tensor | None] = dict.fromkeys(ATTACKS)
    totals = {name: torch.zeros(len(targets), dtype=torch.float64) for name in ATTACKS}
    for index, view in _iter_views(release, set(uses), sign_masked):
        for t, name, weight in uses[index]:
            if sums[name] is None:
                sums[name] = torch.zeros(len(targets), *view.shape, dtype=torch.float64)
            sums[name][t] += weight * view.double()
            totals[name][t] += weight
    return {name: (sums[name] / totals[name].clamp_min(1e-12)[:, None, None, None]).float() for name in ATTACKS}


def published_identities(release: ReleaseFolder, ledger: str | Path | None = None) -> dict[int, str]:
    """Published label -> identity, as only the owner knows it.

    From the header of the release in the owner's ledger (``labels``: identity -> label), else from
    the release's ``labels.json`` when it was published with ``--publish-label-names``.

    Args:
        release: the release.
        ledger: the owner's ledger (default: :func:`fmix.release.ledger.default_ledger_path`).

    Returns:
        Label -> identity name.

    Raises:
        ValueError: neither the ledger nor the release names the labels, or the numbering is not one-to-one.
    """
    path = Path(ledger) if ledger else default_ledger_path()
    header = Ledger(path).header(release.run["release"]) if path.is_file() else None
    if header is not None:
        names = header["labels"]
    elif (release.path / "labels.json").is_file():
        names = read_json(release.path / "labels.json", "labels.json of `fmix mask`")
    else:
        raise ValueError(
            f"the ledger {path} holds no header of the release {release.path} and the release has no labels.json (pass its ledger with --ledger)"
        )
    if not all(isinstance(label, int) and not isinstance(label, bool) for label in names.values()) or len(
        set(names.values())
    ) != len(names):
        raise ValueError(f"the label numbering of the release {release.path} is not one integer per identity")
    return {label: identity for identity, label in names.items()}


def _gallery_judge(judge: str, gallery: FaceSet, gallery_file: str | Path | None) -> DlibGallery | OnnxGallery:
    """The judge among all private identities: an ONNX embedder when ``attack.judge`` names one, else dlib."""
    if is_onnx_judge(judge):
        return OnnxGallery(judge, gallery)
    return DlibGallery(gallery, gallery_file=gallery_file)


@torch.no_grad()
def ranked_identities(judge: DlibGallery | OnnxGallery, images: Tensor, ranks: int = 5) -> Tensor:
    """The judge's first ``ranks`` identities for each image, among the identities with gallery faces.

    Args:
        judge: a :class:`~fmix.attacks.identity.DlibGallery` (nearest template by distance) or
            :class:`~fmix.attacks.identity.OnnxGallery` (largest cosine).
        images: RGB in [0, 255].
        ranks: how many identities.

    Shape:
        - images: :math:`(B, 3, H, W)`.
        - Output: :math:`(B, \\min(ranks, identities))`, best first.

    Returns:
        Identity labels.
    """
    if isinstance(judge, DlibGallery):
        scores = -judge.judge.distance(judge.judge.embed(images), judge.templates)
    else:
        scores = judge.embedder.embed(images.float()) @ judge.templates.T
    scores = scores.masked_fill(~judge.has_faces[None, :], -float("inf"))
    return scores.topk(min(ranks, int(judge.has_faces.sum())), dim=1).indices


def hits(ranked: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 and top-5 hits of ranked identities (:func:`ranked_identities`) against one label per image, each :math:`(B,)` bool."""
    match = ranked == labels[:, None]
    return match[:, :1].any(dim=1), match[:, :5].any(dim=1)


def null_hit_rate(ranked: Tensor, labels: Tensor) -> float:
    """The top-1 rate of reconstructions that carry nothing of their own target: each target's identity
    as the judge names the *other* targets' reconstructions, averaged (the shuffled control over every pairing).

    Above chance when the judge names a few identities for most reconstructions (hubs) and a hub is a target.

    Args:
        ranked: the judge's identities per reconstruction (:func:`ranked_identities`).
        labels: each target's identity.

    Shape:
        - ranked: :math:`(N, R)`; labels: :math:`(N,)`.

    Returns:
        The rate, in [0, 1]; 0 for fewer than two targets.
    """
    count = len(labels)
    if count < 2:
        return 0.0
    named = ranked[:, 0][None, :] == labels[:, None]  # [target i, reconstruction j]
    named &= ~torch.eye(count, dtype=torch.bool)
    return named.sum().item() / (count * (count - 1))


def score_by_stratum(top1: Tensor, top5: Tensor, strata: list[str], names: list[str], identities: int) -> dict:
    """Identification rates overall and per stratum, with chance beside them.

    Args:
        top1: top-1 hit of each target :math:`(N,)` bool.
        top5: top-5 hit of each target :math:`(N,)` bool.
        strata: each target's stratum (:func:`stratum_of`).
        names: the strata to report, in order (a stratum without targets gets ``n = 0`` and None rates).
        identities: the identities the judge chooses among.

    Returns:
        ``n``, ``top1``, ``top5``, ``chance_top1``, ``chance_top5`` and ``by_stratum``: the same per stratum.
    """
    chance = {
        f"chance_top{r}": chance_hit_rate(
            torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool), identities, r
        )
        for r in (1, 5)
    }

    def rates(chosen: list[int]) -> dict:
        if not chosen:
            return {"n": 0, "top1": None, "top5": None, **chance}
        index = torch.tensor(chosen)
        return {
            "n": len(chosen),
            "top1": top1[index].float().mean().item(),
            "top5": top5[index].float().mean().item(),
            **chance,
        }

    by_stratum = {name: rates([i for i, s in enumerate(strata) if s == name]) for name in names}
    return {**rates(list(range(len(strata)))), "by_stratum": by_stratum}


def worst_case(attacks: dict[str, dict], names: tuple[str, ...] = ATTACKS) -> dict:
    """The headline: the maximum over the attacks run, overall and per stratum, and the worst stratum.

    Args:
        attacks: attack name -> :func:`score_by_stratum` record.
        names: the attacks to maximise over, in the order ties are broken.

    Returns:
        ``attack`` and ``top1`` (the largest overall top-1 and the first attack reaching it),
        ``top5`` (the largest overall top-5), ``chance_top1``, ``chance_top5``, ``by_stratum``
        (per stratum: ``n``, the largest ``top1`` and its ``attack``), ``worst_stratum`` (the
        stratum with targets whose largest top-1 is highest; ties: the stratum with more targets,
        then the first) and ``worst_stratum_top1``.

    Raises:
        ValueError: none of ``names`` is in ``attacks``.
    """
    run = [name for name in names if name in attacks]
    if not run:
        raise ValueError(f"Expected at least one of the attacks {names}, got {sorted(attacks)}")
    best = max(run, key=lambda name: (attacks[name]["top1"], -run.index(name)))
    by_stratum = {}
    for stratum in attacks[run[0]]["by_stratum"]:
        scored = [name for name in run if attacks[name]["by_stratum"][stratum]["top1"] is not None]
        if not scored:
            by_stratum[stratum] = {"n": 0, "top1": None, "attack": None}
            continue
        top = max(scored, key=lambda name: (attacks[name]["by_stratum"][stratum]["top1"], -scored.index(name)))
        by_stratum[stratum] = {
            "n": attacks[top]["by_stratum"][stratum]["n"],
            "top1": attacks[top]["by_stratum"][stratum]["top1"],
            "attack": top,
        }
    filled = [s for s, v in by_stratum.items() if v["top1"] is not None]
    order = list(by_stratum)
    worst = max(filled, key=lambda s: (by_stratum[s]["top1"], by_stratum[s]["n"], -order.index(s))) if filled else None
    return {
        "attack": best,
        "top1": attacks[best]["top1"],
        "top5": max(attacks[name]["top5"] for name in run),
        "chance_top1": attacks[best]["chance_top1"],
        "chance_top5": attacks[best]["chance_top5"],
        "by_stratum": by_stratum,
        "worst_stratum": worst,
        "worst_stratum_top1": by_stratum[worst]["top1"] if worst else None,
    }


def _spread(values: list[int]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def attack_aggregate(
    release_dir: str | Path,
    masker_path: str | Path,
    aligned: str | Path,
    splits: str | Path,
    out_dir: str | Path,
    params: AttackParams = AttackParams(),
    targets: int = DEFAULT_TARGETS,
    strata: tuple[int, ...] | str = DEFAULT_STRATA,
    gallery_file: str | Path | None = None,
    ledger: str | Path | None = None,
    network: AttackConfig | None = None,
    prior: str | Path | None = None,
) -> dict:
    """Attack the most represented people of a release, single samples and aggregates; writes ``aggregate.json`` and ``aggregate_grid.png``.

    Args:
        release_dir: output folder of ``fmix mask`` (what the attacker holds).
        masker_path: the masker that made it (white-box: the inverter is trained with it).
        aligned: output folder of ``fmix align`` (the owner's faces: gallery and positive control).
        splits: output folder of ``fmix split`` (``public.csv``: the attacker's faces;
            ``private_train.csv``: the judge's gallery and the photo counts of the strata).
        out_dir: destination of ``aggregate.json`` and ``aggregate_grid.png``.
        params: the ``attack`` section: the inverter's budget (``steps``, ``seconds``), its batch
            size, seed and device; ``judge`` (an ONNX embedder's path, else the dlib judge) and
            ``check_min_s4`` (the positive control's bar).
        targets: how many published labels to attack (:func:`select_targets`).
        strata: stratum bounds in photos per identity (:func:`parse_strata`).
        gallery_file: the dlib judge's ``gallery.npz`` of ``fmix attack gallery`` (None: embed the gallery here).
        ledger: the owner's ledger of the release (default: :func:`fmix.release.ledger.default_ledger_path`).
        network: inversion-network settings (default: :meth:`AttackConfig.from_params`).
        prior: the attackers' prior of ``fmix attack prior`` (:mod:`fmix.attacks.prior`): the
            inverter when it is of this masking (no training here), else one is trained here.

    Returns:
        The record written to ``aggregate.json``: ``attacks`` (``single``, ``heaviest``,
        ``weighted``: overall and per stratum, chance beside them), ``controls`` (``positive``,
        ``shuffled``), ``attack_works``, ``headline`` (:func:`worst_case`) and ``per_target``.

    Raises:
        FileNotFoundError: a missing release, masker, split file, gallery file or face.
        ValueError: a damaged release, a masker that did not make it (``run.json`` pins its
            SHA-256), labels the ledger does not name, a target identity outside
            ``private_train.csv``, or bad ``targets`` / ``strata``.
    """
    release_dir, aligned, splits, out_dir = Path(release_dir), Path(aligned), Path(splits), Path(out_dir)
    bounds = parse_strata(strata)
    release = read_release_folder(release_dir)
    chosen = select_targets(release.rows, targets)
    protector, sign_masked, metadata = unmixed_protector(masker_path)
    pinned = release.run.get("masker_sha256")
    if pinned is not None and pinned != file_hash(masker_path):
        raise ValueError(
            f"{masker_path} did not make the release {release_dir}: its run.json pins the masker SHA-256 {pinned}"
        )
    identity_of = published_identities(release, ledger)
    private_rows = read_face_list(splits / "private_train.csv")
    gallery = load_face_set(aligned, splits / "private_train.csv")
    gallery_label, photos, first_photo = {}, {}, {}
    for index, (_, identity) in enumerate(private_rows):
        gallery_label[identity] = int(gallery.labels[index])
        photos[identity] = photos.get(identity, 0) + 1
        first_photo.setdefault(identity, index)
    missing = [t.label for t in chosen if t.label not in identity_of]
    if missing:
        raise ValueError(
            f"the owner's label numbering of {release_dir} does not name the published label(s) {missing[:5]}"
        )
    outside = sorted({identity_of[t.label] for t in chosen} - set(gallery_label))
    if outside:
        raise ValueError(
            f"{len(outside)} target identities of {release_dir} are not in {splits / 'private_train.csv'} (first: {outside[0]}): give the splits the release was made from"
        )
    if int(gallery.labels.min()) < 0:
        raise ValueError(f"{splits / 'private_train.csv'} has no label column: not a split of `fmix split`")
    identities = [identity_of[t.label] for t in chosen]
    truth = torch.tensor([gallery_label[name] for name in identities])
    target_strata = [stratum_of(photos[name], bounds) for name in identities]
    names = stratum_names(bounds)
    names = [
        s for s in sorted(set(target_strata) - set(names))
    ] + names  # a stratum below the first bound, if any target falls there

    templates = build_templates(release, chosen, sign_masked)
    originals = gallery.float_images(torch.tensor([first_photo[name] for name in identities]))
    control = protector(originals, truth, torch.Generator().manual_seed(params.seed + 1)).x
    if control.shape[1:] != templates["single"].shape[1:]:
        raise ValueError(
            f"{masker_path} masks faces to {tuple(control.shape[1:])}, the release {release_dir} holds samples of {tuple(templates['single'].shape[1:])}: not its masker"
        )
    judge = _gallery_judge(params.judge, gallery, gallery_file)
    public = load_face_set(aligned, splits / "public.csv")
    network = network or AttackConfig.from_params(params)
    inverter, trained = unmixed_inverter(
        protector,
        masking_key(metadata, sign_masked),
        public.chw_images(),
        public.labels,
        params,
        network,
        None if prior is None else load_prior(prior, network),
    )
    recon = {name: inverter.invert(templates[name]) for name in ATTACKS} | {"positive": inverter.invert(control)}
    count = int(judge.has_faces.sum())
    ranked = {name: ranked_identities(judge, images) for name, images in recon.items()}
    found = {name: hits(ranked[name], truth) for name in recon}
    # The shuffled control: each target's aggregated template scored as the next target (another person).
    wrong = truth.roll(1) if len(truth) > 1 else (truth + 1) % judge.num_identities
    found["shuffled"] = hits(ranked["heaviest"], wrong)
    scores = {name: score_by_stratum(*found[name], target_strata, names, count) for name in found}
    for name in recon:
        scores[name]["null_top1"] = null_hit_rate(ranked[name], truth)
    attacks = {name: scores[name] for name in ATTACKS}
    works = scores["positive"]["top1"] >= params.check_min_s4
    record = {
        "release": str(release_dir),
        "masker": str(masker_path),
        "samples": len(release.rows),
        "attackers_read": "|x|" if sign_masked else "x",
        "judge": "onnx" if is_onnx_judge(params.judge) else "dlib",
        "identities": count,
        "chance_top1": attacks["single"]["chance_top1"],
        "chance_top5": attacks["single"]["chance_top5"],
        "targets": {
            "requested": targets,
            "selected": len(chosen),
            "heaviest_samples": _spread([len(t.heaviest) for t in chosen]),
            "containing_samples": _spread([len(t.containing) for t in chosen]),
        },
        "strata": {"bounds": list(bounds), "names": names, "photos_of": "the identity's photos in private_train.csv"},
        "inverter": {
            "trained_on": "public faces masked without mixing (k = 1), as the attack check",
            **trained,
        },
        "attacks": attacks,
        "controls": {
            "positive": {
                **scores["positive"],
                "what": "the same inverter on un-mixed masked photos of the same people",
                "min_top1": params.check_min_s4,
                "attack_works": works,
            },
            "shuffled": {
                **scores["shuffled"],
                "what": "each heaviest-mean template scored as another target's identity: sits at chance",
            },
        },
        "attack_works": works,
        "headline": {**worst_case(attacks), "attack_works": works},
        "per_target": [
            {
                "label": target.label,
                "photos": photos[name],
                "stratum": stratum,
                "heaviest_samples": len(target.heaviest),
                "containing_samples": len(target.containing),
                "top1": {attack: bool(found[attack][0][i]) for attack in (*ATTACKS, "positive")},
            }
            for i, (target, name, stratum) in enumerate(zip(chosen, identities, target_strata))
        ],
    }
    shown = slice(0, min(8, len(chosen)))
    write_png_atomic(
        image_grid([originals[shown], *(recon[name][shown] for name in ATTACKS)]), out_dir / "aggregate_grid.png"
    )
    write_json_atomic(out_dir / "aggregate.json", record)
    return record
