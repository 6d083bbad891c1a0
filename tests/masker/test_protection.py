"""Mixing through :class:`fmix.masker.protection.Protection`, the one path training, releases and attacks use."""

import pytest
import torch

from fmix.freq import apply_mixing
from fmix.masker.protection import MixingConfig, Protection


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mix(x, labels, k, k_max, generator, sign_flip=False):
    """Plain weighted sums (no rescaling, no noise), as the DESIGN's MixUp writes them."""
    return Protection(None, MixingConfig(k_max, sign_flip=sign_flip, rescale=False)).protect_encoded(
        x, labels, k, generator
    )


def test_a_mix_is_the_weighted_sum_of_its_partners():
    x = torch.randn(8, 5, 3, 3, generator=seeded(0), dtype=torch.float64)
    labels, k = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.tensor([1, 2, 3, 4, 4, 3, 2, 1])
    batch = _mix(x, labels, k, 4, seeded(1))
    assert batch.x.shape == x.shape and torch.equal(batch.k, k)
    expected = torch.stack(
        [sum(w * x[p] for p, w in zip(partners, weights)) for partners, weights in zip(batch.partners, batch.weights)]
    )
    torch.testing.assert_close(batch.x, expected)
    assert torch.equal(batch.x[k == 1], x[k == 1])  # k = 1: the face itself
    assert torch.equal(batch.labels[:, 0], labels) and (batch.labels[k == 1][:, 1:] == -1).all()


def test_the_sign_mask_multiplies_each_mix_by_plus_or_minus_one():
    x = torch.randn(6, 4, 2, 2, generator=seeded(0))
    signed = _mix(x, torch.arange(6), torch.full((6,), 3), 3, seeded(5), sign_flip=True)
    plain = apply_mixing(x, signed.partners, signed.weights)
    assert set((signed.x / plain).round().unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(signed.x.abs(), plain.abs())


def test_mixing_is_reproducible_from_the_generator():
    x = torch.randn(6, 4, 2, 2, generator=seeded(0))
    labels, k = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([2, 3, 2, 3, 2, 3])
    first, again, other = (_mix(x, labels, k, 3, seeded(seed), sign_flip=True) for seed in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first.x, other.x)


def test_the_gradient_of_a_face_is_the_weight_it_received():
    x = torch.randn(4, 3, 2, 2, generator=seeded(0), requires_grad=True)
    batch = _mix(x, torch.arange(4), 2, 2, seeded(1))
    batch.x.sum().backward()
    received = torch.zeros(4).index_add(0, batch.partners.flatten(), batch.weights.flatten())
    torch.testing.assert_close(x.grad[:, 0, 0, 0], received)


def test_a_protection_without_mixing_refuses_to_mix():
    with pytest.raises(ValueError, match="this protection does not mix"):
        Protection(None, None).mix(torch.zeros(2, 1, 1, 1), torch.arange(2), 2, seeded(0))


@pytest.mark.cuda
def test_cuda_mixing_matches_cpu_with_a_cpu_generator():
    x = torch.randn(16, 8, 4, 4, generator=seeded(0))
    labels, k = torch.arange(16) % 5, torch.arange(1, 5).repeat(4)
    cpu = _mix(x, labels, k, 4, seeded(1), sign_flip=True)
    gpu = _mix(x.cuda(), labels.cuda(), k.cuda(), 4, seeded(1), sign_flip=True)
    assert gpu.x.device.type == "cuda" and torch.equal(gpu.partners.cpu(), cpu.partners)
    torch.testing.assert_close(gpu.x.cpu(), cpu.x)
