"""``fmix rec``: InsightFace face packs (MXNet RecordIO ``train.rec``/``train.idx``/``property``) and ``.bin`` sets.

Thin commands over :mod:`fmix.data.recordio` and :mod:`fmix.data.insightface_bin`; they
follow :mod:`fmix.cli.errors` (bad input is a one-line ``error:`` and exit code 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmix.cli.errors import guarded

rec_app = typer.Typer(
    help="InsightFace face packs (train.rec, train.idx, property) and verification .bin files, without mxnet.",
    no_args_is_help=True,
)


@rec_app.command("info")
def rec_info(
    pack_dir: Annotated[Path, typer.Argument(help="The pack's folder (train.rec, train.idx, property).")],
) -> None:
    """Counts, classes and image size of a pack (from its header record and property; reads no image)."""
    from fmix.data.recordio import FacePack

    summary = guarded(lambda: FacePack(pack_dir).summary())
    typer.echo(
        f"{pack_dir}: {summary['images']} images of {summary['classes']} classes, {summary['height']}x{summary['width']}; "
        f"{summary['records']} records ({'with' if summary['header_record'] else 'no'} header record, "
        f"{'indexed' if summary['indexed'] else 'no train.idx: scanned'})"
    )


@rec_app.command("export")
def rec_export(
    pack_dir: Annotated[Path, typer.Argument(help="The pack's folder.")],
    dst: Annotated[
        Path,
        typer.Argument(
            help="Empty output folder: DST/<label>/<key>.png and manifest.jsonl (readable by `fmix split`)."
        ),
    ],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an unfinished export of the same pack into DST.")
    ] = False,
) -> None:
    """Write a pack's faces as an aligned ImageFolder, one folder per class label."""
    from fmix.data.recordio import export_face_pack

    summary = guarded(lambda: export_face_pack(pack_dir, dst, resume))
    typer.echo(
        f"exported {summary['images']} faces of {summary['classes']} classes to {dst} ({summary['resumed_skipped']} done before, {summary['written']} now)"
    )


@rec_app.command("pack")
def rec_pack(
    aligned: Annotated[
        Path, typer.Argument(help="Aligned faces ALIGNED/<identity>/<face>.png (e.g. the output of `fmix align`).")
    ],
    dst: Annotated[Path, typer.Argument(help="Folder for train.rec, train.idx, property and identities.csv.")],
    faces: Annotated[
        Optional[Path],
        typer.Option("--faces", help="Split CSV (path, identity) restricting the faces, e.g. private_train.csv."),
    ] = None,
) -> None:
    """Write an InsightFace face pack; labels number the identities in sorted name order."""
    from fmix.data.recordio import write_face_pack

    summary = guarded(lambda: write_face_pack(aligned, dst, faces))
    typer.echo(
        f"packed {summary['images']} faces of {summary['classes']} identities, {summary['size']}x{summary['size']} -> {dst}"
    )


@rec_app.command("lfw-bin")
def rec_lfw_bin(
    aligned: Annotated[
        Path, typer.Argument(help="Aligned LFW faces (`fmix align` of LFW): ALIGNED/<name>/<name>_<NNNN>.png.")
    ],
    pairs_txt: Annotated[Path, typer.Argument(help="LFW View 2 pairs.txt.")],
    out: Annotated[Path, typer.Argument(help="The .bin to write.")],
    skip_missing: Annotated[
        bool, typer.Option("--skip-missing", help="Drop the pairs whose faces were not aligned (default: refuse).")
    ] = False,
) -> None:
    """Write an InsightFace verification .bin (pickle of image bytes and same flags) of LFW's pairs."""
    from fmix.data.insightface_bin import write_verification_bin

    summary = guarded(lambda: write_verification_bin(aligned, pairs_txt, out, skip_missing))
    typer.echo(
        f"{out}: {summary['pairs']} pairs ({summary['matched']} matched) of {summary['images']} faces, {summary['size']}; "
        f"dropped {summary['dropped']} pairs with unaligned faces"
    )
