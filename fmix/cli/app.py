"""The ``fmix`` command: one thin subcommand per pipeline step.

Each command reads its own section of ``params.yaml`` (``--params``), lets options override it,
and calls one library function. Heavy imports happen inside the commands so ``fmix --help``
stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmix import __version__
from fmix.cli.data import app as data_app
from fmix.cli.errors import fail, guarded, one_line
from fmix.cli.rec import rec_app
from fmix.methods.registry import METHODS

app = typer.Typer(
    name="fmix",
    help="Privacy-preserving face recognition training with adaptive frequency-domain masking and MixUp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[
    Optional[Path],
    typer.Option("--params", "-p", help="params.yaml to read this step's section from (defaults when omitted)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
AlignedArg = Annotated[Path, typer.Argument(help="Output folder of `fmix align`.")]
SplitsArg = Annotated[Path, typer.Argument(help="Output folder of `fmix split`.")]
GalleryOption = Annotated[
    Optional[Path],
    typer.Option(help="The dlib judge's gallery.npz of `fmix attack gallery` (default: embed the gallery here)."),
]
PriorOption = Annotated[
    Optional[Path],
    typer.Option(
        help="The attackers' prior of `fmix attack prior`: the un-mixed inverter the attacks of its masking start from (default: train every attacker here)."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fmix {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Log progress (step, loss, elapsed, budget left) to stderr every 30 s: `fmix -v train ...`.",
        ),
    ] = False,
) -> None:
    """fmix: train face recognition on masked, mixed faces; measure privacy with attacks."""
    from fmix.progress import configure_logging

    guarded(lambda: configure_logging(verbose))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _sweep_entry(params: Path | None, name: str) -> dict:
    from fmix import params as params_module

    if params is None:
        fail("--sweep needs --params (the file holding the sweep section)")
    try:
        return params_module.load_sweep_entry(params, name)
    except params_module.ParamsError as err:
        fail(str(err))


def _load(cls_name: str, params: Path | None, section: str, **overrides):
    from fmix import params as params_module

    try:
        return params_module.load_section(getattr(params_module, cls_name), params, section, **overrides)
    except params_module.ParamsError as err:
        fail(one_line(err))


@app.command()
def align(
    src: Annotated[Path, typer.Argument(help="ImageFolder root: one folder of photos per identity.")],
    dst: Annotated[
        Path, typer.Argument(help="Output folder for aligned 112x112 faces, manifest.jsonl and summary.json.")
    ],
    params: ParamsOption = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (overrides align.workers).")] = None,
    min_images: Annotated[Optional[int], typer.Option(help="Only identities with at least this many files.")] = None,
    max_identities: Annotated[Optional[int], typer.Option(help="Only the first N identities by name.")] = None,
    inside_only: Annotated[
        bool,
        typer.Option(
            "--inside-only", help="Do not follow symbolic links that lead out of SRC (status outside_source)."
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Detect faces (RetinaFace) and warp them to the ArcFace template; resumable, bad files get a status."""
    cfg = _load("AlignParams", params, "align", workers=workers, min_images=min_images, max_identities=max_identities)
    from fmix.data.align import align_folder

    summary = guarded(lambda: align_folder(src, dst, cfg, progress=not quiet, follow_outside=not inside_only))
    counts = summary["status_counts"]
    failed = {status: n for status, n in counts.items() if status != "ok"}
    typer.echo(
        f"aligned {counts.get('ok', 0)} of {summary['selected']} photos of {summary['identities']} identities "
        f"({summary['resumed_skipped']} done before, {summary['processed_now']} now); "
        f"not aligned: {json.dumps(failed) if failed else 'none'}"
    )


@app.command()
def split(
    aligned: AlignedArg,
    dst: Annotated[Path, typer.Argument(help="Folder for the split CSV files and split.json.")],
    params: ParamsOption = None,
    seed: Annotated[Optional[int], typer.Option(help="Overrides split.seed.")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="'heldout' or 'lfw' (overrides split.pairs).")] = None,
) -> None:
    """Write deterministic identity-disjoint private/public/verification splits and verification pairs."""
    cfg = _load("SplitParams", params, "split", seed=seed, pairs=pairs)
    from fmix.data.splits import make_split, write_split

    summary = guarded(lambda: write_split(make_split(aligned, cfg), dst, cfg))
    typer.echo("split: " + ", ".join(f"{key}={value}" for key, value in summary["counts"].items()))


@app.command()
def export(
    aligned: AlignedArg,
    public: Annotated[
        Path, typer.Argument(help="public.csv of `fmix split`: channel statistics come from public faces only.")
    ],
    out: Annotated[Path, typer.Argument(help="Destination masker.onnx.")],
    params: ParamsOption = None,
    k: Annotated[Optional[int], typer.Option(help="Fixed k of the policy (overrides export.k).")] = None,
    upsample: Annotated[
        Optional[int], typer.Option(help="Bilinear factor u before the DCT (overrides export.upsample).")
    ] = None,
    policy: Annotated[
        Optional[Path],
        typer.Option(
            help="model.pt of an adaptive run: export its masking with the trained strategy network as the k policy."
        ),
    ] = None,
) -> None:
    """Build the masker (block DCT, channel masking, public-data normalisation, k policy) and export it to ONNX."""
    cfg = _load("ExportParams", params, "export", k=k, upsample=upsample)
    mixing = _load("MixingParams", params, "mixing")
    from fmix.masker.export import export_masker

    summary = guarded(lambda: export_masker(aligned, public, out, cfg, policy_model=policy, mixing=mixing))
    typer.echo(
        f"masker: {summary['kept_channels']} of 192 channels kept, {summary['map_size']}x{summary['map_size']} maps, "
        + (
            f"statistics from {summary['public_faces_for_stats']} public faces"
            if policy is None
            else f"masking and policy of {policy}"
        )
        + f" -> {out} ({summary['bytes']} bytes)"
    )


@app.command()
def mask(
    in_dir: Annotated[Path, typer.Argument(help="ImageFolder of aligned faces (raw photos with --align).")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder for protected shards, index.csv, previews.")],
    masker: Annotated[Path, typer.Option("--masker", "-m", help="masker.onnx from `fmix export`.")] = Path(
        "models/masker.onnx"
    ),
    params: ParamsOption = None,
    faces: Annotated[
        Optional[Path], typer.Option("--faces", help="Split CSV (path, identity) restricting the inputs.")
    ] = None,
    mix: Annotated[
        Optional[bool],
        typer.Option("--mix/--no-mix", help="Mix (training data) or mask only (verification, enrolment)."),
    ] = None,
    align: Annotated[bool, typer.Option("--align", help="Inputs are raw photos: detect and align them first.")] = False,
    anonymize: Annotated[
        Optional[bool],
        typer.Option(
            "--anonymize/--keep-names",
            help="Keyed-hash output names (the default; key from $FMIX_NAME_KEY, else derived from --secret-key-file, else random and kept by nobody), or the file names joined by + (which say which faces a mix holds).",
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype of the shards: float16 or float32.")] = "float16",
    secret_key_file: Annotated[
        Optional[Path],
        typer.Option(
            "--secret-key-file",
            help="Derive the random parts from this key (reproducible research runs); keep it outside OUT_DIR. Default: the OS CSPRNG, reproducible by nobody.",
        ),
    ] = None,
    ledger: Annotated[
        Optional[Path],
        typer.Option(
            "--ledger",
            help="The owner's ledger of released faces, outside IN_DIR and OUT_DIR (default: $FMIX_LEDGER, else ~/.local/share/fmix/ledger.jsonl: one per owner).",
        ),
    ] = None,
    allow_rerelease: Annotated[
        bool,
        typer.Option(
            "--allow-rerelease",
            help="Warn instead of refusing faces an earlier release used (only if that release never left you).",
        ),
    ] = False,
    publish_label_names: Annotated[
        bool, typer.Option("--publish-label-names", help="Write labels.json (identity -> label) into the release.")
    ] = False,
    insecure_seed: Annotated[
        Optional[int],
        typer.Option("--insecure-seed", help="INSECURE, attack experiments only: a seed recorded in run.json."),
    ] = None,
    insecure_reuse: Annotated[
        bool,
        typer.Option(
            "--insecure-reuse",
            help="INSECURE, attack experiments only: each face in about k samples (partners from its batch).",
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Protect faces with an exported masker on ONNX Runtime: mask, and mix unless --no-mix (each face in one sample)."""
    import os

    cfg = _load("MaskParams", params, "mask", mix=mix, anonymize=anonymize)
    align_cfg = _load("AlignParams", params, "align") if align else None
    from fmix.release.protect import NAME_KEY_ENV, ReleaseOptions, protect_folder
    from fmix.release.randomness import check_name_key, read_secret_key

    key = os.environ.get(NAME_KEY_ENV, "").encode() or None
    if key is not None:
        guarded(lambda: check_name_key(key, f"${NAME_KEY_ENV}"))
    secret = guarded(lambda: read_secret_key(secret_key_file, out_dir)) if secret_key_file else None
    release = ReleaseOptions(secret, ledger, allow_rerelease, publish_label_names, insecure_seed, insecure_reuse)
    summary = guarded(
        lambda: protect_folder(
            in_dir, out_dir, masker, cfg, faces, align_cfg, key, dtype, progress=not quiet, release=release
        )
    )
    skipped = summary["skipped_by_status"]
    typer.echo(
        f"protected {summary['faces_used']} of {summary['inputs']} faces in {summary['protected']} samples ({_released_as(summary)}); "
        f"skipped: {json.dumps(skipped) if skipped else 'none'}; ledger {summary['ledger']}"
    )


def _released_as(summary: dict) -> str:
    """What a release holds, from its summary (the samples written, not the options asked for)."""
    if not summary["mixed"]:
        return f"masked only, not mixed, k histogram {json.dumps(summary['k_histogram'])}"
    mixing = summary["released_mixing"]
    use = "one use per face" if summary["one_use_per_face"] else "faces REUSED"
    noise = f"noise {mixing['noise']:g}" if mixing["noise"] else "NO noise"
    if mixing["noise"] and mixing.get("noise_photos"):
        noise += f" (x sqrt(n / {mixing['noise_photos']}) for a person with n > {mixing['noise_photos']} faces)"
    return (
        f"mixed, {use}, k {mixing['k_min']}-{mixing['k_max']} (histogram {json.dumps(summary['k_histogram'])}), "
        f"{'sign mask' if mixing['sign_flip'] else 'NO sign mask'}, {noise}, weight cap {mixing['cap']}"
    )


@app.command()
def train(
    aligned: Annotated[
        Optional[Path], typer.Argument(help="Output folder of `fmix align` (not with --release).", show_default=False)
    ] = None,
    splits: Annotated[
        Optional[Path], typer.Argument(help="Output folder of `fmix split` (not with --release).", show_default=False)
    ] = None,
    out_dir: Annotated[
        Optional[Path],
        typer.Argument(
            help="Folder for checkpoint.pt, model.pt, train_log.jsonl, train_summary.json (the only argument with --release).",
            show_default=False,
        ),
    ] = None,
    masker: Annotated[
        Optional[Path],
        typer.Option(
            "--masker",
            "-m",
            help="masker.onnx of `fmix export` (masking methods; with --release: the masker that made the release).",
        ),
    ] = None,
    params: ParamsOption = None,
    method: Annotated[Optional[str], typer.Option(help=f"{' | '.join(METHODS)} (overrides train.method).")] = None,
    k: Annotated[Optional[int], typer.Option(help="Fixed k of the mixup method (overrides train.mixup.k).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Overrides train.epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Overrides train.seed.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT_DIR/checkpoint.pt.")] = False,
    sweep: Annotated[
        Optional[str], typer.Option(help="Apply the train overrides of this entry of the params file's sweep section.")
    ] = None,
    release: Annotated[
        Optional[Path],
        typer.Option(
            "--release",
            help="Train on a release of `fmix mask` (its protected samples, soft labels on their published weights) instead of ALIGNED and SPLITS: `fmix train --release DIR OUT_DIR --masker MASKER`.",
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="Data-loader processes per rank that decode streamed faces or read a release's samples (overrides train.workers).",
            min=0,
        ),
    ] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(
            "--init",
            help="With --release: start the backbone from this model.pt of the release's masking (e.g. `fmix train` on public faces with --masker the release's masker).",
        ),
    ] = None,
    calibrate: Annotated[
        Optional[Path],
        typer.Option(
            "--calibrate",
            help="With --release: re-estimate batch-norm statistics after training on the un-mixed faces of this aligned folder (ROOT/<identity>/<image>; public faces you hold): the release's mixes are noisier than the faces the model embeds.",
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Train the FR network on protected faces (and the strategy network, for the adaptive method), or on a release. torchrun-ready."""
    given = [path for path in (aligned, splits, out_dir) if path is not None]
    if release is not None:
        _train_on_release(
            release, given, masker, params, epochs, seed, resume, sweep, method, k, workers, init, calibrate, quiet
        )
        return
    if init is not None or calibrate is not None:
        fail(
            "--init and --calibrate go with --release; train.init_backbone starts an RGB method's backbone, train.recalibrate_bn recalibrates on the training faces"
        )
    if len(given) != 3:
        fail("give ALIGNED SPLITS OUT_DIR (or --release DIR OUT_DIR to train on a release of `fmix mask`)")
    entry = _sweep_entry(params, sweep) if sweep else {}
    options = {
        key: value
        for key, value in dict(
            method=method, mixup=None if k is None else {"k": k}, epochs=epochs, seed=seed, workers=workers
        ).items()
        if value is not None
    }
    from fmix import params as params_module

    cfg = _load("TrainParams", params, "train", **params_module.merge_sections(entry, options))
    mixing = _load("MixingParams", params, "mixing")
    guarded(lambda: params_module.check_sections(cfg, mixing))
    from fmix.train.loop import train as run_training

    summary = guarded(
        lambda: run_training(cfg, aligned, splits, out_dir, masker, resume=resume, progress=not quiet, mixing=mixing)
    )
    typer.echo(
        f"trained {summary['method']} on {summary['training_faces']} faces of {summary['identities']} identities: "
        f"validation accuracy {summary['val_accuracy']:.3f}, mean k {summary['final_mean_k']}"
    )


def _train_on_release(
    release: Path,
    given: list[Path],
    masker: Path | None,
    params: Path | None,
    epochs,
    seed,
    resume: bool,
    sweep,
    method,
    k,
    workers: int | None,
    init: Path | None,
    calibrate: Path | None,
    quiet: bool,
) -> None:
    if len(given) != 1:
        fail("with --release give only OUT_DIR: fmix train --release DIR OUT_DIR --masker MASKER")
    if masker is None:
        fail("--release needs --masker: the masker.onnx that made the release (its transform is the model's encoder)")
    if method is not None or k is not None:
        fail("--method and --k do not apply to --release: the release is masked and mixed already")
    entry = _sweep_entry(params, sweep) if sweep else {}
    options = {
        key: value for key, value in dict(epochs=epochs, seed=seed, workers=workers).items() if value is not None
    }
    from fmix import params as params_module

    cfg = _load("TrainParams", params, "train", **params_module.merge_sections(entry, options))
    from fmix.train.release import train_on_release

    summary = guarded(
        lambda: train_on_release(
            cfg,
            release,
            masker,
            given[0],
            resume=resume,
            progress=not quiet,
            workers=cfg.workers,
            init=init,
            calibrate=calibrate,
        )
    )
    typer.echo(
        f"trained on release {summary['release']}: {summary['samples']} samples of {summary['faces']} faces, {summary['labels']} labels, "
        f"final loss {summary['final_loss']:.3f}{'' if summary['init'] is None else ', started from ' + summary['init']['model']}; the network reads {'|x|' if summary['sign_invariant'] else 'x'} of {summary['kept_channels']} masker channels"
        + (
            f"; batch norm recalibrated on {summary['calibration']['faces']} un-mixed faces"
            if summary["calibration"]
            else "; batch norm as the mixes left it (--calibrate DIR re-estimates it on un-mixed faces)"
        )
        + " (no un-mixed faces to validate on: run `fmix evaluate`)"
    )


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="model.pt from `fmix train`.")],
    aligned: AlignedArg,
    splits: Annotated[Path, typer.Argument(help="Output folder of `fmix split` (pairs.csv, private_val.csv).")],
    out: Annotated[Path, typer.Argument(help="Metrics JSON to write.")],
    params: ParamsOption = None,
    bins: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--bin",
            help="An InsightFace verification .bin (lfw.bin, cfp_fp.bin, or `fmix rec lfw-bin`'s) to report as well; repeatable.",
        ),
    ] = None,
) -> None:
    """Verification (10-fold accuracy, TAR@FAR, AUC) on masked, un-mixed faces, beside the raw-feature floor."""
    cfg = _load("EvaluateParams", params, "evaluate")
    from fmix.evaluate.run import evaluate_model
    from fmix.io import write_json_atomic

    metrics = guarded(
        lambda: evaluate_model(model, aligned, splits / "pairs.csv", cfg, splits / "private_val.csv", bins or ())
    )
    write_json_atomic(out, metrics)
    ver, floor = metrics["verification"], metrics["raw_feature_floor"]
    typer.echo(
        f"{metrics['method']}: verification accuracy {ver['accuracy_mean']:.3f} +- {ver['accuracy_std']:.3f}, AUC {ver['auc']:.3f}; "
        f"raw-feature floor {floor['accuracy_mean']:.3f}; closed-set validation accuracy "
        + (
            f"{metrics['val_accuracy']:.3f}"
            if metrics["val_accuracy"] is not None
            else "n/a (trained on a release: its labels are not the split's)"
        )
    )
    for path, result in metrics.get("bins", {}).items():
        typer.echo(
            f"  {path}: verification accuracy {result['accuracy_mean']:.3f} +- {result['accuracy_std']:.3f}, AUC {result['auc']:.3f} on {result['pairs']} pairs"
        )


@app.command()
def evaluator(
    aligned: AlignedArg,
    splits: SplitsArg,
    out_dir: Annotated[Path, typer.Argument(help="Folder for the evaluator's model.pt.")],
    params: ParamsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train the independent evaluator: an RGB FR model on clean private faces (its own seed), never a target."""
    import dataclasses

    cfg = _load("EvaluatorParams", params, "evaluator")
    train_cfg = _load("TrainParams", params, "train")
    from fmix.train.loop import train as run_training

    # The evaluator is its own model: its section's settings (device included), never train's pretrained start.
    train_cfg = dataclasses.replace(train_cfg, method="none", init_backbone=None, **dataclasses.asdict(cfg))
    summary = guarded(lambda: run_training(train_cfg, aligned, splits, out_dir, progress=not quiet))
    from fmix.attacks.identity import write_templates
    from fmix.data.faces import load_face_set
    from fmix.device import resolve_device

    faces = guarded(lambda: load_face_set(aligned, splits / "private_train.csv"))
    templates = guarded(lambda: write_templates(out_dir / "model.pt", faces, resolve_device(cfg.device)))
    typer.echo(
        f"evaluator: closed-set accuracy {summary['val_accuracy']:.3f} on {summary['identities']} private identities; "
        f"clean templates -> {templates}"
    )


@app.command("export-fr")
def export_fr(
    model: Annotated[Path, typer.Argument(help="model.pt of `fmix train` (or `fmix evaluator`).")],
    out: Annotated[
        Path,
        typer.Argument(help="Destination .onnx: (B, 3, 112, 112) RGB in [0, 255] -> (B, E) L2-normalised embeddings."),
    ],
    flip_average: Annotated[
        bool,
        typer.Option(
            "--flip-average",
            help="Average with the mirrored face's embedding, as `fmix evaluate` does (twice the work).",
        ),
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (at least 17).")] = 18,
) -> None:
    """Export a trained FR model, its frozen encoder included, as an ONNX face embedder (dynamic batch; usable as attack.judge)."""
    from fmix.models.fr_export import export_face_embedder

    summary = guarded(lambda: export_face_embedder(model, out, flip_average, opset))
    typer.echo(
        f"face embedder: {summary['method']}, {summary['embedding_size']}-d embeddings{', flip-averaged' if summary['flip_average'] else ''}, "
        f"opset {summary['opset']} -> {out} ({summary['bytes']} bytes)"
    )


attack_app = typer.Typer(
    help="Privacy attacks: reconstruction of protected faces, inversion of the FR model.", no_args_is_help=True
)
app.add_typer(attack_app, name="attack")
app.add_typer(rec_app, name="rec")
app.add_typer(data_app, name="data")


@attack_app.command("reconstruct")
def attack_reconstruct(
    masker: Annotated[Path, typer.Argument(help="The protection's masker.onnx.")],
    aligned: AlignedArg,
    splits: SplitsArg,
    evaluator_model: Annotated[Path, typer.Argument(help="model.pt of `fmix evaluator`.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for privacy.json and grid.png.")],
    params: ParamsOption = None,
    policy: Annotated[
        Optional[Path], typer.Option(help="The adaptive model.pt, when the masker holds its trained policy.")
    ] = None,
    metrics: Annotated[Optional[Path], typer.Option(help="The method's verification metrics JSON (Score_cls).")] = None,
    method: Annotated[str, typer.Option(help="Name of the protection in the report.")] = "",
    mix: Annotated[
        bool, typer.Option("--mix/--no-mix", help="Attack mixed training samples or masked-only faces.")
    ] = True,
    release: Annotated[
        Optional[Path],
        typer.Option(
            "--release",
            help="Also run the un-mixing attacks on this released folder of `fmix mask` (as `fmix attack unmix`; unmix.json).",
        ),
    ] = None,
    gallery: GalleryOption = None,
    prior: PriorOption = None,
) -> None:
    """White-box and black-box reconstruction attacks; S1-S4, PSNR, floors, Score_pp."""
    cfg = _load("AttackParams", params, "attack")
    from fmix.attacks.run import attack_method

    score_cls = json.loads(metrics.read_text())["verification"]["accuracy_mean"] if metrics else None
    record = guarded(
        lambda: attack_method(
            masker, aligned, splits, evaluator_model, out_dir, cfg, mix, policy, score_cls, method, gallery, prior=prior
        )
    )
    row, white, black = record["row"], record["white"], record["black"]
    typer.echo(
        f"{method or masker}: S1 {row['S1']:.3f} S2 {row['S2']:.3f} | white-box S3 {white['S3']:.3f} (floor {white['floor']:.3f}) S4 {white['S4']:.3f} "
        f"| black-box S3 {black['S3']:.3f} S4 {black['S4']:.3f} | Score_pp {row['Score_pp']:.3f} | judge {record['judge']}, chance {record['chance_top1']:.4f}"
    )
    _echo_check(record)
    if "dlib" in white["S4_by_judge"]:
        dlib_white, rgb_white = white["S4_by_judge"]["dlib"], white["S4_by_judge"]["evaluator"]
        typer.echo(
            f"  white-box verification TAR@{dlib_white['threshold']} {_fmt(dlib_white['tar'])} (impostors {_fmt(dlib_white['chance_tar'])}); "
            f"RGB evaluator S2 {record['S2_by_judge']['evaluator']['top1']:.3f} S4 {rgb_white['top1']:.3f}"
        )
    if release is not None:
        attack_unmix(release, masker, aligned, splits, evaluator_model, out_dir, params)


@attack_app.command("unmix")
def attack_unmix(
    release: Annotated[Path, typer.Argument(help="A released folder of `fmix mask` (what the attacker holds).")],
    masker: Annotated[Path, typer.Argument(help="The masker.onnx that made it (white-box).")],
    aligned: Annotated[Path, typer.Argument(help="Output folder of `fmix align` (the owner's faces, for scoring).")],
    splits: SplitsArg,
    evaluator_model: Annotated[Path, typer.Argument(help="model.pt of `fmix evaluator`.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for unmix.json and unmix_grid.png.")],
    params: ParamsOption = None,
    ledger: Annotated[
        Optional[Path],
        typer.Option(
            "--ledger",
            help="The owner's ledger of the release (default: the owner's default ledger, as for `fmix mask`), for scoring.",
        ),
    ] = None,
) -> None:
    """Un-mix a release: (a) regenerate its secrets, (b) resolve labels, (c) structure only; reconstruct and score (S3, S4)."""
    cfg = _load("AttackParams", params, "attack")
    from fmix.attacks.reconstruction import AttackConfig
    from fmix.attacks.release import attack_release

    network = AttackConfig.from_params(cfg)
    record = guarded(
        lambda: attack_release(release, masker, aligned, splits, evaluator_model, out_dir, cfg, network, ledger)
    )
    base = record["mix_baseline"]
    typer.echo(
        f"unmix {release}: mixes themselves: error {base['median_relative_error']:.3f} S3 {base['S3']:.3f} S4 {base['S4']:.3f} (floor {base['floor']:.3f}) | "
        + " | ".join(
            f"({record[n]['attack']}) {n}: error {record[n]['median_relative_error']:.3f}, recovered {record[n]['recovered_fraction']:.2f}, S3 {record[n]['S3']:.3f} S4 {record[n]['S4']:.3f}"
            for n in ("regenerate", "labels", "structure")
        )
    )


@attack_app.command("aggregate")
def attack_aggregate(
    release: Annotated[Path, typer.Argument(help="A released folder of `fmix mask` (what the attacker holds).")],
    masker: Annotated[Path, typer.Argument(help="The masker.onnx that made it (white-box).")],
    aligned: Annotated[Path, typer.Argument(help="Output folder of `fmix align` (the owner's faces, for scoring).")],
    splits: SplitsArg,
    out_dir: Annotated[Path, typer.Argument(help="Folder for aggregate.json and aggregate_grid.png.")],
    params: ParamsOption = None,
    gallery: GalleryOption = None,
    ledger: Annotated[
        Optional[Path],
        typer.Option(
            "--ledger",
            help="The owner's ledger of the release (default: the owner's default ledger, as for `fmix mask`): it names each published label.",
        ),
    ] = None,
    targets: Annotated[
        int,
        typer.Option(
            "--targets", help="Attack the N published labels that are the heaviest constituent of the most samples."
        ),
    ] = 100,
    strata: Annotated[
        str,
        typer.Option(
            "--strata",
            help="Strata of photos per identity in private_train.csv, as increasing bounds (2,5,20: 2-4, 5-19, 20+).",
        ),
    ] = "2,5,20",
    prior: PriorOption = None,
) -> None:
    """Attack the people a release holds most of: single samples and per-label means of |x|, inverted; top-1 per stratum."""
    cfg = _load("AttackParams", params, "attack")
    from fmix.attacks.aggregate import attack_aggregate as run_attack

    record = guarded(
        lambda: run_attack(
            release, masker, aligned, splits, out_dir, cfg, targets, strata, gallery, ledger, prior=prior
        )
    )
    attacks, head, control = record["attacks"], record["headline"], record["controls"]
    verdict = (
        "the attack works"
        if record["attack_works"]
        else f"below {control['positive']['min_top1']}: too weak at this budget, low numbers credit no privacy"
    )
    typer.echo(
        f"aggregate {release}: {record['targets']['selected']} targets (median {record['targets']['heaviest_samples']['median']} samples each) | "
        + " | ".join(f"{name} top-1 {attacks[name]['top1']:.3f}" for name in ("single", "heaviest", "weighted"))
        + f" | chance {record['chance_top1']:.4f} | max {head['top1']:.3f} ({head['attack']}), worst stratum {head['worst_stratum']}: {_fmt(head['worst_stratum_top1'])}"
    )
    typer.echo(
        f"  controls: un-mixed top-1 {control['positive']['top1']:.3f} ({verdict}); shuffled top-1 {control['shuffled']['top1']:.3f}; "
        + "null top-1 (other targets' reconstructions) "
        + " / ".join(f"{attacks[name]['null_top1']:.3f}" for name in ("single", "heaviest", "weighted"))
    )


@attack_app.command("prior")
def attack_prior(
    masker: Annotated[
        Path, typer.Argument(help="The masker.onnx whose masking (without its mixing) the prior inverts.")
    ],
    aligned: AlignedArg,
    splits: SplitsArg,
    out: Annotated[Path, typer.Argument(help="Destination prior file (a checkpoint).")],
    params: ParamsOption = None,
) -> None:
    """Train the attackers' shared prior once: the inverter of a masking without mixing, on public faces (attack.prior_steps)."""
    cfg = _load("AttackParams", params, "attack")
    from fmix.attacks.prior import train_prior

    summary = guarded(lambda: train_prior(masker, aligned, splits, out, cfg))
    typer.echo(
        f"attack prior: {summary['steps']} steps in {summary['cpu_seconds']:.0f} s, last L1 {summary['last_l1']:.4f}, masking {summary['key']} -> {out}"
    )


@attack_app.command("gallery")
def attack_gallery(
    aligned: AlignedArg,
    splits: Annotated[
        Path, typer.Argument(help="Output folder of `fmix split`: its private_train.csv is the gallery.")
    ],
    out: Annotated[
        Path, typer.Argument(help="Destination gallery.npz (descriptors, labels, paths, the judge's identity).")
    ],
    params: ParamsOption = None,
) -> None:
    """Embed the dlib judge's gallery (the clean private faces) once, for attack reconstruct/protection/invert --gallery."""
    _load("AttackParams", params, "attack")
    from fmix.attacks.judge_gallery import write_gallery

    summary = guarded(lambda: write_gallery(aligned, splits, out))
    typer.echo(
        f"judge gallery: {summary['faces']} faces of {summary['identities']} identities (dlib {summary['judge']['dlib']}) -> {out}"
    )


@attack_app.command("invert")
def attack_invert(
    model: Annotated[Path, typer.Argument(help="model.pt of `fmix train` (the target).")],
    aligned: AlignedArg,
    splits: SplitsArg,
    evaluator_model: Annotated[Path, typer.Argument(help="model.pt of `fmix evaluator`.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for inversion.json and inversion_grid.png.")],
    params: ParamsOption = None,
    gallery: GalleryOption = None,
) -> None:
    """Model inversion of the FR model: decode identity templates, optimise inputs; scored by the evaluator."""
    cfg = _load("AttackParams", params, "attack")
    from fmix.attacks.run import invert_model

    result = guarded(lambda: invert_model(model, aligned, splits, evaluator_model, out_dir, cfg, gallery))
    dec, opt = result["decoder"], result["optimisation"]
    typer.echo(
        f"inversion of {result['method']} (judge {result['judge']}): decoder top-1 {dec['top1']:.3f} top-5 {dec['top5']:.3f}; "
        f"optimisation top-1 {opt['top1']:.3f} top-5 {opt['top5']:.3f}; chance {dec['chance']:.4f}"
        + (f"; decoder TAR {_fmt(dec['tar'])} (impostors {_fmt(dec['chance_tar'])})" if "tar" in dec else "")
    )


@attack_app.command("protection")
def attack_protection(
    model: Annotated[
        Path, typer.Argument(help="model.pt of `fmix train`: its method says which protection to attack.")
    ],
    aligned: AlignedArg,
    splits: SplitsArg,
    evaluator_model: Annotated[Path, typer.Argument(help="model.pt of `fmix evaluator`.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for masker.onnx, privacy.json and the grids.")],
    params: ParamsOption = None,
    metrics: Annotated[Optional[Path], typer.Option(help="The model's verification metrics JSON (Score_cls).")] = None,
    name: Annotated[str, typer.Option(help="Name of the sweep entry in the report.")] = "",
    gallery: GalleryOption = None,
    artifacts: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder for masker.onnx and the grids instead of OUT_DIR (privacy.json stays there); always created, empty for a method with nothing to attack."
        ),
    ] = None,
    prior: PriorOption = None,
) -> None:
    """Reconstruction attacks on the protection a model was trained with (its own k policy, k, or masking alone)."""
    export_cfg = _load("ExportParams", params, "export")
    cfg = _load("AttackParams", params, "attack")
    from fmix.pipeline.model_attack import attack_protection as run_attack

    record = guarded(
        lambda: run_attack(
            model, aligned, splits, evaluator_model, out_dir, export_cfg, cfg, metrics, name, gallery, artifacts, prior
        )
    )
    if record["row"] is None:
        typer.echo(f"{record['method']}: {record['reason']}")
        return
    row, white = record["row"], record["white"]
    typer.echo(
        f"{record['method']}: S1 {row['S1']:.3f} S2 {row['S2']:.3f} | white-box S3 {white['S3']:.3f} (floor {white['floor']:.3f}) S4 {white['S4']:.3f} | Score_pp {row['Score_pp']:.3f}"
    )
    _echo_check(record)


def _echo_check(record: dict) -> None:
    check = record["check"]
    verdict = (
        "the attack works"
        if record["attack_works"]
        else "too weak at this budget: the low S3/S4 of a mix credit no privacy"
    )
    typer.echo(
        f"  attack check ({check['protection']}): S3 {check['S3']:.3f} (floor {check['floor']:.3f}) S4 {check['S4']:.3f}, at least {record['check_min_s4']} needed: {verdict}"
    )
    if "transfer" in record:
        transfer = record["transfer"]
        typer.echo(
            f"  transfer (the prior on the mixes as they are): S3 {transfer['S3']:.3f} S4 {transfer['S4']:.3f}; the row reports the {record['row_attacker']} attacker"
        )


@app.command(context_settings={"allow_interspersed_args": False})
def launch(
    command: Annotated[
        list[str], typer.Argument(help="The fmix command to start, after --: e.g. -- train ALIGNED SPLITS OUT ...")
    ],
    params: ParamsOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command line, start nothing.")] = False,
) -> None:
    """Start an fmix command in one process, or under torchrun when launch.gpus_per_node / launch.nodes ask for more."""
    import shlex
    import subprocess

    cfg = _load("LaunchParams", params, "launch")
    from fmix.pipeline.launch import launch_command

    argv = guarded(lambda: launch_command(cfg, command))
    typer.echo(shlex.join(argv) if dry_run else f"launch: {shlex.join(argv)}", err=not dry_run)
    if not dry_run:
        raise typer.Exit(code=subprocess.run(argv).returncode)


pipeline_app = typer.Typer(
    help="The pipeline's own files: generate both front ends from the stage table, switch profiles.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("generate")
def pipeline_generate(
    root: Annotated[Path, typer.Option(help="Repository root (holds workflow/stages.yaml).")] = Path("."),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; fail when a generated file is not current.")
    ] = False,
) -> None:
    """Write dvc.yaml, the Snakefile and workflow/rules/<stage>.smk from workflow/stages.yaml."""
    from fmix.pipeline.generate import stale_files, write_generated

    if check:
        stale = guarded(lambda: stale_files(root))
        if stale:
            fail(f"not generated from workflow/stages.yaml: {', '.join(stale)} (run `fmix pipeline generate`)")
        typer.echo("pipeline files are current")
        return
    changed = guarded(lambda: write_generated(root))
    typer.echo(f"written: {', '.join(changed)}" if changed else "pipeline files are current")


@pipeline_app.command("profile")
def pipeline_profile(
    name: Annotated[
        str, typer.Argument(help="quick (params.yaml as it is), paper, ci, or another workflow/params/<name>.yaml.")
    ],
    params: Annotated[Path, typer.Option("--params", "-p", help="The params file to rewrite.")] = Path("params.yaml"),
    root: Annotated[Path, typer.Option(help="Repository root (holds workflow/params/).")] = Path("."),
) -> None:
    """Merge a profile's overlay into params.yaml (then: dvc repro, dvc exp run or snakemake)."""
    from fmix import params as params_module
    from fmix.pipeline.profiles import apply_profile

    try:
        merged = apply_profile(params, name, root)
    except params_module.ParamsError as err:
        fail(str(err))
    typer.echo(f"profile {name}: {params} runs sweep entries {', '.join(merged.get('sweep', {}))}")


@app.command()
def report(
    results: Annotated[
        Path,
        typer.Argument(
            help="The sweep's results folder (data.results): <entry>/verification.json, privacy.json, inversion.json."
        ),
    ],
    models: Annotated[Path, typer.Argument(help="The sweep's models folder (data.models): <entry>/train_log.jsonl.")],
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for report.md, report.html, methods.json, the CSV files and figures.")
    ],
    params: Annotated[
        Path,
        typer.Option(
            "--params", "-p", help="params.yaml: its sweep section lists the entries; all of it goes into the report."
        ),
    ] = Path("params.yaml"),
    aggregate: Annotated[
        Optional[Path],
        typer.Option(
            "--aggregate", help="aggregate.json of `fmix attack aggregate`: the release's worst case, per stratum."
        ),
    ] = None,
) -> None:
    """Write the report: method table, privacy/utility scatter, training curves, k over epochs, grids, params, versions."""
    from fmix.pipeline.report import write_report

    rows = guarded(lambda: write_report(results, models, out_dir, params, aggregate))
    typer.echo(f"report: {len(rows)} sweep entries -> {out_dir / 'report.md'}, {out_dir / 'report.html'}")
