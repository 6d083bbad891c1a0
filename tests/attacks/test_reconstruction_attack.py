import dataclasses

import pytest
import torch

from fmix.attacks import (
    AttackConfig,
    MaskerProtector,
    ReconstructionAttack,
    constituents_of,
    evaluate_reconstruction,
    invert,
    surrogate_protector,
)
from fmix.freq import RunningChannelStats, block_dct
from fmix.masker.build import build_masker
from fmix.masker.protection import MixingConfig, Protection
from fmix.params import ExportParams, MixingParams

TINY = AttackConfig(
    width=8,
    skip_channels=4,
    head_min=4,
    batch_size=8,
    lr=2e-3,
    adv_weight=0.05,
    adv_warmup=10,
    disc_width=4,
    disc_layers=2,
    seed=3,
)


@pytest.fixture(scope="module")
def stats(aligned_faces) -> RunningChannelStats:
    stats = RunningChannelStats()
    stats.update(block_dct(aligned_faces[0].float(), 1))
    return stats


@pytest.fixture(scope="module")
def masker(stats):
    return build_masker(ExportParams(), stats)


def test_masker_protector_matches_protect_batch_and_keeps_partners(aligned_faces, stats):
    faces, labels = aligned_faces
    images, labels = faces[:12].float(), labels[:12]
    params = ExportParams(k=3)
    masker, config = build_masker(params, stats), MixingConfig.from_params(MixingParams())
    pairs = MaskerProtector(masker, config)(images, labels, torch.Generator().manual_seed(5))
    reference = Protection(masker, config).protect(images, labels, torch.Generator().manual_seed(5))
    torch.testing.assert_close(pairs.x, reference.x)
    torch.testing.assert_close(pairs.weights, reference.weights)
    assert torch.equal(labels[pairs.partners].masked_fill(pairs.weights == 0, -1), reference.labels)
    heaviest = pairs.heaviest()
    assert torch.equal(heaviest, pairs.partners[torch.arange(12), pairs.weights.argmax(dim=1)])
    constituents, valid = constituents_of(images, pairs)
    assert constituents.shape == (12, config.k_max, 3, 112, 112) and valid.sum(dim=1).tolist() == [3] * 12


def test_unmixed_protector_and_surrogate(aligned_faces, masker, stats):
    images = aligned_faces[0][:4].float()
    pairs = MaskerProtector(masker)(images, torch.arange(4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(pairs.x, masker.masked(images))
    assert pairs.heaviest().tolist() == [0, 1, 2, 3]
    surrogate = surrogate_protector(stats, k=4)
    assert surrogate.mixing.k_max == 6 and surrogate.masker.k_values.tolist() == [2, 3, 4, 5, 6]
    mixed = surrogate(images, torch.arange(4), torch.Generator().manual_seed(0))
    assert mixed.x.shape == (4, 174, 28, 28) and ((mixed.weights > 0).sum(dim=1) == 4).all()
    assert surrogate_protector(stats, k=None).mixing is None


def test_the_black_box_guess_matches_the_released_channel_count(aligned_faces, stats):
    images = aligned_faces[0][:4].float()
    guess = surrogate_protector(stats, k=None, channels=36)  # e.g. ppfrfd_faithful's 36 highest-energy channels
    kept = guess.masker.mask.kept
    assert guess(images, torch.arange(4), torch.Generator().manual_seed(0)).x.shape == (
        4,
        36,
        28,
        28,
    )  # export.upsample 2
    default = build_masker(ExportParams(), stats).mask.kept.tolist()
    energy = stats.energy
    assert sorted(kept.tolist()) == sorted(sorted(default, key=lambda c: -energy[c].item())[:36])
    assert surrogate_protector(stats, k=None, channels=174).masker.mask.num_kept == 174
    with pytest.raises(
        ValueError, match=r"Expected keep_highest_energy in \[1, 174\] \(the channels not otherwise dropped\), got 180"
    ):
        surrogate_protector(stats, k=None, channels=180)


def test_training_decreases_the_loss_and_is_deterministic(aligned_faces, masker):
    faces, labels = aligned_faces[0][:16], aligned_faces[1][:16]
    protector = MaskerProtector(masker)
    attack = ReconstructionAttack(TINY).fit(faces, protector, labels, steps=30)
    l1 = [h["l1"] for h in attack.history]
    assert len(l1) == 30 and sum(l1[-5:]) < 0.8 * sum(l1[:5])
    assert all(h["disc"] == 0 for h in attack.history[:10]) and all(h["disc"] > 0 for h in attack.history[10:])
    # Same seed, same steps: same history (a shorter budget replays a prefix), also from an HWC uint8 array.
    again = ReconstructionAttack(TINY).fit(faces.permute(0, 2, 3, 1).numpy(), protector, labels, steps=12)
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(again.history) == strip(attack.history)[:12]
    other = ReconstructionAttack(dataclasses.replace(TINY, seed=4)).fit(faces, protector, labels, steps=3)
    assert strip(other.history) != strip(attack.history)[:3]


def test_mixed_training_targets_the_heaviest_constituent(aligned_faces, stats):
    faces, labels = aligned_faces[0][:16], aligned_faces[1][:16]
    params = ExportParams(k=2)
    protector = MaskerProtector(build_masker(params, stats), MixingConfig.from_params(MixingParams()))
    seen = []

    def recording(images, batch_labels, generator):
        pairs = protector(images, batch_labels, generator)
        seen.append((images, pairs))
        return pairs

    attack = ReconstructionAttack(dataclasses.replace(TINY, adv_weight=0.0, ssim_weight=0.0))
    targets, step = [], attack._step
    attack._step = lambda i, pairs, target: targets.append(target) or step(i, pairs, target)
    attack.fit(faces, recording, labels, steps=2)
    assert len(targets) == 2 and attack.discriminator is None
    for (images, pairs), target in zip(seen, targets):
        assert torch.equal(target, images[pairs.heaviest()])
    assert any(
        not torch.equal(pairs.heaviest(), torch.arange(8)) for _, pairs in seen
    )  # some partner outweighs its anchor


def test_the_moving_average_of_the_generator_follows_the_decay_ramp(aligned_faces, masker):
    from torch.nn.utils import parameters_to_vector as flat

    faces, config = aligned_faces[0][:16], dataclasses.replace(TINY, adv_weight=0.0)
    attack, snapshots, steps = ReconstructionAttack(config), [], []
    build = attack._optimisers
    attack._optimisers = lambda: snapshots.append(flat(attack.generator.parameters()).detach().clone()) or build()  # w0

    def record(step, fitted):
        steps.append(step)
        snapshots.append(flat(fitted.generator.parameters()).detach().clone())

    attack.fit(faces, MaskerProtector(masker), steps=3, on_step=record)
    assert steps == [0, 1, 2] and len(snapshots) == 4
    average = snapshots[0]
    for t, weights in enumerate(snapshots[1:]):  # decays min(0.99, (1 + t) / (10 + t)): 0.1, 2/11, 0.25
        decay = (1 + t) / (10 + t)
        average = decay * average + (1 - decay) * weights
    torch.testing.assert_close(flat(attack.averaged.parameters()), average)
    assert not torch.allclose(average, snapshots[-1])
    plain = ReconstructionAttack(dataclasses.replace(config, ema_decay=0.0)).fit(
        faces, MaskerProtector(masker), steps=3
    )
    assert plain.averaged is plain.generator
    torch.testing.assert_close(flat(plain.generator.parameters()), snapshots[-1])  # same seed, same training
    with pytest.raises(ValueError, match=r"Expected ema_decay in \[0, 1\), got 1.0"):
        AttackConfig(ema_decay=1.0)


def test_time_budget_and_errors(aligned_faces, masker):
    faces = aligned_faces[0][:16]
    protector = MaskerProtector(masker)
    attack = ReconstructionAttack(dataclasses.replace(TINY, clock="wall")).fit(
        faces, protector, steps=1000, seconds=0.3
    )
    assert 1 <= len(attack.history) < 1000
    with pytest.raises(ValueError, match="Give a budget"):
        ReconstructionAttack(TINY).fit(faces, protector)
    with pytest.raises(ValueError, match="at least batch_size=8 faces"):
        ReconstructionAttack(TINY).fit(faces[:4], protector, steps=1)
    with pytest.raises(ValueError, match=r"labels of shape \(16,\)"):
        ReconstructionAttack(TINY).fit(faces, protector, torch.arange(4), steps=1)
    with pytest.raises(ValueError, match="gan_loss"):
        AttackConfig(gan_loss="wgan")
    with pytest.raises(RuntimeError, match="call fit"):
        ReconstructionAttack(TINY).invert(torch.zeros(1, 174, 14, 14))


def test_invert_and_evaluate(aligned_faces, masker):
    faces = aligned_faces[0][:16]
    attack = ReconstructionAttack(dataclasses.replace(TINY, adv_weight=0.0)).fit(
        faces, MaskerProtector(masker), steps=2
    )
    originals = faces[:5].float()
    protected = masker.masked(originals)
    recon = attack.invert(protected, batch_size=2)
    assert recon.shape == (5, 3, 112, 112) and not attack.generator.training
    torch.testing.assert_close(invert(attack.averaged, protected), recon)  # the moving average inverts
    assert not torch.allclose(invert(attack.generator, protected), recon)
    with pytest.raises(ValueError, match=r"protected of shape \(B, K, h, w\)"):
        attack.invert(protected[0])
    with pytest.raises(ValueError, match=r"x of shape \(B, 174, 28, 28\)"):
        attack.invert(torch.zeros(2, 10, 14, 14))

    mean_face = faces.float().mean(dim=0)
    scores = evaluate_reconstruction(originals, originals, mean_face=mean_face)
    torch.testing.assert_close(scores.ssim, torch.ones(5))
    summary = scores.summary()
    assert summary["S3"] == pytest.approx(1.0) and summary["psnr"] == float("inf") and 0 < summary["floor"] < 1
    constituents = torch.stack([originals.roll(1, dims=0), originals], dim=1)
    mixed = evaluate_reconstruction(originals, constituents, torch.ones(5, 2, dtype=torch.bool), mean_face)
    assert mixed.best_index.tolist() == [1] * 5 and (mixed.floor >= scores.floor).all()
    with pytest.raises(ValueError, match="need valid"):
        evaluate_reconstruction(originals, constituents)


def test_the_attack_section_is_the_one_source_of_the_networks_batch_size_seed_and_device():
    from fmix.params import AttackParams

    assert AttackConfig() == AttackConfig.from_params(AttackParams())
    section = AttackParams(batch_size=8, seed=5, device="cpu")
    config = AttackConfig.from_params(section, width=8)
    assert (config.batch_size, config.seed, config.device, config.width) == (8, 5, "cpu", 8)
