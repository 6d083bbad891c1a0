"""``fmix mask`` end to end (issue 32): faces/s of the fixed-k and the adaptive masker, before vs after, side by side.

The *before* arm runs the release modules as they were at ``--before-rev`` (``fmix/release`` and
``fmix/masker/onnx_masker.py`` checked out over a copy of this tree's ``fmix``: nothing else
differs); the *after* arm runs this tree. Every run is a fresh subprocess calling
``protect_folder`` (what ``fmix mask`` calls) on the same faces with the same secret key, the arms
alternating, ``--repeats`` times: on a shared machine only the ratios of one run mean something.
Both arms' releases are compared file by file (they must be the same bytes).

A last pair of runs per masker is profiled: the time of each stage (decode, masker graph, mixing,
shard writes, input hashes, ledger, records and index, previews), as wall and CPU time of the
thread that ran it, summed over threads, in ms per face. The *before* arm is sequential (its wall
times add up to the run's); the *after* arm computes two shards at once, so its thread times add
up to about twice its wall time. Threads of ONNX Runtime's or torch's own pools are not the calling
thread: their CPU time shows in the process's CPU, not in a stage's.

Maskers: ``--fixed`` and ``--adaptive`` (e.g. ``models/masker.onnx`` and ``models/masker_adaptive.onnx``
of the pipeline), else built in ``--work``: the fixed one from public faces, the adaptive one by
training the default ``adaptive`` method (default architecture, so the policy network costs what
it costs in the pipeline) for one epoch on a few identities and ``fmix export --policy`` (its
policy is barely trained; its cost does not depend on that).

Usage:
    python benchmarks/bench_mask_end_to_end.py --aligned data/aligned --faces-csv data/splits/private_train.csv
    python benchmarks/bench_mask_end_to_end.py --aligned data/aligned --faces 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE_REV = "b158fe9"  # the last commit before issue 32
CHANGED = (  # the modules issue 32 changed or added: the before arm takes them from --before-rev
    "fmix/release/protect.py",
    "fmix/release/folder.py",
    "fmix/release/ledger.py",
    "fmix/release/mixing.py",
    "fmix/masker/onnx_masker.py",
)
KEY = b"bench_mask_end_to_end: a fixed key"
STAGES = (  # stage -> (module, attribute) of the functions it times (exclusive of the stages nested in them)
    ("decode", "fmix.release.protect", "load_faces"),
    ("decode", "fmix.release.protect", "faces_to_tensor"),
    ("masker graph", "fmix.masker.onnx_masker", "OnnxMasker.__call__"),
    ("masker graph", "fmix.masker.onnx_masker", "OnnxMasker.run_into"),
    ("masker graph", "fmix.masker.onnx_masker", "OnnxMasker.policy_k"),
    ("masker setup", "fmix.masker.onnx_masker", "OnnxMasker.__init__"),
    ("masker setup", "fmix.masker.onnx_masker", "OnnxMasker.split_graph"),
    ("mixing", "fmix.release.mixing", "mix_groups"),
    ("mixing", "fmix.masker.protection", "Protection.protect_groups"),
    ("write shards", "fmix.release.folder", "ReleaseWriter.write_samples"),
    ("hash inputs", "fmix.release.protect", "file_hash"),
    ("ledger", "fmix.release.ledger", "Ledger._append"),
    ("records, index", "fmix.release.folder", "ReleaseWriter.write_record"),
    ("records, index", "fmix.release.folder", "ReleaseWriter.read_records"),
    ("records, index", "fmix.release.folder", "ReleaseWriter.write_index"),
    ("previews", "fmix.release.protect", "_write_previews"),
)


# ---------------------------------------------------------------------- the worker (one run, one subprocess)


def _instrument() -> dict[str, list[float]]:
    """Wrap the stage functions; returns stage -> [wall, cpu] seconds (exclusive, summed over threads)."""
    import functools
    import importlib
    import threading

    totals: dict[str, list[float]] = {}
    local = threading.local()
    lock = threading.Lock()

    def charge(stage: str, wall: float, cpu: float) -> None:
        with lock:
            entry = totals.setdefault(stage, [0.0, 0.0])
            entry[0] += wall
            entry[1] += cpu

    def wrap(stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = local.__dict__.setdefault("stack", [])
            now = (time.perf_counter(), time.thread_time())
            if stack:  # pause the enclosing stage
                outer, since = stack[-1]
                charge(outer, now[0] - since[0], now[1] - since[1])
            stack.append((stage, now))
            try:
                return fn(*args, **kwargs)
            finally:
                end = (time.perf_counter(), time.thread_time())
                _, since = stack.pop()
                charge(stage, end[0] - since[0], end[1] - since[1])
                if stack:
                    stack[-1] = (stack[-1][0], end)

        return timed

    for stage, module_name, name in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:  # a module the arm's code does not have
            continue
        owner, _, attribute = name.rpartition(".")
        target = getattr(module, owner) if owner else module
        if hasattr(target, attribute):
            setattr(target, attribute, wrap(stage, getattr(target, attribute)))
    return totals


def worker(args: argparse.Namespace) -> None:
    """One ``protect_folder`` run; prints one JSON line."""
    totals = _instrument() if args.profile else None
    from fmix.params import MaskParams
    from fmix.release.protect import ReleaseOptions, protect_folder

    options = ReleaseOptions(secret_key=KEY, ledger=args.out.parent / f"{args.out.name}-ledger.jsonl")
    wall, cpu = time.perf_counter(), time.process_time()
    summary = protect_folder(
        args.aligned, args.out, args.masker, MaskParams(), args.faces_csv, progress=False, release=options
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        json.dumps(
            {"wall": wall, "cpu": cpu, "inputs": summary["inputs"], "stages": totals, "k": summary["k_histogram"]}
        )
    )


# ---------------------------------------------------------------------- setup


def before_tree(rev: str, root: Path) -> Path:
    """A copy of this tree's ``fmix`` with the :data:`CHANGED` modules as they were at ``rev``."""
    tree = root / "before"
    shutil.copytree(REPO / "fmix", tree / "fmix", ignore=shutil.ignore_patterns("__pycache__"))
    for path in CHANGED:
        shown = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True)
        if shown.returncode == 0:
            (tree / path).write_bytes(shown.stdout)
        else:
            (tree / path).unlink(missing_ok=True)
    return tree


def face_list(aligned: Path, faces_csv: Path | None, count: int | None, root: Path) -> tuple[Path, int]:
    """The split CSV of the faces to protect (``--faces-csv``, else the first ``count`` faces of ``aligned``)."""
    if faces_csv is not None and count is None:
        return faces_csv, sum(1 for _ in faces_csv.open()) - 1
    files = sorted(aligned.glob("*/*.png"))[:count]
    path = root / "faces.csv"
    path.write_text(
        "path,identity\n" + "".join(f"{f.relative_to(aligned).as_posix()},{f.parent.name}\n" for f in files)
    )
    return path, len(files)


def build_maskers(aligned: Path, work: Path, identities: int) -> tuple[Path, Path]:
    """A fixed-k masker and an adaptive one (default architecture, one epoch on ``identities`` people) in ``work``."""
    from fmix.data.splits import make_split, write_split
    from fmix.masker.export import export_masker
    from fmix.params import AdaptiveParams, ExportParams, SplitParams, TrainParams
    from fmix.train.loop import train

    fixed, adaptive = work / "fixed.onnx", work / "adaptive.onnx"
    if fixed.is_file() and adaptive.is_file():
        return fixed, adaptive
    small = work / "small"
    people = sorted(p for p in aligned.iterdir() if p.is_dir() and len(list(p.glob("*.png"))) >= 5)[:identities]
    small.mkdir(parents=True, exist_ok=True)
    for person in people:
        if not (small / person.name).exists():
            (small / person.name).symlink_to(person.resolve())
    names = {p.name for p in people}
    with (aligned / "manifest.jsonl").open() as source, (small / "manifest.jsonl").open("w") as manifest:
        manifest.writelines(line for line in source if json.loads(line)["identity"] in names)
    split = SplitParams(folds=2, pairs_per_fold=4, private_fraction=0.5, public_fraction=0.3, val_fraction=0.2)
    write_split(make_split(small, split), work / "splits", split)
    export_masker(small, work / "splits" / "public.csv", fixed, ExportParams())
    params = TrainParams(epochs=1, threads=os.cpu_count() or 1, adaptive=AdaptiveParams(policy_warmup_epochs=0.0))
    train(params, small, work / "splits", work / "adaptive-run", fixed, progress=False)
    export_masker(None, None, adaptive, ExportParams(), policy_model=work / "adaptive-run" / "model.pt")
    return fixed, adaptive


def release_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "run.json"):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run(arm: str, code: Path, masker: Path, aligned: Path, faces_csv: Path, out: Path, profile: bool) -> dict:
    command = [sys.executable, __file__, "--worker", "--masker", str(masker), "--aligned", str(aligned)]
    command += ["--faces-csv", str(faces_csv), "--out", str(out)] + (["--profile"] if profile else [])
    env = {**os.environ, "PYTHONPATH": str(code), "FMIX_LEDGER": str(out.parent / "unused-ledger.jsonl")}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{arm} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["digest"] = release_digest(out)
    shutil.rmtree(out)
    (out.parent / f"{out.name}-ledger.jsonl").unlink()
    return result


def report(results: dict[tuple[str, str], list[dict]], maskers: list[str], count: int, repeats: int) -> None:
    """faces/s of each arm (best of its timed runs), whether the releases are the same, and the profiles."""
    arms = ("before", "after")
    if repeats:
        print(f"\nfaces/s end to end (fmix mask, u = 2, {count} faces; best of {repeats} runs, profiled ones apart):")
    for name in maskers if repeats else ():
        rates = {arm: max(count / r["wall"] for r in results[(name, arm)][:repeats]) for arm in arms}
        same = len({r["digest"] for arm in arms for r in results[(name, arm)]}) == 1
        print(
            f"  {name:8s} before {rates['before']:7.1f}  after {rates['after']:7.1f}  = {rates['after'] / rates['before']:.2f}x"
            f"   releases {'identical' if same else 'DIFFER'}   k {results[(name, 'after')][0]['k']}"
        )
    for name in maskers:
        profiled = {arm: results[(name, arm)][-1] for arm in arms}
        if profiled["before"]["stages"] is None:
            continue
        print(f"\nprofile, {name}: ms per face in the calling threads, wall / cpu, summed over threads")
        for stage in dict.fromkeys(stage for stage, _, _ in STAGES):
            cells = [profiled[arm]["stages"].get(stage, [0.0, 0.0]) for arm in arms]
            row = "".join(
                f"  {arm} {1e3 * w / count:7.3f} / {1e3 * c / count:7.3f}" for arm, (w, c) in zip(arms, cells)
            )
            print(f"  {stage:16s}{row}")
        for arm in arms:
            r = profiled[arm]
            staged = sum(cpu for _, cpu in r["stages"].values())
            print(
                f"  {arm:6s} run: wall {1e3 * r['wall'] / count:.3f} ms/face, process cpu {1e3 * r['cpu'] / count:.3f} "
                f"(in the stages' calling threads {1e3 * staged / count:.3f}; the rest: pools' threads, setup, Python)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligned", type=Path, default=REPO / "data" / "aligned")
    parser.add_argument("--faces-csv", type=Path, help="split CSV of the faces (e.g. data/splits/private_train.csv)")
    parser.add_argument("--faces", type=int, help="else the first N faces of --aligned (default: all)")
    parser.add_argument("--fixed", type=Path, help="fixed-k masker.onnx (default: built in --work)")
    parser.add_argument("--adaptive", type=Path, help="adaptive masker.onnx (default: built in --work)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fmix-bench-mask")
    parser.add_argument("--identities", type=int, default=24, help="people the built adaptive masker is trained on")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="the commit whose release modules the before arm runs")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per masker and arm")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--masker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.work.mkdir(parents=True, exist_ok=True)
    fixed, adaptive = args.fixed, args.adaptive
    if fixed is None or adaptive is None:
        built = build_maskers(args.aligned, args.work, args.identities)
        fixed, adaptive = fixed or built[0], adaptive or built[1]
    maskers = {"fixed-k": fixed, "adaptive": adaptive}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        root = Path(tmp)
        faces_csv, count = face_list(args.aligned, args.faces_csv, args.faces, root)
        code = {"before": before_tree(args.before_rev, root), "after": REPO}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        load = os.getloadavg()[0]
        print(f"{count} faces of {args.aligned}, {cores} cores, load average {load:.2f}; before = {args.before_rev}")
        results: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats + (0 if args.no_profile else 1)):
            profile = repeat == args.repeats
            for name, masker in maskers.items():
                for arm in ("before", "after") if repeat % 2 == 0 else ("after", "before"):  # alternating
                    result = run(arm, code[arm], masker, args.aligned, faces_csv, root / f"{arm}-{name}", profile)
                    results.setdefault((name, arm), []).append(result)
                    busy = result["cpu"] / result["wall"]
                    label = f"{'profiled ' if profile else ''}{name} {arm}"
                    print(f"  {label:26s} {count / result['wall']:7.1f} faces/s  (cpu {busy:.2f} cores)", flush=True)
        report(results, list(maskers), count, args.repeats)


if __name__ == "__main__":
    main()
