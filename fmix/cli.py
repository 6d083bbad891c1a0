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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fmix {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """fmix: train face recognition on masked, mixed faces; measure privacy with attacks."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _load(cls_name: str, params: Path | None, section: str, **overrides):
    from fmix import params as params_module

    try:
        return params_module.load_section(getattr(params_module, cls_name), params, section, **overrides)
    except params_module.ParamsError as err:
        _fail(str(err))


@app.command()
def align(
    src: Annotated[Path, typer.Argument(help="ImageFolder root: one folder of photos per identity.")],
    dst: Annotated[Path, typer.Argument(help="Output folder for aligned 112x112 faces, manifest.jsonl and summary.json.")],
    params: ParamsOption = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (overrides align.workers).")] = None,
    min_images: Annotated[Optional[int], typer.Option(help="Only identities with at least this many files.")] = None,
    max_identities: Annotated[Optional[int], typer.Option(help="Only the first N identities by name.")] = None,
    quiet: QuietOption = False,
) -> None:
    """Detect faces (RetinaFace) and warp them to the ArcFace template; resumable, bad files get a status."""
    cfg = _load("AlignParams", params, "align", workers=workers, min_images=min_images, max_identities=max_identities)
    from fmix.data.align import align_folder

    try:
        summary = align_folder(src, dst, cfg, progress=not quiet)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    counts = summary["status_counts"]
    failed = {status: n for status, n in counts.items() if status != "ok"}
    typer.echo(
        f"aligned {counts.get('ok', 0)} of {summary['selected']} photos of {summary['identities']} identities "
        f"({summary['resumed_skipped']} done before, {summary['processed_now']} now); "
        f"not aligned: {json.dumps(failed) if failed else 'none'}"
    )


@app.command()
def split(
    aligned: Annotated[Path, typer.Argument(help="Output folder of `fmix align`.")],
    dst: Annotated[Path, typer.Argument(help="Folder for the split CSV files and split.json.")],
    params: ParamsOption = None,
    seed: Annotated[Optional[int], typer.Option(help="Overrides split.seed.")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="'heldout' or 'lfw' (overrides split.pairs).")] = None,
) -> None:
    """Write deterministic identity-disjoint private/public/verification splits and verification pairs."""
    cfg = _load("SplitParams", params, "split", seed=seed, pairs=pairs)
    from fmix.data.splits import make_split, write_split

    try:
        summary = write_split(make_split(aligned, cfg), dst, cfg)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    typer.echo("split: " + ", ".join(f"{key}={value}" for key, value in summary["counts"].items()))


@app.command()
def export(
    aligned: Annotated[Path, typer.Argument(help="Output folder of `fmix align`.")],
    public: Annotated[Path, typer.Argument(help="public.csv of `fmix split`: channel statistics come from public faces only.")],
    out: Annotated[Path, typer.Argument(help="Destination masker.onnx.")],
    params: ParamsOption = None,
    k: Annotated[Optional[int], typer.Option(help="Fixed k of the policy (overrides export.k).")] = None,
    upsample: Annotated[Optional[int], typer.Option(help="Bilinear factor u before the DCT (overrides export.upsample).")] = None,
) -> None:
    """Build the masker (block DCT, channel masking, public-data normalisation, k policy) and export it to ONNX."""
    cfg = _load("ExportParams", params, "export", k=k, upsample=upsample)
    from fmix.masker.export import export_masker

    try:
        summary = export_masker(aligned, public, out, cfg)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    typer.echo(
        f"masker: {summary['kept_channels']} of 192 channels kept, {summary['map_size']}x{summary['map_size']} maps, "
        f"statistics from {summary['public_faces_for_stats']} public faces -> {out} ({summary['bytes']} bytes)"
    )


@app.command()
def mask(
    in_dir: Annotated[Path, typer.Argument(help="ImageFolder of aligned faces (raw photos with --align).")],
    out_dir: Annotated[Path, typer.Argument(help="Output folder for protected shards, index.csv, previews.")],
    masker: Annotated[Path, typer.Option("--masker", "-m", help="masker.onnx from `fmix export`.")] = Path("models/masker.onnx"),
    params: ParamsOption = None,
    faces: Annotated[Optional[Path], typer.Option("--faces", help="Split CSV (path, identity) restricting the inputs.")] = None,
    mix: Annotated[Optional[bool], typer.Option("--mix/--no-mix", help="Mix (training data) or mask only (verification, enrolment).")] = None,
    align: Annotated[bool, typer.Option("--align", help="Inputs are raw photos: detect and align them first.")] = False,
    anonymize: Annotated[Optional[bool], typer.Option("--anonymize/--keep-names", help=f"Keyed-hash output names (key from $FMIX_NAME_KEY).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random parts (overrides mask.seed).")] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype of the shards: float16 or float32.")] = "float16",
    quiet: QuietOption = False,
) -> None:
    """Protect faces with an exported masker on ONNX Runtime: mask, and mix unless --no-mix."""
    import os

    cfg = _load("MaskParams", params, "mask", mix=mix, anonymize=anonymize, seed=seed)
    align_cfg = _load("AlignParams", params, "align") if align else None
    from fmix.masker.apply import NAME_KEY_ENV, protect_folder

    key = os.environ.get(NAME_KEY_ENV, "").encode() or None
    try:
        summary = protect_folder(in_dir, out_dir, masker, cfg, faces, align_cfg, key, dtype, progress=not quiet)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    skipped = summary["skipped_by_status"]
    typer.echo(
        f"protected {summary['protected']} of {summary['inputs']} faces ({'mixed' if summary['mixed'] else 'masked only'}, "
        f"k histogram {json.dumps(summary['k_histogram'])}); skipped: {json.dumps(skipped) if skipped else 'none'}"
    )
