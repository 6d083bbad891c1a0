"""``fmix mask``: protect an image folder with an exported masker run by ONNX Runtime.

The folder it writes is described in :mod:`fmix.release.folder`; outside it, the owner's ledger
(:mod:`fmix.release.ledger`) lists the released faces. What makes a release refuse to run rather
than come out weaker than asked:

- the masker's metadata is validated and bound (:mod:`fmix.masker.metadata`) and its graph
  checked on a probe batch (:class:`~fmix.masker.onnx_masker.OnnxMasker`);
- a mixed release has k >= 2 in every sample: a masker whose policy can draw k = 1 is refused;
- every shard is finite before it is written;
- a face (by content) is a constituent of at most one sample: the same image under two names
  is released once, the other name reported with the status ``duplicate``; a face an earlier
  release used is refused (the ledger);
- a resume must match the run it continues: masker, options, inputs and secret key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools
import json
import math
import os
import secrets
import threading
import warnings
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmix.data.faces import load_faces, read_face_list
from fmix.data.images import list_identity_folders, read_rgb_fast, write_png_atomic
from fmix.freq import protected_to_image, to_uint8_hwc
from fmix.io import read_json, write_json_atomic
from fmix.masker.build import faces_to_tensor, mask_from_metadata
from fmix.masker.metadata import binding_digest
from fmix.masker.onnx_masker import OnnxMasker
from fmix.masker.protection import MixingConfig, Protection
from fmix.params import AlignParams, MaskParams
from fmix.progress import Heartbeat
from fmix.release.folder import ReleaseWriter, shard_path
from fmix.release.ledger import Ledger, check_ledger_location, default_ledger_path, file_hash
from fmix.release.mixing import release_groups
from fmix.release.randomness import ReleaseRandomness, key_check_value

NAME_KEY_ENV = "FMIX_NAME_KEY"
WEIGHT_DECIMALS = 2  # label weights a trainer needs; finer values only help an attacker
INSECURE_WEIGHT_DECIMALS = 6  # the old format, kept for --insecure-reuse releases (attack experiments)


def sample_name(relative: str | list[str], key: bytes | None) -> str:
    """Output name of a sample: a keyed hash when ``key`` is given (identity names leak identity).

    Args:
        relative: the source path of the face, or of each constituent of a one-use sample.
        key: the name key, or None to keep the names (constituents joined by ``+``).
    """
    sources = [relative] if isinstance(relative, str) else sorted(relative)
    if key is None:
        return "+".join(source.rsplit(".", 1)[0] for source in sources)
    return hmac.new(key, "\n".join(sources).encode(), hashlib.sha256).hexdigest()[:20]


def list_inputs(in_dir: Path, face_list: Path | None) -> list[tuple[str, str]]:
    """(relative path, identity) of every input face, from a split CSV or the ImageFolder tree."""
    if face_list is not None:
        return read_face_list(face_list)
    return [
        (p.relative_to(in_dir).as_posix(), name) for name, files in list_identity_folders(in_dir).items() for p in files
    ]


@dataclass(frozen=True)
class ReleaseOptions:
    """How a release keeps its secrets (see :mod:`fmix.release.randomness` and :mod:`fmix.release.ledger`).

    Args:
        secret_key: derive every random part from this key (reproducible research runs; keep
            it outside the release); None: the OS CSPRNG, reproducible by nobody.
        ledger: the owner's ledger of released faces (default: :func:`fmix.release.ledger.default_ledger_path`).
        allow_rerelease: warn instead of refusing faces that an earlier release used.
        publish_label_names: write ``labels.json`` (identity -> label) into the release.
        insecure_seed: INSECURE: a seed recorded in ``run.json`` (attack experiments only).
        insecure_reuse: INSECURE: one sample per face with partners from its batch, so each face
            is in about k samples (attack experiments only).
    """

    secret_key: bytes | None = None
    ledger: Path | None = None
    allow_rerelease: bool = False
    publish_label_names: bool = False
    insecure_seed: int | None = None
    insecure_reuse: bool = False


@dataclass(frozen=True)
class ShardJob:
    """What protecting one shard needs besides its faces and generator."""

    in_root: Path
    masker: OnnxMasker
    mix: bool
    one_use: bool
    label_of: dict[str, int]
    aligner: object | None
    name_key: bytes | None
    dtype: str = "float32"  # of the samples a one-use release computes (the shard's storage dtype)
    noise_scale: np.ndarray | None = None  # per label, the factor on a mix's noise (noise_scale_of_labels)


@dataclass
class ShardResult:
    """A protected shard: samples, index rows, skipped files and the batch indices it released."""

    samples: np.ndarray
    rows: list[dict]
    skipped: list[tuple[int, str, str]]
    released: list[int]


def add_release_noise(masker: OnnxMasker, noise: float) -> None:
    """Mix the release with noise of std ``max(noise, mixing.noise)`` (``mask.noise``): the masker's noise is what its
    model trained on; a release may add more (what it publishes is then harder to average into a person's face,
    :mod:`fmix.attacks.aggregate`), never less."""
    if noise > masker.mixing.noise:
        masker.protection = Protection(
            masker, dataclasses.replace(masker.mixing, noise=noise), masker.protection.k_values
        )


def noise_scale_of_labels(
    items: list[tuple[str, str]], label_of: dict[str, int], noise_photos: int | None
) -> np.ndarray | None:
    """``mask.noise_photos``: per published label, the factor on the noise of a mix it is in.

    ``sqrt(max(1, n / noise_photos))`` for an identity with ``n`` faces in the release; a mix takes the
    largest factor of its constituents. The mean of a person's ``m`` samples then keeps the noise of
    ``noise_photos / k`` samples or so however many photos they have (:mod:`fmix.attacks.aggregate`).

    Args:
        items: the released faces, ``(path, identity)``.
        label_of: identity -> published label.
        noise_photos: the count above which the noise grows (None: no per-identity noise).

    Returns:
        float32 factors indexed by label, or None.
    """
    if noise_photos is None:
        return None
    counts = Counter(identity for _, identity in items)
    scale = np.ones(max(label_of.values(), default=-1) + 1, np.float32)
    for identity, count in counts.items():
        scale[label_of[identity]] = math.sqrt(max(1.0, count / noise_photos))
    return scale


def released_mixing(masker: OnnxMasker, run: dict) -> MixingConfig:
    """The mixing a release was made with: its masker's, with the release's own noise where ``run.json`` records one."""
    noise = run.get("release_noise")
    return masker.mixing if noise is None else dataclasses.replace(masker.mixing, noise=float(noise))


def check_mixing_masker(masker: OnnxMasker) -> None:
    """Refuse a masker that would release faces un-mixed in a mixing release (k < 2 anywhere).

    Raises:
        ValueError: its policy can draw k = 1, or its mixing holds fewer than 2 faces.
    """
    draws, k_max = masker.draws_k, masker.mixing.k_max
    if min(draws) < 2 or k_max < 2:
        raise ValueError(
            f"a mixed release needs k >= 2 in every sample, but this masker's policy draws k {draws} (mixing.k_max {k_max}): "
            "export a masker with mixing.k_values and export.k >= 2, or release masked-only faces with --no-mix"
        )


def protect_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    masker_path: str | Path,
    params: MaskParams,
    face_list: str | Path | None = None,
    align: AlignParams | None = None,
    name_key: bytes | None = None,
    dtype: str = "float16",
    progress: bool = True,
    release: ReleaseOptions | None = None,
) -> dict:
    """Protect a folder of faces in shards; resumable; inputs are never modified.

    Mixed releases use each face in one sample only (groups of the policy's k, k >= 2), draw every
    random part from the OS CSPRNG (or the owner's secret key) and record none of it; the
    owner's ledger (outside the release and the input) refuses faces released before.

    Args:
        in_dir: ImageFolder of aligned faces (or raw photos with ``align``).
        out_dir: output folder, not inside ``in_dir``.
        masker_path: ``masker.onnx`` from ``fmix export`` (metadata and graph are checked).
        params: ``mask`` parameters (batch size, mixing on/off, previews, anonymize).
        face_list: optional split CSV restricting and labelling the inputs.
        align: align raw photos in memory with these parameters.
        name_key: key of the anonymised names, at least 16 bytes (default: :meth:`ReleaseRandomness.name_key`).
        dtype: storage dtype of the shards, ``float16`` or ``float32``.
        progress: show a progress bar.
        release: secrets, ledger and the insecure options (default :class:`ReleaseOptions`).

    Returns:
        The summary (also in ``summary.json``), with what was actually released (k per sample,
        the mixing settings) and the ledger path.
    """
    from tqdm import tqdm

    release = release or ReleaseOptions()
    in_root, out_root = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_root.is_dir():
        raise FileNotFoundError(f"input folder not found: {in_dir}")
    if out_root == in_root or in_root in out_root.parents:
        raise ValueError(f"output folder {out_dir} must not be inside the input folder {in_dir}")
    writer = ReleaseWriter(out_root, dtype)
    if params.mix and not params.anonymize:
        warnings.warn(
            "kept names of mixed samples name the faces in them: the release then says which faces were mixed (use --anonymize)",
            stacklevel=2,
        )
    _check_output_folder(out_root)
    ledger_path = Path(release.ledger).expanduser().resolve() if release.ledger else default_ledger_path()
    check_ledger_location(ledger_path, in_root, out_root)
    workers, threads = _shard_workers()
    masker = OnnxMasker(masker_path, threads=threads)
    masker.split_graph()  # a shard a few faces at a time, and a strategy network's k for the faces that need it
    if params.mix:
        check_mixing_masker(masker)
        if params.noise is not None:
            add_release_noise(masker, params.noise)
    listed = list_inputs(in_root, Path(face_list) if face_list else None)
    if not listed:
        raise ValueError(f"no input faces in {in_dir}")
    hashes, unreadable = _hash_inputs(in_root, listed)
    items, duplicates = _drop_duplicates([item for item in listed if item[0] in hashes], hashes)
    if duplicates:
        named = "; ".join(f"{dup} = {kept}" for dup, kept in duplicates[:5]) + ("; ..." if len(duplicates) > 5 else "")
        warnings.warn(
            f"{len(duplicates)} input faces are the same image as another input and are released once: {named}",
            stacklevel=2,
        )
    if not items:
        raise ValueError(f"no readable input face in {in_dir}")
    items, over_budget = _identity_budget(items, params.max_per_identity)
    identities = sorted({identity for _, identity in items})
    inputs_hash = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]  # recorded in the ledger only
    randomness = ReleaseRandomness(release.secret_key, release.insecure_seed, inputs_hash)
    key = (name_key or randomness.name_key()) if params.anonymize else None  # of the sample names
    one_use = params.mix and not release.insecure_reuse
    noise_photos = params.noise_photos if one_use and masker.mixing.noise > 0 else None  # no noise: nothing to grow
    if params.noise_photos is not None and params.mix and not one_use:
        warnings.warn(
            "--insecure-reuse: every mix has the same noise (mask.noise_photos applies to one-use releases)",
            stacklevel=2,
        )
    run = {
        "masker_params_hash": json.loads(masker.metadata["params_hash"]),
        "masker_sha256": masker.sha256,
        "masker_binding": binding_digest(masker.metadata),
        "randomness": randomness.record(),
        "one_use_per_face": one_use,
        "batch_size": params.batch_size,
        "mix": params.mix,
        "anonymize": params.anonymize,
        "dtype": dtype,
        "aligned_in_memory": align is not None,
        "max_per_identity": params.max_per_identity,
        "release_noise": masker.mixing.noise if params.mix else None,
        "noise_photos": noise_photos,
    }
    ledger = Ledger(ledger_path)
    key_check = key_check_value(release.secret_key) if release.secret_key is not None else None
    release_id = _check_resumable(out_root, run)
    if release_id is not None:
        _check_same_release(ledger.header(release_id), inputs_hash, key_check, ledger_path, out_root)
    elsewhere = ledger.released_elsewhere([hashes[rel] for rel, _ in items], release_id or "")
    if elsewhere and not release.allow_rerelease:
        raise ValueError(
            f"{len(elsewhere)} of the {len(items)} faces were released before (release {sorted(set(elsewhere.values()))[0]}, ledger {ledger_path}): "
            "a face in two releases links their samples; use other faces, or pass --allow-rerelease if that release never left you"
        )
    if elsewhere:
        warnings.warn(
            f"{len(elsewhere)} faces were released before (ledger {ledger_path}); releasing them again", stacklevel=2
        )
    if release_id is None:
        release_id = secrets.token_hex(8)
        ledger.start(release_id, out_root, randomness.label_numbers(identities), inputs_hash, key_check)
        writer.write_run({**run, "release": release_id})
    header = ledger.header(release_id)
    if header is None:
        raise ValueError(
            f"{out_root} was made with another ledger than {ledger_path} (pass the ledger of that release with --ledger)"
        )
    batches = _plan_shards(ledger.shards(release_id), items, params.batch_size, randomness)
    aligner = None
    if align is not None:
        from fmix.data.align import PhotoAligner

        aligner = _Serialized(PhotoAligner(align))
    noise_scale = noise_scale_of_labels(items, header["labels"], noise_photos)
    job = ShardJob(in_root, masker, params.mix, one_use, header["labels"], aligner, key, dtype, noise_scale)
    assigned = ledger.shards(release_id)
    beat = Heartbeat("mask", total=len(batches))
    done = [writer.shard_done(shard) for shard in range(len(batches))]

    def start(shard: int) -> Future:
        batch = batches[shard]
        if shard not in assigned:  # the ledger learns of the planned faces before any file shows them
            ledger.record_shard(release_id, shard, [rel for rel, _ in batch], [hashes[rel] for rel, _ in batch])
        return pool.submit(_protect_shard, job, batch, randomness.generator(shard))

    # Shards are computed `workers` at a time (decode, masker, mixing: each shard on its own thread,
    # its numbers independent of the others) and written here, in order, as one shard was before.
    todo = iter(shard for shard in range(len(batches)) if not done[shard])
    with ThreadPoolExecutor(workers, thread_name_prefix="fmix-mask") as pool:
        running = {shard: start(shard) for shard in itertools.islice(todo, workers)}
        try:
            for shard, batch in enumerate(tqdm(batches, desc="mask", unit="shard", disable=not progress)):
                beat(shard)
                if done[shard]:
                    continue
                result = running.pop(shard).result()
                following = next(todo, None)
                if following is not None:
                    running[following] = start(following)
                writer.write_samples(shard, result.samples)
                ledger.record_released(release_id, shard, [hashes[batch[i][0]] for i in result.released])
                writer.write_record(shard, result.rows, _skipped_rows(result.skipped, batch, in_root, key))
        finally:
            for future in running.values():
                future.cancel()
    not_used = [(rel, status, message) for rel, (status, message) in unreadable.items()]
    not_used += [(dup, "duplicate", f"the same image as {kept}: released once, as {kept}") for dup, kept in duplicates]
    budget = f"over the release's budget of {params.max_per_identity} faces per identity: not released"
    not_used += [(rel, "over_budget", budget) for rel in over_budget]
    pre_skipped = [_skipped_row(rel, status, message, key) for rel, status, message in not_used]
    summary = _finish(
        writer,
        len(batches),
        masker,
        params,
        header["labels"] if release.publish_label_names else None,
        listed,
        pre_skipped,
    )
    summary |= {"randomness": randomness.source, "one_use_per_face": one_use, "released_before": len(elsewhere)}
    if noise_photos is not None:  # absent otherwise: a release without it is the bytes it was before
        summary["released_mixing"]["noise_photos"] = noise_photos
    if not one_use:  # one sample per face: every face is an anchor (and a partner of others)
        summary["faces_used"] = summary["protected"]
    write_json_atomic(out_root / "summary.json", summary)
    return summary | {"ledger": str(ledger_path)}


def _check_output_folder(out_root: Path) -> None:
    """Refuse an existing file, or a non-empty folder that is not an earlier run (no ``run.json``)."""
    if out_root.exists() and not out_root.is_dir():
        raise ValueError(f"output folder {out_root} is an existing file, not a folder")
    if out_root.is_dir() and not (out_root / "run.json").is_file() and any(out_root.iterdir()):
        raise ValueError(
            f"output folder {out_root} holds files but no run.json of `fmix mask`: use an empty or new folder"
        )


def _hash_inputs(in_root: Path, items: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(relative path -> content hash, relative path -> (status, message) of the files that cannot be read)."""
    hashes, unreadable = {}, {}
    for rel, _ in items:
        path = in_root / rel
        try:
            hashes[rel] = file_hash(path)
        except OSError as err:
            status = "broken_link" if path.is_symlink() and not path.exists() else "unreadable"
            unreadable[rel] = (status, f"{rel}: {err.strerror or err}")
    return hashes, unreadable


def _drop_duplicates(
    items: list[tuple[str, str]], hashes: dict[str, str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The items with one name per content hash (the first in path order), and (duplicate, kept) pairs."""
    kept: dict[str, str] = {}
    unique, duplicates = [], []
    for rel, identity in sorted(items):
        digest = hashes[rel]
        if digest in kept:
            duplicates.append((rel, kept[digest]))
        else:
            kept[digest] = rel
            unique.append((rel, identity))
    return unique, duplicates


def _identity_budget(items: list[tuple[str, str]], budget: int | None) -> tuple[list[tuple[str, str]], list[str]]:
    """At most ``budget`` faces per identity, the first in path order (None: all); and the faces left out.

    Args:
        items: (relative path, identity) of the faces to release.
        budget: ``mask.max_per_identity``.

    Returns:
        ``(kept items, relative paths over the budget)``, each in path order.
    """
    if budget is None:
        return items, []
    count: dict[str, int] = {}
    kept, over = [], []
    for rel, identity in sorted(items):
        count[identity] = count.get(identity, 0) + 1
        if count[identity] <= budget:
            kept.append((rel, identity))
        else:
            over.append(rel)
    return kept, over


def _plan_shards(
    assigned: dict[int, list[str]], items: list[tuple[str, str]], batch_size: int, randomness: ReleaseRandomness
) -> list[list[tuple[str, str]]]:
    """The shards of a release: those the ledger already holds, then the other faces shuffled."""
    identity = dict(items)
    batches = [[(rel, identity[rel]) for rel in assigned[shard]] for shard in sorted(assigned)]
    if sorted(assigned) != list(range(len(assigned))) or any(
        rel not in identity for rels in assigned.values() for rel in rels
    ):
        raise ValueError("the ledger's shards of this release do not match its inputs; use another output folder")
    done = {rel for rels in assigned.values() for rel in rels}
    remaining = [item for item in items if item[0] not in done]
    randomness.shuffle(remaining)  # batches must hold many identities for mixing
    return batches + [remaining[start : start + batch_size] for start in range(0, len(remaining), batch_size)]


def _check_resumable(out_root: Path, run: dict) -> str | None:
    """The release id of the earlier run in ``out_root`` (None: a new release); refuses a different run."""
    path = out_root / "run.json"
    if not path.exists():
        return None
    before = read_json(path, "run.json of `fmix mask`")
    if not isinstance(before.get("release"), str):
        raise ValueError(f"{path}: the run.json of `fmix mask` lacks its release id: not a release to resume")
    changed = [f"{key}: {before.get(key)} -> {value}" for key, value in run.items() if before.get(key) != value]
    if changed:
        raise ValueError(f"{out_root} holds another run ({'; '.join(changed)}); use another output folder or remove it")
    return before["release"]


def _check_same_release(
    header: dict | None, inputs_hash: str, key_check: str | None, ledger_path: Path, out_root: Path
) -> None:
    """Refuse to resume a release with other inputs or another secret key than its ledger header records."""
    if header is None:
        return  # reported by the caller: another ledger
    if header.get("inputs_hash", inputs_hash) != inputs_hash:
        raise ValueError(
            f"{out_root} was made from other input faces than these (ledger {ledger_path}); use another output folder"
        )
    if "format" in header and header.get("key_check") != key_check:
        raise ValueError(
            f"{out_root} was made with another --secret-key-file (or none): resume it with the same key, or use another output folder"
        )


def _shard_workers() -> tuple[int, int]:
    """(shards computed at once, ONNX Runtime threads of each): two shards on one thread each on two cores.

    Two single-threaded masker runs side by side keep both cores busy through the whole graph,
    and one shard's decoding, mixing and writing overlaps the other's masker; more cores go to
    each run's intra-op threads.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(2, cores)
    return workers, max(1, cores // workers)


class _Serialized:
    """An aligner called by one shard's thread at a time."""

    def __init__(self, aligner) -> None:
        self.aligner, self.lock = aligner, threading.Lock()

    def __call__(self, photo: np.ndarray) -> np.ndarray | None:
        with self.lock:
            return self.aligner(photo)


def _protect_shard(job: ShardJob, batch: list[tuple[str, str]], generator: torch.Generator) -> ShardResult:
    """Load, mask and mix one shard's faces; every mixed sample holds k >= 2 faces.

    A one-use release goes through :func:`fmix.release.mixing.release_groups`, straight into
    ``job.dtype``: the numbers of :meth:`~fmix.masker.protection.Protection.protect_groups`.
    """
    paths = [job.in_root / rel for rel, _ in batch]
    faces, loaded, skipped = load_faces(paths, job.masker.input_size, job.aligner, read_rgb_fast)
    rows, released, samples = [], [], np.zeros((0,), np.float32)
    protection = job.masker.protection
    if len(loaded) >= 2 or (loaded and not job.mix):
        labels = torch.tensor([job.label_of[batch[i][1]] for i in loaded])
        if job.one_use:
            protected = release_groups(job.masker, faces, labels, generator, job.dtype, job.noise_scale)
            members = [
                [loaded[m] for m in group[:size]]
                for group, size in zip(protected.members.tolist(), protected.k.tolist())
            ]
            skipped += [
                (loaded[i], "left_over", "no face left in its batch to mix it with: not released")
                for i in protected.leftover.tolist()
            ]
        else:
            protected = protection.protect(faces_to_tensor(faces), labels, generator, job.mix)
            members = [[index] for index in loaded]
        if job.mix and bool((protected.k < 2).any()):
            raise ValueError(
                f"the masker drew k {sorted(set(protected.k.tolist()))}: a mixed release needs k >= 2 in every sample; nothing of this shard is written"
            )
        samples = protected.x.numpy()
        decimals = WEIGHT_DECIMALS if job.one_use or not job.mix else INSECURE_WEIGHT_DECIMALS
        for row, sources in enumerate(members):
            size = int(protected.k[row])
            released += sources
            rows.append(
                {
                    "name": sample_name(
                        [batch[i][0] for i in sources] if job.one_use else batch[sources[0]][0], job.name_key
                    ),
                    "row": row,
                    "same_identity_partner": bool(protected.fallback[row]),
                    "labels": protected.labels[row, :size].tolist(),
                    "weights": [round(w, decimals) for w in protected.weights[row, :size].tolist()],
                }
            )
    elif loaded:
        skipped += [
            (i, "too_few_to_mix", "the only readable face of its batch: nothing to mix it with") for i in loaded
        ]
    return ShardResult(samples, rows, skipped, sorted(set(released)))


def _skipped_row(source: str, status: str, message: str, key: bytes | None) -> dict:
    """A skipped file as the release records it (anonymised names hide the path and the message)."""
    return {
        "source": source if key is None else sample_name(source, key),
        "status": status,
        "message": message if key is None else status,
    }


def _skipped_rows(
    skipped: list[tuple[int, str, str]], batch: list[tuple[str, str]], in_root: Path, key: bytes | None
) -> list[dict]:
    # Messages name files relative to IN_DIR, like "source": the summary holds no machine paths.
    return [
        _skipped_row(batch[i][0], status, message.replace(str(in_root / batch[i][0]), batch[i][0]), key)
        for i, status, message in skipped
    ]


def _finish(
    writer: ReleaseWriter,
    shards: int,
    masker: OnnxMasker,
    params: MaskParams,
    label_names: dict[str, int] | None,
    items,
    pre_skipped: list[dict],
) -> dict:
    rows, skipped = writer.read_records(shards)
    skipped = pre_skipped + skipped
    writer.write_index(rows)
    if label_names is not None:
        write_json_atomic(writer.folder / "labels.json", dict(sorted(label_names.items())))
    _write_previews(writer.folder, rows[: params.previews], masker)
    sizes = [len(row["labels"]) for row in rows]
    summary = {
        "inputs": len(items),
        "protected": len(rows),
        "faces_used": sum(sizes),
        "skipped": len(skipped),
        "skipped_by_status": dict(sorted(Counter(s["status"] for s in skipped).items())),
        "skipped_files": skipped,
        "shards": shards,
        "k_histogram": dict(sorted(Counter(str(size) for size in sizes).items())),
        "same_identity_partners": sum(row["same_identity_partner"] for row in rows),
        "mixed": params.mix,
        "identities": len({identity for _, identity in items}),
    }
    if params.mix:  # what was released, from the samples and the checked masker: not what was asked
        summary["released_mixing"] = {"k_min": min(sizes, default=0), "k_max": max(sizes, default=0)} | {
            key: value
            for key, value in masker.mixing.to_dict().items()
            if key in ("weight_law", "cap", "sign_flip", "noise")
        }
    return summary


def _write_previews(out_root: Path, rows: list[dict], masker: OnnxMasker) -> None:
    """Inverse transform (dropped channels as zeros) of the first samples, as PNG named by shard and row.

    Not by sample name: a kept name of a k = 6 mix joins six paths, past the file system's 255 bytes.
    """
    if not rows:
        return
    mask = mask_from_metadata(masker.metadata)
    by_shard: dict[int, list[int]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row["row"])
    for shard, numbers in by_shard.items():  # one inverse transform per shard: the same numbers as one per sample
        samples = np.load(shard_path(out_root, shard, "npy"), mmap_mode="r")[numbers]
        images = to_uint8_hwc(protected_to_image(torch.from_numpy(samples.astype(np.float32)), mask, masker.upsample))
        for number, image in zip(numbers, images.numpy()):
            write_png_atomic(image, out_root / "previews" / f"shard-{shard:05d}-row-{number:05d}.png")
