"""The method registry: one module per method, the loop never branches on a name, mixing reaches training."""

from __future__ import annotations

import ast
import dataclasses
import json

import pytest
import torch

from fmix.masker.protection import MixingConfig, Protection
from fmix.methods import METHODS, REGISTRY, build_method, method_class
from fmix.methods.base import ATTACK_SURFACES, Method
from fmix.models.artifact import ModelRecord
from fmix.params import METHODS as PARAM_METHODS
from fmix.params import AdaptiveParams, MixingParams, MixupParams, ParamsError, TrainParams, method_sections
from fmix.train.loop import train
from fmix_testing import REPO

TINY = TrainParams(
    width=0.125,
    embedding_size=32,
    batch_size=8,
    epochs=1,
    threads=1,
    mix_warmup_fraction=0.0,
    adaptive=AdaptiveParams(policy_warmup_epochs=0.0, n_fr=1, n_pi=1),
)


def test_the_registry_is_the_one_list_of_methods():
    assert PARAM_METHODS is METHODS and METHODS == tuple(REGISTRY)
    for name in METHODS:
        cls = method_class(name)
        assert issubclass(cls, Method) and cls.name == name and cls.summary
        assert cls.attack_surface in (None, *ATTACK_SURFACES)
    assert METHODS[:5] == ("none", "freq", "ppfrfd", "mixup", "adaptive")
    assert set(method_sections()) <= set(METHODS)  # a settings section of train is named after its method
    with pytest.raises(ValueError, match=f"unknown method 'fmix'; known: {', '.join(METHODS)}$"):
        method_class("fmix")
    with pytest.raises(ParamsError, match=f"train.method must be one of {', '.join(METHODS)}, got 'fmix'"):
        TrainParams(method="fmix")


def test_each_run_builds_its_own_method_object():
    params = TrainParams(method="adaptive")
    first, second = build_method(params), build_method(params)
    assert type(first) is type(second) is method_class("adaptive") and first is not second and first.params is params


def _name_comparisons(path) -> list[str]:
    """Comparisons of anything with a method's name (a string constant in METHODS) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            constants = [c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)]
            if any(value in METHODS for value in constants):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_the_training_loop_never_branches_on_a_method_name():
    files = sorted((REPO / "fmix" / "train").glob("*.py")) + [REPO / "fmix" / "pipeline" / "model_attack.py"]
    assert [hit for path in files for hit in _name_comparisons(path)] == []


def test_the_name_check_finds_a_branch(tmp_path):
    path = tmp_path / "loop.py"
    path.write_text("def k(params):\n    if params.method in ('mixup', 'adaptive'):\n        return 2\n")
    assert _name_comparisons(path) == ["loop.py:2"]


def test_mixup_honours_k_and_refuses_one_beyond_the_mixing_k_values(pipeline_sample, tmp_path):
    params = dataclasses.replace(TINY, method="mixup", mixup=MixupParams(k=3))
    summary = train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path / "run",
        pipeline_sample["masker"],
        progress=False,
    )
    assert summary["final_mean_k"] == 3.0 and summary["final_k_histogram"] == {
        "2": 0.0,
        "3": 1.0,
        "4": 0.0,
        "5": 0.0,
        "6": 0.0,
    }
    with pytest.raises(
        ValueError, match=r"method 'mixup' mixes at most max\(mixing.k_values\)=4 faces, got train.mixup.k=5"
    ):
        train(
            dataclasses.replace(params, mixup=MixupParams(k=5)),
            pipeline_sample["aligned"],
            pipeline_sample["splits"],
            tmp_path / "bad",
            pipeline_sample["masker"],
            progress=False,
            mixing=MixingParams(k_values=(2, 4)),
        )


def test_training_under_the_sign_mask_skips_drawing_it_and_the_network_cannot_tell(make_trainer):
    trainer = make_trainer(
        "mixup", MixingParams(sign_flip=True, noise=0.0), mixup=MixupParams(k=2)
    )  # noise, drawn after the mask, would shift the draws
    assert trainer.mixing.sign_flip and trainer.net.backbone.sign_invariant
    assert not trainer.protection.mixing.sign_flip  # the network reads |x|: a sign mask changes nothing it sees
    seen = []
    original = trainer.fr_loss
    trainer.fr_loss = lambda x, *rest: (seen.append(x.detach().clone()), original(x, *rest))[1]
    state = trainer.generator.get_state()
    x, labels = trainer.fr_step(next(iter(trainer.loader(0))), 0, 0)
    signed = Protection(None, MixingConfig(6, sign_flip=True)).protect_encoded(
        x, labels, 2, torch.Generator().set_state(state)
    )
    ratio = signed.x / seen[0]  # the same draws, then a sign mask (drawn last)
    assert set(ratio.round().unique().tolist()) == {-1.0, 1.0}
    trainer.net.eval()
    assert torch.equal(trainer.net.backbone(signed.x), trainer.net.backbone(seen[0]))


def test_without_a_masker_nothing_is_permuted(make_trainer):
    trainer = make_trainer("none", MixingParams(permute_channels=True))
    assert trainer.protection is None


def test_model_records_its_mixing_and_export_policy_uses_it(pipeline_sample, tmp_path):
    from fmix.masker.export import export_masker
    from fmix.masker.onnx_masker import OnnxMasker
    from fmix.params import ExportParams

    mixing = MixingParams(k_values=(2, 3), cap=0.6, sign_flip=True)
    train(
        dataclasses.replace(TINY, adaptive=dataclasses.replace(TINY.adaptive, target_mean_k=2.5)),
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path / "run",
        pipeline_sample["masker"],
        progress=False,
        mixing=mixing,
    )
    record = ModelRecord.load(tmp_path / "run" / "model.pt")
    assert record.mixing == mixing and record.policy["k_table"].tolist() == [2, 3]
    export_masker(
        None,
        None,
        tmp_path / "adaptive.onnx",
        ExportParams(),
        policy_model=tmp_path / "run" / "model.pt",
        mixing=MixingParams(),
    )
    metadata = OnnxMasker(tmp_path / "adaptive.onnx").metadata
    assert json.loads(metadata["mixing"]) == {
        "k_max": 3,
        "weight_law": "dirichlet",
        "cap": 0.6,
        "sign_flip": True,
        "permute_channels": False,
        "rescale": True,
        "noise": 0.75,
    }
