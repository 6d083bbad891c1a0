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
