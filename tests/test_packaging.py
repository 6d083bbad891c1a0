import tomllib

import yaml

from fmix_testing import REPO


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_environment_yml_lists_the_same_pinned_dependencies():
    project = _pyproject()
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert sorted(pip_section) == sorted(project["dependencies"] + project["optional-dependencies"]["test"])


def test_every_dependency_is_pinned_and_the_name_does_not_clash():
    project = _pyproject()
    assert project["name"] != "fmix"  # taken on PyPI by an unrelated package
    assert project["scripts"] == {"fmix": "fmix.cli:app"}
    assert all("==" in requirement for requirement in project["dependencies"])
