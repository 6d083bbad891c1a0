"""The documentation: docs/cli.md and docs/methods.md are generated from the code (deterministic, and
their check fails on a stale file); every relative link of README.md and docs/ resolves; the README stays short."""

import os
import re
import subprocess
import sys
from pathlib import Path

import typer
import yaml

from fmix import docs_cli
from fmix.methods import method_class
from fmix.methods.base import ATTACK_SURFACES
from fmix.methods.registry import METHODS

REPO = Path(__file__).resolve().parents[1]
README_LIMIT = 12_000  # bytes: the README is the front page; the rest lives in docs/


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
    out, methods = tmp_path / "cli.md", tmp_path / "methods.md"
    paths = ["--out", str(out), "--methods-out", str(methods)]
    assert docs_cli.main(["--check", *paths]) == 1
    err = capsys.readouterr().err
    assert f"{out} is missing: run `python -m fmix.docs_cli`" in err and f"{methods} is missing" in err
    assert docs_cli.main(paths) == 0
    assert out.read_text() == docs_cli.render() and methods.read_text() == docs_cli.render_methods()
    assert docs_cli.main(["--check", *paths]) == 0
    out.write_text(out.read_text().replace("## `fmix data lfw`", "## `fmix data lfw-old`"))
    assert docs_cli.main(["--check", *paths]) == 1
    err = capsys.readouterr().err
    assert "is not current" in err and "Run `python -m fmix.docs_cli`" in err and "-## `fmix data lfw-old`" in err
    docs_cli.main(paths)
    methods.write_text(methods.read_text().replace("## `dctdp`", "## `dctdp-old`"))
    assert docs_cli.main(["--check", *paths]) == 1
    err = capsys.readouterr().err
    assert f"{methods} is not current" in err and "-## `dctdp-old`" in err and str(out) not in err


def test_the_methods_page_has_every_registered_method_from_its_own_code():
    text = docs_cli.render_methods()
    assert text == docs_cli.render_methods()
    sections = re.findall(r"^## `([a-z_0-9]+)`$", text, flags=re.MULTILINE)
    assert sections == list(METHODS)  # registry order, each once
    for name in METHODS:
        cls = method_class(name)
        assert cls.summary and docs_cli._cell(cls.summary) in text
        first_line = sys.modules[cls.__module__].__doc__.strip().splitlines()[0]
        assert docs_cli._markdown(first_line) in text
    assert "``" not in text and ":class:`" not in text and ":func:`" not in text  # reST turned into Markdown
    assert set(ATTACK_SURFACES) | {None} <= set(docs_cli.ATTACK_SURFACE_TEXT)


def test_rest_markup_becomes_markdown():
    assert docs_cli._markdown("See :class:`~fmix.a.Thing` and :func:`fmix.b.run`, ``x = 1``.") == (
        "See `Thing` and `fmix.b.run`, `x = 1`."
    )


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading (markup dropped, punctuation removed, spaces to hyphens)."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code spans (no links live there)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(
        r"^#{1,6} (.+)$",
        re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL),
        flags=re.MULTILINE,
    ):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _pipeline_output(target: Path) -> bool:
    """Whether ``target`` (repository-relative) is a file the pipeline writes, declared in workflow/stages.yaml
    under one of params.yaml's ``data`` paths (the report's figures: generated, never committed)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())["data"]
    stages = (REPO / "workflow" / "stages.yaml").read_text()
    relative = target.as_posix()
    return any(
        isinstance(folder, str)
        and relative.startswith(folder.rstrip("/") + "/")
        and f"${{data.{key}}}/{relative[len(folder.rstrip('/')) + 1 :]}" in stages
        for key, folder in data.items()
    )


def test_every_relative_link_of_the_readme_and_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert len(pages) > 10
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not file.exists():
                if not (file.is_relative_to(REPO) and _pipeline_output(file.relative_to(REPO))):
                    broken.append(f"{where} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{where} (no such heading)")
    assert broken == []


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path):
    assert _pipeline_output(Path("report/tradeoff.png")) and not _pipeline_output(Path("report/nothing.png"))
    assert "3-adversarial-training" in _anchors(REPO / "docs" / "design.md")
    assert _prose("a `[x](y)` b\n```\n[c](d)\n```\n[e](f)") == "a  b\n\n[e](f)"


def test_the_readme_is_short_and_keeps_the_quick_start():
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) <= README_LIMIT, f"README.md is {len(readme)} bytes; move detail into docs/"
    text = readme.decode()
    assert "make run    # set up the environment, then run the default pipeline on the default data" in text
    assert "make test   # set up the environment, then run the test suite" in text


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
