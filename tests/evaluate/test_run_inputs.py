"""A damaged or foreign model.pt is a one-line error, not a KeyError or TypeError (issue 9 item 3)."""

import pytest
import torch
from typer.testing import CliRunner

from fmix.cli import app
from fmix.models.artifact import load_trained_model


def test_missing_keys_are_named(tmp_path):
    torch.save({"params": {}, "backbone": {}}, tmp_path / "model.pt")
    with pytest.raises(
        ValueError,
        match=r"model.pt is not a model.pt of `fmix train`: it lacks encoder, head, policy, num_classes, input",
    ):
        load_trained_model(tmp_path / "model.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list.pt is not a model.pt of `fmix train`: it lacks params, encoder"):
        load_trained_model(tmp_path / "list.pt")


def test_damaged_values_are_value_errors(tmp_path):
    record = {
        "params": {"method": "none", "width": 0.125},
        "encoder": {},
        "backbone": {"w": torch.zeros(1)},
        "head": {},
        "policy": {},
        "num_classes": 3,
        "input": [3, 112],
    }
    torch.save(record, tmp_path / "model.pt")
    with pytest.raises(
        ValueError,
        match=r"model.pt does not hold a model `fmix train` wrote: RuntimeError: Error\(s\) in loading state_dict",
    ):
        load_trained_model(tmp_path / "model.pt")
    torch.save({**record, "params": {"methd": "none"}}, tmp_path / "typo.pt")
    with pytest.raises(
        ValueError,
        match=r"typo.pt does not hold a model `fmix train` wrote: ParamsError: unknown key\(s\) in section 'train': methd",
    ):
        load_trained_model(tmp_path / "typo.pt")


def test_evaluate_command_prints_one_line(tmp_path):
    torch.save({"params": {}}, tmp_path / "model.pt")
    result = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / "model.pt"), str(tmp_path), str(tmp_path), str(tmp_path / "m.json")]
    )
    assert result.exit_code == 1
    assert (
        result.output
        == f"error: {tmp_path / 'model.pt'} is not a model.pt of `fmix train`: it lacks encoder, backbone, head, policy, num_classes, input\n"
    )
    assert not (tmp_path / "m.json").exists()
