"""Per-stage code dependencies (fmix/pipeline/deps.py): each stage depends on the modules its command imports,
listed in both front ends, and an edited import makes `fmix pipeline generate --check` fail."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from test_pipeline import _copy_pipeline
from typer.testing import CliRunner

from fmix.cli import app
from fmix.methods.registry import REGISTRY
from fmix.pipeline.deps import DepsError, Package, code_files, command_label
from fmix.pipeline.generate import stage_code, stale_files, write_generated
from fmix.pipeline.table import load_table
from fmix_testing import REPO

runner = CliRunner()


@pytest.fixture(scope="module")
def code() -> dict[str, list[str]]:
    return stage_code(load_table(REPO / "workflow" / "stages.yaml"), REPO)


def test_each_stage_depends_on_what_its_command_imports(code):
    report = set(code["report"])
    assert {"fmix/cli/app.py", "fmix/params.py", "fmix/pipeline/report.py", "fmix/io.py"} <= report
    assert not report & {
        "fmix/train/loop.py",
        "fmix/attacks/run.py",
        "fmix/pipeline/model_attack.py",
        "fmix/methods/mixup.py",
        "fmix/pipeline/generate.py",
    }
    assert [name for name, files in code.items() if "fmix/pipeline/report.py" in files] == [
        "report"
    ]  # editing it reruns the report only
    methods = {module.partition(":")[0].replace(".", "/") + ".py" for module in REGISTRY.values()}
    # train runs `fmix launch -- train`: launch, then `python -m fmix train`, which builds methods (the registry's modules).
    assert {"fmix/__main__.py", "fmix/pipeline/launch.py", "fmix/train/loop.py"} | methods <= set(code["train"])
    assert {"fmix/pipeline/model_attack.py"} | methods <= set(code["attack"])
    assert "fmix/__main__.py" not in code["report"] and not methods & set(code["align"])
    assert "fmix/attacks/aggregate.py" in code["aggregate"] and "fmix/attacks/aggregate.py" not in code["unmix"]
    shared = set.intersection(*map(set, code.values()))  # editing these reruns everything, as it should
    assert {"fmix/__init__.py", "fmix/cli/app.py", "fmix/cli/errors.py", "fmix/params.py"} <= shared
    assert all(files == sorted(files) and all(Path(REPO, path).is_file() for path in files) for files in code.values())


def test_both_front_ends_list_each_stages_code(code):
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, files in code.items():
        deps = dvc[name].get("do", dvc[name])["deps"]
        assert [dep for dep in deps if dep.startswith("fmix/")] == files
        rule = (REPO / "workflow" / "rules" / f"{name}.smk").read_text()
        listed = re.search(r"^        code=\[\n(.*?)^        \],\n", rule, flags=re.M | re.S).group(1)
        assert re.findall(r'^            "([^"]+)",$', listed, flags=re.M) == files
    assert (
        "# code: the fmix modules `fmix launch -- train` imports"
        in (REPO / "workflow" / "rules" / "train.smk").read_text()
    )
    assert command_label("fmix attack unmix {protected} {masker} --params {params_file}") == "fmix attack unmix"


def test_an_edited_import_makes_the_check_fail_until_regenerated(tmp_path):
    root = _copy_pipeline(tmp_path / "p")
    report = root / "fmix" / "pipeline" / "report.py"
    report.write_text(
        report.read_text() + "\n\ndef _late():\n    from fmix.attacks.judge_gallery import read_gallery  # noqa: F401\n"
    )
    assert stale_files(root) == ["dvc.yaml", "workflow/rules/report.smk"]
    result = runner.invoke(app, ["pipeline", "generate", "--check", "--root", str(root)])
    assert (
        result.exit_code == 1 and "dvc.yaml, workflow/rules/report.smk (run `fmix pipeline generate`)" in result.output
    )
    assert write_generated(root) == ["dvc.yaml", "workflow/rules/report.smk"] and stale_files(root) == []
    assert '"fmix/attacks/judge_gallery.py",' in (root / "workflow" / "rules" / "report.smk").read_text()


def test_the_imports_are_those_the_layer_test_finds():
    """Every import the layer test sees counts here too, but for ``if TYPE_CHECKING:`` blocks, which never run."""
    import test_layers

    folder, package = REPO / "fmix", Package(REPO)
    files = sorted(folder.rglob("*.py"))
    test_layers._KNOWN.clear()
    test_layers._KNOWN.update(test_layers.module_name(path, folder) for path in files)
    differ = {}
    for path in files:
        module = test_layers.module_name(path, folder)
        theirs = {name for _, name in test_layers.imported_modules(ast.parse(path.read_text()), "fmix")}
        imported, named = package.imports(module, set())
        if theirs != imported | named:
            differ[module] = (sorted(theirs - imported - named), sorted((imported | named) - theirs))
    assert differ == {"fmix.methods": (["fmix.methods.base", "fmix.params"], [])}  # its TYPE_CHECKING imports


FAKE = {
    "__init__.py": "",
    "__main__.py": "from fmix.cli import app\n\napp()\n",
    "base.py": "",
    "helper.py": "",
    "lazy.py": "",
    "typed.py": "",
    "launcher.py": "",
    "cli/__init__.py": "from fmix.cli.app import app\n",
    "cli/sub.py": (
        "import typer\n\nsub_app = typer.Typer()\n\n\n@sub_app.command('go')\ndef go():\n    from fmix.work.go import run\n\n\n"
        "@sub_app.command('other')\ndef other():\n    from fmix.work.builder import build\n"
    ),
    "cli/app.py": (
        "import typer\n\nfrom fmix.base import VALUE\nfrom fmix.cli.sub import sub_app\n\napp = typer.Typer()\napp.add_typer(sub_app, name='sub')\n"
        "tools_app = typer.Typer()\napp.add_typer(tools_app, name='tools')\n\n\n@app.callback()\ndef main():\n    pass\n\n\n"
        "def _helper():\n    from fmix.helper import help_me\n\n\n"
        "@app.command()\ndef first_step(x: str):\n    from fmix.work.first import run\n    _helper()\n\n\n"
        "@app.command('second')\ndef second():\n    from fmix.work.second import run\n\n\n"
        "@tools_app.command('build')\ndef tools_build():\n    from fmix.work.builder import build\n\n\n"
        "@app.command()\ndef launch(command: list[str]):\n    from fmix.launcher import start\n"
    ),
    "work/__init__.py": "",
    "work/first.py": "def run():\n    import fmix.lazy\n",  # inside a function of a library module: counts
    "work/second.py": "from typing import TYPE_CHECKING\n\nfrom fmix.methods import build\n\nif TYPE_CHECKING:\n    from fmix.typed import T\n",
    "work/go.py": "from fmix.methods.registry import REGISTRY\n",  # the registry only: its package runs, no method is built
    "work/builder.py": "",
    "methods/__init__.py": "import importlib\n\nfrom fmix.methods.registry import REGISTRY\n\n\ndef build(name):\n    return importlib.import_module(REGISTRY[name])\n",
    "methods/registry.py": '"""Paths only."""\nREGISTRY = {"a": "fmix.methods.a:A"}\n',
    "methods/a.py": "",
}


@pytest.fixture()
def fake(tmp_path) -> Path:
    for name, text in FAKE.items():
        (tmp_path / "fmix" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fmix" / name).write_text(text)
    return tmp_path


BASE = ["fmix/__init__.py", "fmix/base.py", "fmix/cli/__init__.py", "fmix/cli/app.py", "fmix/cli/sub.py"]


@pytest.mark.parametrize(
    "cmd, extra",
    [
        (
            "fmix first-step {x} --params {params_file}",
            ["fmix/helper.py", "fmix/lazy.py", "fmix/work/__init__.py", "fmix/work/first.py"],
        ),
        (
            "fmix second --params {params_file}",
            [
                "fmix/methods/__init__.py",
                "fmix/methods/a.py",
                "fmix/methods/registry.py",
                "fmix/work/__init__.py",
                "fmix/work/second.py",
            ],
        ),
        (
            "fmix sub go --params {params_file}",
            ["fmix/methods/__init__.py", "fmix/methods/registry.py", "fmix/work/__init__.py", "fmix/work/go.py"],
        ),
        ("fmix tools build {x}", ["fmix/work/__init__.py", "fmix/work/builder.py"]),
        (
            "fmix launch --params {params_file} -- first-step {x}",
            [
                "fmix/__main__.py",
                "fmix/helper.py",
                "fmix/launcher.py",
                "fmix/lazy.py",
                "fmix/work/__init__.py",
                "fmix/work/first.py",
            ],
        ),
    ],
)
def test_a_commands_code_in_a_small_package(fake, cmd, extra):
    assert code_files(fake, cmd) == sorted(BASE + extra)


def test_a_command_that_is_not_there_is_an_error(fake):
    with pytest.raises(DepsError, match=r"no fmix command 'nosuch' in fmix.cli.app"):
        code_files(fake, "fmix nosuch {x}")
    with pytest.raises(DepsError, match=r"no fmix command 'gone' in fmix.cli.sub"):
        code_files(fake, "fmix sub gone")
    with pytest.raises(DepsError, match=r"not an fmix command"):
        code_files(fake, "python -m fmix sub go")


def test_a_stage_naming_no_command_fails_the_check(tmp_path):
    root = _copy_pipeline(tmp_path / "p")
    table = root / "workflow" / "stages.yaml"
    table.write_text(table.read_text().replace("cmd: fmix -v split {aligned}", "cmd: fmix -v splitt {aligned}"))
    result = runner.invoke(app, ["pipeline", "generate", "--check", "--root", str(root)])
    assert result.exit_code == 1 and result.output == "error: stage split: no fmix command 'splitt' in fmix.cli.app\n"
