"""Tests of fmix.freq.mixing: weights, partners, sign masks, the mixing draw and its application."""

import pytest
import torch

from fmix.freq import (
    apply_mixing,
    draw_partners,
    draw_sign_mask,
    mix_weights,
    sample_mixing,
)
from fmix.freq.mixing import mix_as_matrix


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def every_k(k_max: int, repeats: int) -> torch.Tensor:
    return torch.arange(1, k_max + 1).repeat(repeats)


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("law", ["dirichlet", "instahide"])
@pytest.mark.parametrize("cap", [0.65, None])
def test_weights_are_on_the_simplex_with_k_entries_under_the_cap(law, cap, generator):
    k = every_k(6, 200)
    weights = mix_weights(k, 6, law, cap, generator)
    assert weights.shape == (1200, 6) and weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(1200), atol=1e-6, rtol=0)
    assert (weights >= 0).all()
    assert torch.equal((weights > 0).sum(dim=1), k)  # k positive weights, zeros beyond
    mixed = weights[k >= 2]
    if cap is not None:
        assert mixed.max() <= cap + 1e-6
    else:
        assert mixed.max() > 0.9  # without the cap large weights do occur


def test_k_equal_one_gives_exactly_one_weight(generator):
    weights = mix_weights(torch.ones(5, dtype=torch.long), 4, generator=generator)
    assert torch.equal(weights, torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 5))


def test_capped_dirichlet_pair_is_uniform_on_the_allowed_interval(generator):
    # Dirichlet(1, 1) conditioned on max <= 0.65: w_0 uniform on [0.35, 0.65].
    first = mix_weights(torch.full((20000,), 2), 2, "dirichlet", 0.65, generator)[:, 0]
    assert first.min() >= 0.35 - 1e-6 and first.max() <= 0.65 + 1e-6
    assert first.mean().item() == pytest.approx(0.5, abs=0.005)
    assert (first < 0.45).float().mean().item() == pytest.approx(1 / 3, abs=0.015)


def test_projection_enforces_the_cap_when_rejection_is_skipped(generator):
    k = every_k(6, 100)[every_k(6, 100) >= 3]  # cap 0.4 is feasible from k = 3 on
    weights = mix_weights(k, 6, "instahide", 0.4, generator, resample_rounds=0)
    assert weights.max() <= 0.4 + 1e-6
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(k)), atol=1e-6, rtol=0)
    assert torch.equal((weights > 0).sum(dim=1), k)


def test_tight_cap_gives_uniform_weights(generator):
    weights = mix_weights(torch.tensor([2, 2, 4]), 4, cap=0.5, generator=generator)
    assert torch.allclose(weights[:2], torch.tensor([0.5, 0.5, 0.0, 0.0]), atol=1e-6)
    assert weights[2].max() <= 0.5 + 1e-6


def test_weights_are_reproducible(generator):
    k = every_k(6, 10)
    first = mix_weights(k, 6, generator=seeded(7))
    assert torch.equal(first, mix_weights(k, 6, generator=seeded(7)))
    assert not torch.equal(first, mix_weights(k, 6, generator=seeded(8)))
    assert torch.float64 == mix_weights(k, 6, generator=generator, dtype=torch.float64).dtype


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"k": torch.tensor([2, 3]), "cap": 0.4}, ValueError, r"cap 0.4 is infeasible for k=2.*need cap >= 0.5"),
        ({"k": torch.tensor([1, 7])}, ValueError, r"k in \[1, 6\], got values in \[1, 7\]"),
        ({"k": torch.tensor([0, 2])}, ValueError, r"k in \[1, 6\]"),
        ({"k": torch.tensor([2.0])}, TypeError, "k with an integer dtype"),
        ({"k": torch.tensor([[2]])}, ValueError, r"k of shape \(B,\)"),
        ({"k": torch.tensor([2]), "law": "beta"}, ValueError, r"law in \('dirichlet', 'instahide'\)"),
        ({"k": torch.tensor([2]), "cap": 1.5}, ValueError, r"cap in \(0, 1\]"),
        ({"k": torch.tensor([2]), "k_max": 0}, ValueError, "k_max >= 1"),
    ],
)
def test_mix_weights_rejects_bad_arguments(kwargs, error, message):
    arguments = {"k_max": 6, **kwargs}
    with pytest.raises(error, match=message):
        mix_weights(**arguments)


def test_infeasible_cap_is_fine_when_only_larger_k_occur(generator):
    weights = mix_weights(torch.tensor([1, 3, 4]), 4, cap=0.4, generator=generator)
    assert weights[1:].max() <= 0.4 + 1e-6


# --------------------------------------------------------------------------- partners


def test_partners_are_distinct_other_identities(generator):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 4, 5])
    partners, fallback = draw_partners(labels, 5, generator)
    assert partners.shape == (10, 5) and partners.dtype == torch.long
    assert torch.equal(partners[:, 0], torch.arange(10))
    for row in partners.tolist():
        assert len(set(row)) == 5  # anchor and partners all distinct
        identities = labels[row].tolist()
        assert len(set(identities)) == 5  # 6 identities: partners of pairwise distinct others
    assert not fallback.any()


def test_each_other_identity_is_equally_likely_whatever_its_size():
    labels = torch.tensor([0] + [1] * 8 + [2])  # anchor 0 picks identity 1 or 2
    picked = torch.stack([draw_partners(labels, 2, seeded(s)).partners[0, 1] for s in range(400)])
    share_of_two = (labels[picked] == 2).float().mean().item()
    assert share_of_two == pytest.approx(0.5, abs=0.1)  # sample-uniform would give 1/9


def test_fallback_to_same_identity_is_flagged(generator):
    labels = torch.tensor([0, 0, 0, 1])
    partners, fallback = draw_partners(labels, 3, generator)
    assert fallback.tolist() == [True, True, True, False]
    for anchor in range(3):  # the single other-identity sample comes first
        assert partners[anchor, 1].item() == 3
        assert anchor not in partners[anchor, 1:].tolist()
    assert set(partners[3, 1:].tolist()) <= {0, 1, 2}


def test_too_small_batch_repeats_partners_and_flags_them(generator):
    partners, fallback = draw_partners(torch.tensor([4, 9]), 4, generator)
    assert partners.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert fallback.all()


def test_partners_without_identity_preference(generator):
    labels = torch.zeros(6, dtype=torch.long)
    partners, fallback = draw_partners(labels, 4, generator, other_identities=False)
    assert not fallback.any()
    for anchor, row in enumerate(partners.tolist()):
        assert row[0] == anchor and len(set(row)) == 4


def test_partner_errors_and_trivial_case(generator):
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        draw_partners(torch.tensor([3]), 2, generator)
    with pytest.raises(ValueError, match=r"labels of shape \(B,\)"):
        draw_partners(torch.zeros(2, 2, dtype=torch.long), 2, generator)
    partners, fallback = draw_partners(torch.tensor([3]), 1, generator)
    assert partners.tolist() == [[0]] and not fallback.any()


# --------------------------------------------------------------------------- mixing


def test_sign_mask_reference_values_and_balance():
    mask = draw_sign_mask(2, (2, 3), seeded(0), "cpu", torch.float64)
    expected = [[[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0]], [[-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]
    assert mask.dtype == torch.float64 and mask.tolist() == expected
    many = draw_sign_mask(4, (5000,), seeded(1), "cpu", torch.float32).flatten()
    assert abs(many.mean().item()) < 0.03  # 20,000 fair signs: SE 0.007
    for lag in range(1, 10):  # bits of one byte and of neighbouring bytes are independent
        assert abs((many[lag:] * many[:-lag]).mean().item()) < 0.03


def test_sample_mixing_draws_everything_a_masker_needs(generator):
    k = torch.tensor([1, 2, 3, 3])
    draw = sample_mixing(torch.arange(4), k, 3, sign_shape=(2, 3, 3), generator=generator)
    assert draw.partners.shape == draw.weights.shape == (4, 3)
    assert draw.sign.shape == (4, 2, 3, 3)
    assert not draw.fallback.any()
    assert sample_mixing(torch.arange(4), 2, 3, generator=generator).sign is None


@pytest.mark.parametrize("mix", [apply_mixing, mix_as_matrix])
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda mix, x: mix(x[0], torch.zeros(4, 1).long(), torch.ones(4, 1)), r"x of shape \(B, C, H, W\)"),
        (lambda mix, x: mix(x, torch.zeros(4, 2).long(), torch.ones(4, 3)), "partners and weights of shape"),
        (lambda mix, x: mix(x, torch.zeros(4, 1).long(), torch.ones(4, 1), torch.ones(4, 3)), "sign of shape"),
    ],
)
def test_mixing_rejects_bad_shapes(mix, call, message):
    with pytest.raises(ValueError, match=message):
        call(mix, torch.zeros(4, 3, 2, 2))


@pytest.mark.parametrize("rescale", [False, True])
def test_the_matrix_mix_is_the_column_mix(rescale):
    """Every k in one batch, partners repeated by the fallback, zero weights past k: the same mixes up to rounding."""
    generator = seeded(3)
    x = torch.randn(6, 4, 6, 6, generator=generator)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    draw = sample_mixing(labels, every_k(6, 1), 6, sign_shape=(4, 6, 6), generator=generator)
    assert draw.fallback.any()  # two identities of three faces: mixes of 5 and 6 take the anchor's own
    expected = apply_mixing(x, draw.partners, draw.weights, draw.sign, rescale)
    torch.testing.assert_close(mix_as_matrix(x, draw.partners, draw.weights, draw.sign, rescale), expected)
    # A hand-made case: 0.75 of face 1 and 0.25 of face 2, rescaled by sqrt(0.625).
    one = mix_as_matrix(x, torch.tensor([[1, 2]]), torch.tensor([[0.75, 0.25]]), rescale=rescale)
    scale = 0.625**0.5 if rescale else 1.0
    torch.testing.assert_close(one[0], (0.75 * x[1] + 0.25 * x[2]) / scale)


def test_rescaled_mix_keeps_unit_variance_and_leaves_unmixed_samples_alone():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, 14, 14, generator=generator)
    partners = torch.stack([torch.arange(64), torch.arange(64).roll(1)], dim=1)
    weights = torch.tensor([[0.6, 0.4]]).expand(64, -1)
    plain, rescaled = apply_mixing(x, partners, weights), apply_mixing(x, partners, weights, rescale=True)
    assert plain.var().item() == pytest.approx(0.52, abs=0.02)
    assert rescaled.var().item() == pytest.approx(1.0, abs=0.04)
    torch.testing.assert_close(rescaled, plain / (0.52**0.5))
    one_hot = torch.tensor([[1.0, 0.0]]).expand(64, -1)
    torch.testing.assert_close(apply_mixing(x, partners, one_hot, rescale=True), x)


def test_draw_groups_uses_each_face_once_with_reference_values():
    from fmix.freq import draw_groups

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4])
    k = torch.tensor([2, 3, 2, 2, 2, 2, 2, 2, 2])
    groups = draw_groups(labels, k, 6, torch.Generator().manual_seed(0))
    assert groups.members[:, :2].tolist() == [[0, 8], [7, 2], [1, 3], [4, 6]]
    assert groups.size.tolist() == [2, 2, 2, 2] and groups.leftover.tolist() == [5] and not groups.fallback.any()
    used = torch.cat([groups.members[g, : groups.size[g]] for g in range(len(groups.size))] + [groups.leftover])
    assert sorted(used.tolist()) == list(range(9))  # every face once: in one group or left over
    big = draw_groups(torch.arange(300) % 50, torch.full((300,), 3), 6, torch.Generator().manual_seed(1))
    members = torch.cat([big.members[g, : big.size[g]] for g in range(len(big.size))])
    assert members.unique().numel() == members.numel() == 300 and big.size.tolist() == [3] * 100
    for g in range(len(big.size)):  # distinct identities within a group
        assert (torch.arange(300) % 50)[big.members[g, :3]].unique().numel() == 3


def test_no_group_is_smaller_than_the_policys_smallest_k():
    """A batch's last faces too few for a mix of k_min are left over, not released as a weaker mix."""
    from fmix.freq import draw_groups

    labels, k = torch.arange(14) % 7, torch.tensor([3, 4] * 7)
    loose = draw_groups(labels, k, 6, torch.Generator().manual_seed(1))
    strict = draw_groups(labels, k, 6, torch.Generator().manual_seed(1), k_min=3)
    assert loose.size.tolist() == [4, 4, 4, 2]  # the default (k_min 2) ends the batch with a mix of 2
    assert strict.size.tolist() == [4, 4, 4] and strict.leftover.numel() == 2
    used = torch.cat([strict.members[g, : strict.size[g]] for g in range(len(strict.size))] + [strict.leftover])
    assert sorted(used.tolist()) == list(range(14))  # every face once: in a group or left over
    # k = 1 (an un-mixed release) is taken as it is.
    alone = draw_groups(labels, torch.ones(14, dtype=torch.long), 6, torch.Generator().manual_seed(0), k_min=3)
    assert alone.size.tolist() == [1] * 14 and alone.leftover.numel() == 0


def test_draw_groups_falls_back_to_the_same_identity_and_checks_k():
    from fmix.freq import draw_groups

    groups = draw_groups(torch.tensor([0, 0, 0]), torch.tensor([2, 2, 2]), 2, torch.Generator().manual_seed(0))
    assert groups.size.tolist() == [2] and groups.fallback.tolist() == [True] and groups.leftover.numel() == 1
    with pytest.raises(ValueError, match=r"Expected k in \[1, 2\], got values in \[2, 3\]"):
        draw_groups(torch.tensor([0, 1]), torch.tensor([2, 3]), 2)
