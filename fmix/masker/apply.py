"""``fmix mask``: protect image folders with an exported masker run by ONNX Runtime.

Output folder:
- ``shard-NNNNN.npy``: protected samples of batch N, (n, K, h, w) in ``--dtype``;
- ``shard-NNNNN.json``: that batch's index rows and skipped files (written last: a shard with
  its JSON is complete, so a killed run resumes at the first missing one);
- ``index.csv``: name, shard, row, and the mixed label vector: labels and weights (2 decimals)
  of the constituents, space separated, in a random order;
- ``labels.json``: identity -> label, only when asked (labels are a random numbering per release);
- ``run.json`` (what a resume must match: masker file hash, options; never a seed or key unless
  ``--insecure-seed``), ``summary.json``, ``previews/*.png``.

Outside it, the owner's ledger (:mod:`fmix.masker.ledger`) lists the released faces.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import secrets
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmix.data.faces import load_faces, read_face_list
from fmix.data.images import list_identity_folders, write_png_atomic
from fmix.freq import protected_to_image, to_uint8_hwc
from fmix.io import atomic_write, write_json_atomic
from fmix.masker.build import faces_to_tensor, mask_from_metadata, masker_from_metadata
from fmix.masker.ledger import Ledger, default_ledger_path, file_hash
from fmix.masker.protection import Protection
from fmix.masker.randomness import ReleaseRandomness
from fmix.params import AlignParams, MaskParams

NAME_KEY_ENV = "FMIX_NAME_KEY"
WEIGHT_DECIMALS = 2  # label weights a trainer needs; finer values only help an attacker
INSECURE_WEIGHT_DECIMALS = 6  # the old format, kept for --insecure-reuse releases (attack experiments)


class OnnxMasker:
    """An exported masker on ONNX Runtime (CUDA when available, else CPU), with its metadata.

    Args:
        path: the ``masker.onnx`` file.
        providers: ONNX Runtime providers (default: CUDA first if present, then CPU).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"masker not found: {path} (make one with `fmix export`)")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} is not a valid ONNX masker: {err}") from err
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = {"input_size", "kept_channels", "mixing", "params_hash"} - set(self.metadata)
        if missing:
            raise ValueError(f"{path} is not an fmix masker: metadata lacks {sorted(missing)}")
        self.input_size = int(self.metadata["input_size"])
        self.upsample = int(self.metadata["upsample"])
        self.protection = Protection.from_metadata(self.metadata, self)
        self.mixing = self.protection.mixing
        shapes = {item.name: item.shape for item in self.session.get_inputs()}
        if shapes.get("images", [None])[1:] != [3, self.input_size, self.input_size] or "policy_noise" not in shapes:
            raise ValueError(f"{path} does not take faces of its metadata's input_size={self.input_size}: its inputs are {shapes}")
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self._verify_graph(path)

    def _verify_graph(self, path: Path) -> None:
        """Refuse a graph that does not compute the masking its metadata describes.

        A probe batch goes through the graph and through the fused transform rebuilt from the
        metadata (channels, statistics, upsampling); a pass-through, re-weighted or zeroed graph
        gives other numbers. The k output must be one of the metadata's k values (its fixed k for
        a fixed policy).
        """
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(4, 3, self.input_size, self.input_size, generator=generator) * 255
        noise = torch.rand(4, generator=generator)
        try:
            masked, k = self(probe, noise)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} does not run as an fmix masker on a probe batch: {err}") from err
        with torch.no_grad():
            expected = masker_from_metadata(self.metadata).masked(probe.double())
        if tuple(masked.shape) != tuple(expected.shape):
            raise ValueError(f"{path}: its graph outputs {tuple(masked.shape)} where its metadata describes {tuple(expected.shape)}: refusing an altered masker")
        error = ((masked.double() - expected).norm() / expected.norm()).item()
        if not error < 1e-4:
            raise ValueError(f"{path}: its graph does not compute the masking its metadata describes (relative error {error:.2g} on a probe batch): refusing an altered masker")
        k_values = json.loads(self.metadata["k_values"])
        kind, _, fixed = json.loads(self.metadata["policy"]).partition(":")
        allowed = [int(fixed)] if kind == "fixed" else k_values
        if not set(k.tolist()) <= set(allowed):
            raise ValueError(f"{path}: its graph draws k {sorted(set(k.tolist()))} outside its policy's {allowed}: refusing an altered masker")

    def __call__(self, images: torch.Tensor, policy_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            masked, k = self.session.run(None, {"images": images.numpy(), "policy_noise": policy_noise.numpy()})
        except InvalidArgument as err:  # inputs the model's graph does not accept
            raise ValueError(f"the masker refuses faces of shape {tuple(images.shape)}: {err}") from err
        return torch.from_numpy(masked), torch.from_numpy(k)


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
    return [(p.relative_to(in_dir).as_posix(), name) for name, files in list_identity_folders(in_dir).items() for p in files]


@dataclass(frozen=True)
class ReleaseOptions:
    """How a release keeps its secrets (see :mod:`fmix.masker.randomness` and :mod:`fmix.masker.ledger`).

    Args:
        secret_key: derive every random part from this key (reproducible research runs; keep
            it outside the release); None: the OS CSPRNG, reproducible by nobody.
        ledger: the owner's ledger of released faces (default: beside the output folder).
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

    Mixed releases use each face in one sample only (groups of the policy's k), draw every
    random part from the OS CSPRNG (or the owner's secret key) and record none of it; the
    owner's ledger (outside the release) refuses faces released before.

    Args:
        in_dir: ImageFolder of aligned faces (or raw photos with ``align``).
        out_dir: output folder, not inside ``in_dir``.
        masker_path: ``masker.onnx`` from ``fmix export`` (its graph is checked against its metadata).
        params: ``mask`` parameters (batch size, mixing on/off, previews, anonymize).
        face_list: optional split CSV restricting and labelling the inputs.
        align: align raw photos in memory with these parameters.
        name_key: key of the anonymised names (default: :meth:`ReleaseRandomness.name_key`).
        dtype: storage dtype of the shards, ``float16`` or ``float32``.
        progress: show a progress bar.
        release: secrets, ledger and the insecure options (default :class:`ReleaseOptions`).

    Returns:
        The summary (also in ``summary.json``).
    """
    from tqdm import tqdm

    release = release or ReleaseOptions()
    in_root, out_root = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_root.is_dir():
        raise FileNotFoundError(f"input folder not found: {in_dir}")
    if out_root == in_root or in_root in out_root.parents:
        raise ValueError(f"output folder {out_dir} must not be inside the input folder {in_dir}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if params.mix and not params.anonymize:
        warnings.warn("kept names of mixed samples name the faces in them: the release then says which faces were mixed (use --anonymize)", stacklevel=2)
    _check_output_folder(out_root)
    ledger_path = Path(release.ledger).resolve() if release.ledger else default_ledger_path(out_root)
    if out_root in ledger_path.parents:
        raise ValueError(f"the ledger {ledger_path} must not be inside the output folder {out_dir}: it lists the released faces")
    masker = OnnxMasker(masker_path)
    items = list_inputs(in_root, Path(face_list) if face_list else None)
    if not items:
        raise ValueError(f"no input faces in {in_dir}")
    identities = sorted({identity for _, identity in items})
    inputs_hash = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    randomness = ReleaseRandomness(release.secret_key, release.insecure_seed, inputs_hash)
    key = (name_key or randomness.name_key()) if params.anonymize else None  # of the sample names
    one_use = params.mix and not release.insecure_reuse
    run = {
        "masker_params_hash": masker.metadata["params_hash"],
        "masker_sha256": masker.sha256,
        "randomness": randomness.record(),
        "one_use_per_face": one_use,
        "batch_size": params.batch_size,
        "mix": params.mix,
        "anonymize": params.anonymize,
        "dtype": dtype,
        "aligned_in_memory": align is not None,
        "inputs_hash": inputs_hash,
    }
    hashes = {rel: _source_hash(in_root / rel) for rel, _ in items}
    ledger = Ledger(ledger_path)
    release_id = _check_resumable(out_root, run)
    elsewhere = ledger.released_elsewhere(list(hashes.values()), release_id or "")
    if elsewhere and not release.allow_rerelease:
        raise ValueError(
            f"{len(elsewhere)} of the {len(items)} faces were released before (release {sorted(set(elsewhere.values()))[0]}, ledger {ledger_path}): "
            "a face in two releases links their samples; use other faces, or pass --allow-rerelease if that release never left you"
        )
    if elsewhere:
        warnings.warn(f"{len(elsewhere)} faces were released before (ledger {ledger_path}); releasing them again", stacklevel=2)
    if release_id is None:
        release_id = secrets.token_hex(8)
        ledger.start(release_id, out_root, randomness.label_numbers(identities))
        write_json_atomic(out_root / "run.json", {**run, "release": release_id})
    header = ledger.header(release_id)
    if header is None:
        raise ValueError(f"{out_root} was made with another ledger than {ledger_path} (pass the ledger of that release with --ledger)")
    label_of = header["labels"]
    batches = _plan_shards(ledger.shards(release_id), items, params.batch_size, randomness)
    aligner = None
    if align is not None:
        from fmix.data.align import PhotoAligner

        aligner = PhotoAligner(align)
    assigned = ledger.shards(release_id)
    for shard, batch in enumerate(tqdm(batches, desc="mask", unit="shard", disable=not progress)):
        if _shard_done(out_root, shard):
            continue
        if shard not in assigned:  # the ledger learns of the faces before any file shows them
            ledger.record_shard(release_id, shard, [rel for rel, _ in batch], [hashes[rel] for rel, _ in batch])
        generator = randomness.generator(shard)
        _protect_shard(shard, batch, in_root, out_root, masker, params, label_of, aligner, key, dtype, generator, one_use)
    summary = _finish(out_root, len(batches), masker, params, label_of if release.publish_label_names else None, items)
    summary |= {"randomness": randomness.source, "one_use_per_face": one_use, "released_before": len(elsewhere)}
    if not one_use:  # one sample per face: every face is an anchor (and a partner of others)
        summary["faces_used"] = summary["protected"]
    write_json_atomic(out_root / "summary.json", summary)
    return summary | {"ledger": str(ledger_path)}


def _check_output_folder(out_root: Path) -> None:
    """Refuse an existing file, or a non-empty folder that is not an earlier run (no ``run.json``)."""
    if out_root.exists() and not out_root.is_dir():
        raise ValueError(f"output folder {out_root} is an existing file, not a folder")
    if out_root.is_dir() and not (out_root / "run.json").is_file() and any(out_root.iterdir()):
        raise ValueError(f"output folder {out_root} holds files but no run.json of `fmix mask`: use an empty or new folder")


def _shard_done(out_root: Path, shard: int) -> bool:
    """A shard is complete when its JSON (written last) reads back with its rows and its .npy exists."""
    try:
        part = json.loads((out_root / f"shard-{shard:05d}.json").read_text())
    except (OSError, ValueError):
        return False
    complete = isinstance(part, dict) and isinstance(part.get("rows"), list) and isinstance(part.get("skipped"), list)
    return complete and (out_root / f"shard-{shard:05d}.npy").is_file()


def _source_hash(path: Path) -> str:
    try:
        return file_hash(path)
    except OSError as err:
        raise ValueError(f"cannot read input face {path}: {err}") from err


def _plan_shards(assigned: dict[int, list[str]], items: list[tuple[str, str]], batch_size: int, randomness: ReleaseRandomness) -> list[list[tuple[str, str]]]:
    """The shards of a release: those the ledger already holds, then the other faces shuffled."""
    identity = dict(items)
    batches = [[(rel, identity[rel]) for rel in assigned[shard]] for shard in sorted(assigned)]
    if sorted(assigned) != list(range(len(assigned))) or any(rel not in identity for rels in assigned.values() for rel in rels):
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
    before = json.loads(path.read_text())
    changed = [f"{key}: {before.get(key)} -> {value}" for key, value in run.items() if before.get(key) != value]
    if changed:
        raise ValueError(f"{out_root} holds another run ({'; '.join(changed)}); use another output folder or remove it")
    return before["release"]


def _protect_shard(shard, batch, in_root, out_root, masker, params, label_of, aligner, key, dtype, generator, one_use) -> None:
    faces, loaded, skipped = load_faces([in_root / rel for rel, _ in batch], masker.input_size, aligner)
    rows, samples = [], np.zeros((0,), dtype)
    if len(loaded) >= 2 or (loaded and not params.mix):
        labels = torch.tensor([label_of[batch[i][1]] for i in loaded])
        images = faces_to_tensor(faces)
        if one_use:
            protected = masker.protection.protect_groups(images, labels, generator)
            members = [[loaded[m] for m in group[:size]] for group, size in zip(protected.members.tolist(), protected.k.tolist())]
            skipped += [(loaded[i], "left_over", "no face left in its batch to mix it with: not released") for i in protected.leftover.tolist()]
        else:
            protected = masker.protection.protect(images, labels, generator, params.mix)
            members = [[index] for index in loaded]
        samples = protected.x.numpy().astype(dtype)
        for row, sources in enumerate(members):
            size = int(protected.k[row])
            rows.append(
                {
                    "name": sample_name([batch[i][0] for i in sources] if one_use else batch[sources[0]][0], key),
                    "row": row,
                    "same_identity_partner": bool(protected.fallback[row]),
                    "labels": protected.labels[row, :size].tolist(),
                    "weights": [round(w, WEIGHT_DECIMALS if one_use or not params.mix else INSECURE_WEIGHT_DECIMALS) for w in protected.weights[row, :size].tolist()],
                }
            )
    elif loaded:
        skipped += [(i, "too_few_to_mix", "the only readable face of its batch: nothing to mix it with") for i in loaded]
    buffer = io.BytesIO()
    np.save(buffer, samples)
    with atomic_write(out_root / f"shard-{shard:05d}.npy", "wb") as out:
        out.write(buffer.getvalue())
    # Messages name files relative to IN_DIR, like "source": the summary holds no machine paths.
    skipped = [(i, s, m.replace(str(in_root / batch[i][0]), batch[i][0])) for i, s, m in skipped]
    skipped_rows = [{"source": batch[i][0] if key is None else sample_name(batch[i][0], key), "status": s, "message": m if key is None else s} for i, s, m in skipped]
    write_json_atomic(out_root / f"shard-{shard:05d}.json", {"rows": rows, "skipped": skipped_rows})


def _finish(out_root: Path, shards: int, masker: OnnxMasker, params: MaskParams, label_names: dict[str, int] | None, items) -> dict:
    rows, skipped = [], []
    for shard in range(shards):
        part = json.loads((out_root / f"shard-{shard:05d}.json").read_text())
        rows += [{**row, "shard": shard} for row in part["rows"]]
        skipped += part["skipped"]
    with atomic_write(out_root / "index.csv") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "shard", "row", "labels", "weights"])
        for row in rows:
            writer.writerow([row["name"], row["shard"], row["row"], " ".join(map(str, row["labels"])), " ".join(map(str, row["weights"]))])
    if label_names is not None:
        write_json_atomic(out_root / "labels.json", dict(sorted(label_names.items())))
    _write_previews(out_root, rows[: params.previews], masker)
    return {
        "inputs": len(items),
        "protected": len(rows),
        "faces_used": sum(len(row["labels"]) for row in rows),
        "skipped": len(skipped),
        "skipped_by_status": dict(sorted(Counter(s["status"] for s in skipped).items())),
        "skipped_files": skipped,
        "shards": shards,
        "k_histogram": dict(sorted(Counter(str(len(row["labels"])) for row in rows).items())),
        "same_identity_partners": sum(row["same_identity_partner"] for row in rows),
        "mixed": params.mix,
        "identities": len({identity for _, identity in items}),
    }


def _write_previews(out_root: Path, rows: list[dict], masker: OnnxMasker) -> None:
    """Inverse transform (dropped channels as zeros) of the first samples, as PNG named by shard and row.

    Not by sample name: a kept name of a k = 6 mix joins six paths, past the file system's 255 bytes.
    """
    if not rows:
        return
    mask = mask_from_metadata(masker.metadata)
    shards: dict[int, np.ndarray] = {}
    for row in rows:
        if row["shard"] not in shards:
            shards[row["shard"]] = np.load(out_root / f"shard-{row['shard']:05d}.npy")
        sample = torch.from_numpy(shards[row["shard"]][row["row"] : row["row"] + 1].astype(np.float32))
        image = to_uint8_hwc(protected_to_image(sample, mask, masker.upsample))[0].numpy()
        write_png_atomic(image, out_root / "previews" / f"shard-{row['shard']:05d}-row-{row['row']:05d}.png")
