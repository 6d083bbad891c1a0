"""The attackers' shared prior (fmix.attacks.prior): saved networks, the masking they serve, the file."""

import dataclasses

import pytest
import torch

from fmix.attacks import AttackConfig, ReconstructionAttack
from fmix.attacks.prior import load_prior, masking_key, train_prior, unmixed_protector
from fmix.masker.build import read_masker_metadata
from fmix.masker.export import export_masker
from fmix.models.checkpoint import save_checkpoint
from fmix.params import AttackParams, ExportParams, MixingParams

TINY = AttackConfig(width=8, skip_channels=4, head_min=4, batch_size=4, adv_warmup=1, disc_width=4, disc_layers=2)


def test_saved_networks_invert_as_before_and_train_on(pipeline_sample, aligned_faces):
    faces, labels = aligned_faces[0][:8], aligned_faces[1][:8]
    protector = unmixed_protector(pipeline_sample["masker"])[0]
    attack = ReconstructionAttack(TINY).fit(faces, protector, labels, steps=3)
    probe = protector(faces.float(), labels, torch.Generator().manual_seed(0)).x
    state = attack.state_dict()
    assert state["shape"] == [174, 28, 112] and state["steps"] == 3 and state["discriminator"] is not None
    again = ReconstructionAttack.from_state(state)
    torch.testing.assert_close(again.invert(probe), attack.invert(probe), rtol=0, atol=0)
    before = attack.invert(probe)
    again.fit(faces, protector, labels, steps=2)  # trains on from the saved weights; the original is untouched
    assert len(again.history) == 2 and not torch.equal(again.invert(probe), before)
    torch.testing.assert_close(attack.invert(probe), before, rtol=0, atol=0)
    ReconstructionAttack.from_state(state, dataclasses.replace(TINY, clock="wall", device="cpu"))  # may differ
    with pytest.raises(ValueError, match=r"the attack's settings differ from the saved networks' in \['width', 'lr'\]"):
        ReconstructionAttack.from_state(state, dataclasses.replace(TINY, width=16, lr=0.5))
    with pytest.raises(RuntimeError, match="The attack is not trained: call fit\\(\\) first"):
        ReconstructionAttack(TINY).state_dict()


def test_the_masking_key_ignores_the_mixing_and_sees_channels_and_signs(pipeline_sample, tmp_path):
    public = pipeline_sample["splits"] / "public.csv"
    default = read_masker_metadata(pipeline_sample["masker"])
    export_masker(
        pipeline_sample["aligned"], public, tmp_path / "k5.onnx", ExportParams(k=5), mixing=MixingParams(noise=0.1)
    )
    export_masker(pipeline_sample["aligned"], public, tmp_path / "36.onnx", ExportParams(keep_lowest_energy=36))
    key = masking_key(default, sign_masked=True)
    assert len(key) == 16 and key == masking_key(read_masker_metadata(tmp_path / "k5.onnx"), sign_masked=True)
    assert key != masking_key(default, sign_masked=False)  # x, not |x|
    assert key != masking_key(read_masker_metadata(tmp_path / "36.onnx"), sign_masked=True)  # other channels


def test_the_prior_file_is_trained_once_and_refused_when_foreign(pipeline_sample, tmp_path):
    params = AttackParams(prior_steps=2, batch_size=4)
    out = tmp_path / "prior.pt"
    summary = train_prior(
        pipeline_sample["masker"], pipeline_sample["aligned"], pipeline_sample["splits"], out, params, TINY
    )
    metadata = read_masker_metadata(pipeline_sample["masker"])
    assert summary["steps"] == 2 and summary["key"] == masking_key(metadata, sign_masked=True)
    prior = load_prior(out, TINY)
    assert prior.key == summary["key"] and prior.steps == 2 and prior.path == str(out)
    assert prior.info(False, "why") == {
        "path": str(out),
        "used": False,
        "steps": 2,
        "cpu_seconds": summary["cpu_seconds"],
        "reason": "why",
    }
    with pytest.raises(FileNotFoundError, match="attack prior not found: .*missing.pt"):
        load_prior(tmp_path / "missing.pt", TINY)
    save_checkpoint({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not an attack prior of `fmix attack prior`"):
        load_prior(tmp_path / "other.pt", TINY)
    with pytest.raises(
        ValueError, match=r"prior.pt: the attack's settings differ .* \['width'\]; train the prior again"
    ):
        load_prior(out, dataclasses.replace(TINY, width=16))
    with pytest.raises(ValueError, match="attack.prior_steps must be null or >= 1, got 0"):
        AttackParams(prior_steps=0)
