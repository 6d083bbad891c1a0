"""``fmix mask``: protect image folders with an exported masker run by ONNX Runtime.

Output folder:
- ``shard-NNNNN.npy``: protected samples of batch N, (n, K, h, w) in ``--dtype``;
- ``shard-NNNNN.json``: that batch's index rows and skipped files (written last: a shard with
  its JSON is complete, so a killed run resumes at the first missing one);
- ``index.csv``: name, shard, row, k, labels and weights of the constituents (space separated);
- ``labels.json``: identity -> label (not written with ``--anonymize``);
- ``run.json`` (what a resume must match), ``summary.json``, ``previews/*.png``.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fmix.data.faces import load_faces, read_face_list
from fmix.data.images import list_identity_folders, write_png_atomic
from fmix.io import atomic_write, write_json_atomic
from fmix.masker.build import faces_to_tensor, mask_from_metadata
from fmix.masker.protect import MixingConfig, protect_batch
from fmix.params import AlignParams, MaskParams

NAME_KEY_ENV = "FMIX_NAME_KEY"


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
        self.mixing = MixingConfig(**json.loads(self.metadata["mixing"]))
        shapes = {item.name: item.shape for item in self.session.get_inputs()}
        if shapes.get("images", [None])[1:] != [3, self.input_size, self.input_size] or "policy_noise" not in shapes:
            raise ValueError(f"{path} does not take faces of its metadata's input_size={self.input_size}: its inputs are {shapes}")

    def __call__(self, images: torch.Tensor, policy_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

        try:
            masked, k = self.session.run(None, {"images": images.numpy(), "policy_noise": policy_noise.numpy()})
        except InvalidArgument as err:  # inputs the model's graph does not accept
            raise ValueError(f"the masker refuses faces of shape {tuple(images.shape)}: {err}") from err
        return torch.from_numpy(masked), torch.from_numpy(k)


def sample_name(relative: str, key: bytes | None) -> str:
    """Output name of a face: a keyed hash when ``key`` is given (identity names leak identity)."""
    if key is None:
        return relative.rsplit(".", 1)[0]
    return hmac.new(key, relative.encode(), hashlib.sha256).hexdigest()[:20]


def list_inputs(in_dir: Path, face_list: Path | None) -> list[tuple[str, str]]:
    """(relative path, identity) of every input face, from a split CSV or the ImageFolder tree."""
    if face_list is not None:
        return read_face_list(face_list)
    return [(p.relative_to(in_dir).as_posix(), name) for name, files in list_identity_folders(in_dir).items() for p in files]


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
) -> dict:
    """Protect a folder of faces in shards; resumable; inputs are never modified.

    Args:
        in_dir: ImageFolder of aligned faces (or raw photos with ``align``).
        out_dir: output folder, not inside ``in_dir``.
        masker_path: ``masker.onnx`` from ``fmix export``.
        params: ``mask`` parameters (batch size, seed, mixing on/off, previews, anonymize).
        face_list: optional split CSV restricting and labelling the inputs.
        align: align raw photos in memory with these parameters.
        name_key: key of the anonymised names (required when ``params.anonymize``).
        dtype: storage dtype of the shards, ``float16`` or ``float32``.
        progress: show a progress bar.

    Returns:
        The summary (also in ``summary.json``).
    """
    from tqdm import tqdm

    in_root, out_root = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_root.is_dir():
        raise FileNotFoundError(f"input folder not found: {in_dir}")
    if out_root == in_root or in_root in out_root.parents:
        raise ValueError(f"output folder {out_dir} must not be inside the input folder {in_dir}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if params.anonymize and not name_key:
        raise ValueError(f"anonymized names need a key: set {NAME_KEY_ENV} (keep it secret, it links names to files)")
    _check_output_folder(out_root)
    masker = OnnxMasker(masker_path)
    items = list_inputs(in_root, Path(face_list) if face_list else None)
    if not items:
        raise ValueError(f"no input faces in {in_dir}")
    identities = sorted({identity for _, identity in items})
    label_of = {name: index for index, name in enumerate(identities)}
    inputs_hash = hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
    random.Random(params.seed).shuffle(items)  # batches must hold many identities for mixing
    run = {
        "masker_params_hash": masker.metadata["params_hash"],
        "seed": params.seed,
        "batch_size": params.batch_size,
        "mix": params.mix,
        "dtype": dtype,
        "aligned_in_memory": align is not None,
        "inputs_hash": inputs_hash,
    }
    _check_resumable(out_root, run)
    aligner = None
    if align is not None:
        from fmix.data.align import PhotoAligner

        aligner = PhotoAligner(align)
    key = name_key if params.anonymize else None
    batches = [items[start : start + params.batch_size] for start in range(0, len(items), params.batch_size)]
    for shard, batch in enumerate(tqdm(batches, desc="mask", unit="shard", disable=not progress)):
        if _shard_done(out_root, shard):
            continue
        _protect_shard(shard, batch, in_root, out_root, masker, params, label_of, aligner, key, dtype)
    summary = _finish(out_root, len(batches), masker, params, identities, items)
    return summary


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


def _check_resumable(out_root: Path, run: dict) -> None:
    path = out_root / "run.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = [f"{key}: {before.get(key)} -> {value}" for key, value in run.items() if before.get(key) != value]
        if changed:
            raise ValueError(f"{out_root} holds another run ({'; '.join(changed)}); use another output folder or remove it")
    else:
        write_json_atomic(path, run)


def _protect_shard(shard, batch, in_root, out_root, masker, params, label_of, aligner, key, dtype) -> None:
    faces, loaded, skipped = load_faces([in_root / rel for rel, _ in batch], masker.input_size, aligner)
    rows, samples = [], np.zeros((0,), dtype)
    if len(loaded) >= 2 or (loaded and not params.mix):
        labels = torch.tensor([label_of[batch[i][1]] for i in loaded])
        generator = torch.Generator().manual_seed(params.seed * 1_000_003 + shard)
        protected = protect_batch(masker, faces_to_tensor(faces), labels, masker.mixing, generator, params.mix)
        samples = protected.x.numpy().astype(dtype)
        for row, index in enumerate(loaded):
            rows.append(
                {
                    "name": sample_name(batch[index][0], key),
                    "row": row,
                    "k": int(protected.k[row]),
                    "same_identity_partner": bool(protected.fallback[row]),
                    "labels": protected.labels[row].tolist(),
                    "weights": [round(w, 6) for w in protected.weights[row].tolist()],
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


def _finish(out_root: Path, shards: int, masker: OnnxMasker, params: MaskParams, identities: list[str], items) -> dict:
    rows, skipped = [], []
    for shard in range(shards):
        part = json.loads((out_root / f"shard-{shard:05d}.json").read_text())
        rows += [{**row, "shard": shard} for row in part["rows"]]
        skipped += part["skipped"]
    with atomic_write(out_root / "index.csv") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "shard", "row", "k", "labels", "weights"])
        for row in rows:
            writer.writerow([row["name"], row["shard"], row["row"], row["k"], " ".join(map(str, row["labels"])), " ".join(map(str, row["weights"]))])
    if not params.anonymize:
        write_json_atomic(out_root / "labels.json", {name: index for index, name in enumerate(identities)})
    _write_previews(out_root, rows[: params.previews], masker)
    summary = {
        "inputs": len(items),
        "protected": len(rows),
        "skipped": len(skipped),
        "skipped_by_status": dict(sorted(Counter(s["status"] for s in skipped).items())),
        "skipped_files": skipped,
        "shards": shards,
        "k_histogram": dict(sorted(Counter(str(row["k"]) for row in rows).items())),
        "same_identity_partners": sum(row["same_identity_partner"] for row in rows),
        "mixed": params.mix,
        "identities": len(identities),
    }
    write_json_atomic(out_root / "summary.json", summary)
    return summary


def _write_previews(out_root: Path, rows: list[dict], masker: OnnxMasker) -> None:
    """Inverse transform (dropped channels as zeros) of the first samples, as PNG."""
    if not rows:
        return
    from fmix.freq import protected_to_image, to_uint8_hwc

    mask = mask_from_metadata(masker.metadata)
    shards: dict[int, np.ndarray] = {}
    for row in rows:
        if row["shard"] not in shards:
            shards[row["shard"]] = np.load(out_root / f"shard-{row['shard']:05d}.npy")
        sample = torch.from_numpy(shards[row["shard"]][row["row"] : row["row"] + 1].astype(np.float32))
        image = to_uint8_hwc(protected_to_image(sample, mask, masker.upsample))[0].numpy()
        write_png_atomic(image, out_root / "previews" / f"{row['name'].replace('/', '__')}.png")
