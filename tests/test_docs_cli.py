"""docs/cli.md is generated from the Typer app: deterministic, and its check fails on a stale file."""

import os
import subprocess
import sys

import typer

from fmix import docs_cli


def test_the_reference_lists_every_command_with_its_options():
    text = docs_cli.render()
    for heading in (
        "## `fmix align`",
        "## `fmix attack reconstruct`",
        "## `fmix data lfw`",
        "## `fmix pipeline generate`",
    ):
        assert heading in text
    assert "](#fmix-data-lfw)" in text
    assert (
        "| `--base-url <str>` |" in text or "| `--base-url TEXT` |" in text
    )  # Typer's metavar style varies by version
    assert "[default: https://vis-www.cs.umass.edu/lfw/]" in text
    assert text == docs_cli.render()  # same text twice


def test_the_reference_does_not_depend_on_the_terminal():
    code = "from fmix.docs_cli import render; import sys; sys.stdout.write(render())"
    texts = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "COLUMNS": columns},
        ).stdout
        for columns in ("30", "250")
    }
    assert len(texts) == 1


def test_check_fails_on_a_stale_or_missing_file_and_passes_on_a_current_one(tmp_path, capsys):
    out = tmp_path / "cli.md"
    assert docs_cli.main(["--check", "--out", str(out)]) == 1
    assert "is missing: run `python -m fmix.docs_cli`" in capsys.readouterr().err
    assert docs_cli.main(["--out", str(out)]) == 0 and out.read_text() == docs_cli.render()
    assert docs_cli.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("## `fmix data lfw`", "## `fmix data lfw-old`"))
    assert docs_cli.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is not current" in err and "Run `python -m fmix.docs_cli`" in err and "-## `fmix data lfw-old`" in err


def test_a_new_command_makes_the_file_stale(tmp_path):
    extra = typer.Typer(name="fmix")

    @extra.command()
    def first() -> None:
        """The first command."""

    @extra.command()
    def second(count: int = typer.Option(3, help="How many.")) -> None:
        """The second command."""

    text = docs_cli.render(extra)
    assert (
        text.index("## `fmix first`") < text.index("## `fmix second`")
        and "How many." in text
        and "[default: 3]" in text
    )
