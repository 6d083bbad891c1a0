"""Alignment of face photos to the ArcFace 112x112 template, over a whole ImageFolder tree.

Output layout: ``DST/<identity>/<stem>.png`` plus ``DST/manifest.jsonl`` (one row per source
file, appended as work finishes, so a killed run resumes where it stopped) and
``DST/summary.json``. Source files of one identity whose names differ only by extension (or
case) would share an output name: they all get the status ``name_clash`` and none is written,
so no face is ever overwritten or filed under another photo's name.

Files in sub-folders of an identity folder are not aligned: they get the status ``nested_folder``.

Symbolic links: links are followed, also when they lead out of SRC (link farms, DVC caches);
with ``follow_outside=False`` (``fmix align --inside-only``) a link whose target lies outside
SRC gets the status ``outside_source`` and is not read. Loops and broken links get the
statuses ``symlink_loop`` and ``broken_link``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from fmix.data.detect import FaceDetector, pick_central_face
from fmix.data.images import ImageReadError, list_identity_folders, list_nested_files, read_rgb, write_png_atomic
from fmix.io import remove_stale_temporaries, write_json_atomic
from fmix.params import AlignParams
from fmix.progress import Heartbeat

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
OUTPUT_PARAMS = "align_params.json"
# Parameters that change an aligned face; a folder is only resumed with the same values.
OUTPUT_AFFECTING = ("size", "score_threshold", "detect_max_side", "max_pixels")
OK = "ok"
NO_FACE = "no_face"
FAILED = "failed"
NAME_CLASH = "name_clash"
OUTSIDE_SOURCE = "outside_source"
NESTED_FOLDER = "nested_folder"


@dataclass(frozen=True)
class AlignResult:
    """One manifest row. ``source`` and ``output`` are relative to SRC and DST."""

    source: str
    identity: str
    status: str
    output: str = ""
    score: float | None = None
    landmarks: list[list[float]] | None = None
    message: str = ""


def template_for_size(size: int) -> np.ndarray:
    """The ArcFace 5-point template scaled to a square output of side ``size``.

    Args:
        size: output side in pixels (112 gives the original template).

    Returns:
        Array of shape (5, 2).
    """
    return ARCFACE_TEMPLATE * (size / 112.0)


def similarity_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) taking 5 landmarks onto the template.

    Args:
        landmarks: array of shape (5, 2), in source pixel coordinates.
        size: output side.

    Returns:
        The 2x3 affine matrix for ``cv2.warpAffine``.
    """
    from skimage.transform import SimilarityTransform

    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"Expected landmarks of shape (5, 2), got {landmarks.shape}")
    transform = SimilarityTransform.from_estimate(landmarks, template_for_size(size))
    if not transform:
        raise ValueError(f"landmarks are degenerate, no similarity transform fits: {landmarks.tolist()}")
    return transform.params[:2]


def warp_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a photo so its 5 landmarks land on the ArcFace template.

    Args:
        rgb: image of shape (H, W, 3), uint8.
        landmarks: (5, 2) landmarks in the image.
        size: output side.

    Returns:
        Aligned face of shape (size, size, 3), uint8; pixels from outside the photo are black.
    """
    import cv2

    matrix = similarity_matrix(landmarks, size)
    return cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


class PhotoAligner:
    """Callable photo -> aligned face (or None when no face is found), for in-memory use.

    Args:
        params: alignment parameters (detector threshold, output size).
    """

    def __init__(self, params: AlignParams) -> None:
        from fmix.data.detect import RetinaFaceDetector

        self.size = params.size
        self.detector = RetinaFaceDetector(
            params.score_threshold, max_side=params.detect_max_side, threads=1, device=params.device
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        face = pick_central_face(self.detector.detect(rgb), rgb.shape[1], rgb.shape[0])
        return None if face is None else warp_face(rgb, face.landmarks, self.size)


def align_file(
    source: Path, identity: str, src_root: Path, dst_root: Path, detector: FaceDetector, params: AlignParams
) -> AlignResult:
    """Detect, align and write one photo; every failure becomes a status, never an exception.

    Args:
        source: the photo.
        identity: its identity (folder name).
        src_root: root the manifest's source paths are relative to.
        dst_root: output root.
        detector: the face detector.
        params: alignment parameters.

    Returns:
        The manifest row.
    """
    relative = source.relative_to(src_root).as_posix()
    try:
        rgb = read_rgb(source, params.max_pixels)
    except ImageReadError as err:
        return AlignResult(relative, identity, err.status, message=str(err))
    face = pick_central_face(detector.detect(rgb), rgb.shape[1], rgb.shape[0])
    if face is None:
        return AlignResult(relative, identity, NO_FACE, message=f"no face with score > {params.score_threshold}")
    output = output_name(source, identity)
    try:
        write_png_atomic(warp_face(rgb, face.landmarks, params.size), dst_root / output)
    except (OSError, ValueError) as err:
        return AlignResult(relative, identity, FAILED, message=f"cannot align or write: {err}")
    landmarks = np.round(face.landmarks, 2).tolist()
    return AlignResult(relative, identity, OK, output, round(face.score, 5), landmarks)


def output_name(source: Path, identity: str) -> str:
    """The aligned face's path relative to DST: ``<identity>/<stem>.png``."""
    return f"{identity}/{source.stem}.png"


def refused_sources(
    tasks: list[tuple[Path, str]], src_root: Path, follow_outside: bool = True
) -> dict[Path, AlignResult]:
    """The sources that are not aligned at all, with their manifest rows.

    Args:
        tasks: (photo, identity) pairs of one run.
        src_root: the resolved SRC folder.
        follow_outside: False refuses links whose target lies outside ``src_root``.

    Returns:
        Source -> row with status ``name_clash`` (several sources of an identity share an output
        name, compared without case), ``nested_folder`` (in a sub-folder of its identity folder) or
        ``outside_source``.
    """
    by_output: dict[str, list[Path]] = {}
    for source, identity in tasks:
        if source.parent == src_root / identity:  # nested files are refused, so they clash with nothing
            by_output.setdefault(output_name(source, identity).casefold(), []).append(source)
    refused = {}
    for source, identity in tasks:
        relative = source.relative_to(src_root).as_posix()
        clash = by_output.get(output_name(source, identity).casefold(), [])
        if source.parent != src_root / identity:
            message = f"{relative} is in a sub-folder of its identity folder: move it into {identity}/ to align it"
            refused[source] = AlignResult(relative, identity, NESTED_FOLDER, message=message)
        elif len(clash) > 1:
            names = ", ".join(path.name for path in clash)
            message = f"{names} would all be aligned to {output_name(source, identity)}: rename them"
            refused[source] = AlignResult(relative, identity, NAME_CLASH, message=message)
        elif not follow_outside and not _inside(source, src_root):  # the file or its identity folder is a link
            message = f"leads to {os.path.realpath(source)}, outside {src_root} (links out of SRC are not followed with --inside-only)"
            refused[source] = AlignResult(relative, identity, OUTSIDE_SOURCE, message=message)
    return refused


def _inside(path: Path, root: Path) -> bool:
    target = Path(os.path.realpath(path))
    return root in target.parents


def select_sources(src_root: Path, params: AlignParams) -> list[tuple[Path, str]]:
    """The (photo, identity) pairs to align: identities with at least ``min_images`` files.

    Args:
        src_root: ImageFolder root.
        params: alignment parameters (``min_images``, ``max_identities``).

    Returns:
        Sorted (path, identity) pairs.
    """
    identities = {
        name: files for name, files in list_identity_folders(src_root).items() if len(files) >= params.min_images
    }
    names = sorted(identities)[: params.max_identities]
    if not names:
        raise ValueError(f"no identity in {src_root} has at least align.min_images={params.min_images} files")
    nested = list_nested_files(src_root)  # not aligned, but reported (status nested_folder)
    return [(path, name) for name in names for path in identities[name] + nested.get(name, [])]


def read_manifest(dst_root: str | Path) -> list[AlignResult]:
    """Read the rows written so far; a half-written last line (killed run) is ignored.

    Args:
        dst_root: the alignment output folder.

    Returns:
        One row per source file, the latest row winning when a file was processed twice.
    """
    path = Path(dst_root) / MANIFEST
    if not path.exists():
        return []
    rows: dict[str, AlignResult] = {}
    for line in path.read_text().splitlines():
        try:
            row = AlignResult(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue
        rows[row.source] = row
    return list(rows.values())


def _finished(row: AlignResult, dst_root: Path) -> bool:
    return row.status != OK or (dst_root / row.output).is_file()


_WORKER: dict = {}


def _init_worker(src_root: Path, dst_root: Path, params: AlignParams, threads: int) -> None:
    import cv2

    from fmix.data.detect import RetinaFaceDetector

    cv2.setNumThreads(1)
    _WORKER.update(
        src_root=src_root,
        dst_root=dst_root,
        params=params,
        detector=RetinaFaceDetector(
            params.score_threshold, max_side=params.detect_max_side, threads=threads, device=params.device
        ),
    )


def _align_task(task: tuple[Path, str]) -> AlignResult:
    source, identity = task
    w = _WORKER
    return align_file(source, identity, w["src_root"], w["dst_root"], w["detector"], w["params"])


def _run_tasks(
    tasks: list[tuple[Path, str]], src_root: Path, dst_root: Path, params: AlignParams
) -> Iterator[AlignResult]:
    if not tasks:  # a resume with nothing left: no detector to load
        return
    if params.workers == 1:
        _init_worker(src_root, dst_root, params, threads=1)
        yield from map(_align_task, tasks)
        return
    with ProcessPoolExecutor(
        params.workers, initializer=_init_worker, initargs=(src_root, dst_root, params, 1)
    ) as pool:
        yield from pool.map(_align_task, tasks, chunksize=16)


def align_folder(
    src: str | Path, dst: str | Path, params: AlignParams, progress: bool = True, follow_outside: bool = True
) -> dict:
    """Align every selected photo of an ImageFolder tree, resuming a previous run.

    Photos already in ``DST/manifest.jsonl`` (and whose output still exists) are skipped.
    Bad files get a status in the manifest and the run goes on. A resume first cuts a
    half-written last manifest line (killed run) and deletes the run's stale temporary files.

    Args:
        src: ImageFolder root (one folder per identity).
        dst: output folder; must not be inside ``src``.
        params: alignment parameters.
        progress: show a progress bar.
        follow_outside: follow symbolic links whose target lies outside ``src`` (else they get
            the status ``outside_source``).

    Returns:
        The summary (also written to ``DST/summary.json``): counts per status, how many were
        skipped as already done, and the parameters.
    """
    from tqdm import tqdm

    src_root, dst_root = Path(src).resolve(), Path(dst).resolve()
    if dst_root == src_root or src_root in dst_root.parents:
        raise ValueError(f"output folder {dst} must not be inside the input folder {src}")
    if dst_root.exists() and not dst_root.is_dir():
        raise ValueError(f"output folder {dst} is an existing file, not a folder")
    tasks = select_sources(src_root, params)
    _check_resumable(dst_root, params)
    remove_stale_temporaries(dst_root)
    _repair_manifest(dst_root / MANIFEST)
    done = {row.source for row in read_manifest(dst_root) if _finished(row, dst_root)}
    todo = [task for task in tasks if task[0].relative_to(src_root).as_posix() not in done]
    refused = refused_sources(todo, src_root, follow_outside)
    with open(dst_root / MANIFEST, "a") as manifest:
        bar = tqdm(total=len(todo), desc="align", unit="img", disable=not progress)
        rows = [refused[task[0]] for task in todo if task[0] in refused]
        work = [task for task in todo if task[0] not in refused]
        beat = Heartbeat("align", total=len(todo))
        for number, row in enumerate(itertools.chain(rows, _run_tasks(work, src_root, dst_root, params)), start=1):
            manifest.write(json.dumps(asdict(row)) + "\n")
            manifest.flush()
            bar.update()
            beat(number)
        bar.close()
    selected = {task[0].relative_to(src_root).as_posix() for task in tasks}
    counts = Counter(row.status for row in read_manifest(dst_root) if row.source in selected)
    summary = {
        "selected": len(tasks),
        "identities": len({identity for _, identity in tasks}),
        "resumed_skipped": len(tasks) - len(todo),
        "processed_now": len(todo),
        "status_counts": dict(sorted(counts.items())),
        "params": asdict(params),
    }
    write_json_atomic(dst_root / SUMMARY, summary)
    return summary


def _repair_manifest(path: Path) -> None:
    """Cut a half-written last line (a killed run), so the next row starts on a line of its own."""
    if not path.is_file():
        return
    with open(path, "r+b") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _check_resumable(dst_root: Path, params: AlignParams) -> None:
    wanted = {key: getattr(params, key) for key in OUTPUT_AFFECTING}
    recorded_path = dst_root / OUTPUT_PARAMS
    if recorded_path.exists():
        recorded = json.loads(recorded_path.read_text())
        changed = [
            f"{key}: {recorded.get(key)} -> {value}" for key, value in wanted.items() if recorded.get(key) != value
        ]
        if changed:
            raise ValueError(
                f"{dst_root} was aligned with other parameters ({'; '.join(changed)}); "
                "use another output folder or remove this one"
            )
    else:
        dst_root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(recorded_path, wanted)


def aligned_rows(dst_root: str | Path) -> list[AlignResult]:
    """The successfully aligned rows of an alignment output folder, sorted by source."""
    dst_root = Path(dst_root)
    if not (dst_root / MANIFEST).exists():
        raise FileNotFoundError(f"no {MANIFEST} in {dst_root}: run `fmix align` first")
    return sorted((r for r in read_manifest(dst_root) if r.status == OK), key=lambda r: r.source)
