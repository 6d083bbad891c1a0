"""``fmix data``: get the public data sets the pipeline runs on (registered in :mod:`fmix.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmix.cli.errors import fail
from fmix.data.fetch import LFW_ARCHIVE, LFW_BASE_URL, LFW_DIR, LFW_IMAGES, LFW_PAIRS, SUMS_FILE

app = typer.Typer(help="Get the public data sets: LFW deep-funneled and its verification pairs.", no_args_is_help=True)


@app.command("lfw")
def lfw(
    dest: Annotated[
        Path,
        typer.Argument(
            help=f"Data root (what FMIX_DATA names): writes DEST/{LFW_DIR}/{LFW_IMAGES}/, {LFW_PAIRS}, {LFW_ARCHIVE} and {SUMS_FILE}."
        ),
    ],
    base_url: Annotated[
        str, typer.Option("--base-url", help="Where the files are: the LFW site, a mirror, or a file:// folder.")
    ] = LFW_BASE_URL,
    sha256: Annotated[
        Optional[list[str]],
        typer.Option(
            "--sha256", help=f"NAME=HEX: the SHA-256 a file must have ({LFW_ARCHIVE} or {LFW_PAIRS}); repeat for both."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Download LFW deep-funneled and pairs.txt, verify their SHA-256 and extract the photos safely; a second run skips what is done."""
    import urllib.error

    from fmix.data import fetch

    bars: dict = {}

    def progress(name: str, done: int, total: int | None) -> None:
        from tqdm import tqdm

        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
        bar.update(done - bar.n)

    try:
        expected = fetch.parse_sha256_options(sha256 or [])
        summary = fetch.fetch_lfw(dest, base_url, expected, progress=None if quiet else progress)
    except (OSError, ValueError, RuntimeError, urllib.error.URLError) as err:
        fail(" ".join(str(err).split()) or type(err).__name__)
    finally:
        for bar in bars.values():
            bar.close()
    for item in summary.files:
        state = "downloaded" if item.downloaded else "already there"
        check = {"given": "matches the given SHA-256", "recorded": f"matches {SUMS_FILE}", "none": "not verified"}[
            item.checked_against
        ]
        typer.echo(f"{item.name}: {state}, SHA-256 {item.sha256} ({check})")
    for item in summary.unverified:
        typer.echo(
            f"warning: no known SHA-256 for {item.name}: the value above was computed from this download and recorded in "
            f"{summary.root / SUMS_FILE}. Compare it with a trusted copy, or enforce one: --sha256 {item.name}=HEX",
            err=True,
        )
    done = "extracted" if summary.extracted else "already extracted"
    typer.echo(f"{done}: {summary.photos} photos of {summary.identities} people in {summary.images}")
    typer.echo(f"pairs: {summary.root / LFW_PAIRS}; use it with: export FMIX_DATA={Path(dest)}")
