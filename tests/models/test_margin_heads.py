import math

import pytest
import torch
import torch.nn.functional as F

from fmix.models import MarginHead


def _head(kind="arcface", s=4.0, m=None) -> MarginHead:
    """A 2-class head on 2-d embeddings with the class centres on the axes."""
    head = MarginHead(2, 2, kind=kind, s=s, m=m)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # normalised: e_x and e_y
    return head


def _ce(target_logit: float, other_logit: float) -> float:
    return -target_logit + math.log(math.exp(target_logit) + math.exp(other_logit))


def test_arcface_mixed_loss_matches_hand_computation():
    s, m = 4.0, 0.5
    head = _head(s=s)
    # Embedding (3, 4): cosine 0.6 to class 0 and 0.8 to class 1.
    loss = head(torch.tensor([[3.0, 4.0]]), torch.tensor([[0, 1]]), torch.tensor([[0.3, 0.7]]))
    ce0 = _ce(s * math.cos(math.acos(0.6) + m), s * 0.8)
    ce1 = _ce(s * math.cos(math.acos(0.8) + m), s * 0.6)
    assert loss.dtype == torch.float32 and loss.shape == (1,)
    assert loss.item() == pytest.approx(0.3 * ce0 + 0.7 * ce1, abs=1e-5)
    assert loss.item() == pytest.approx(1.6014906, abs=1e-5)  # the same value, written out


def test_arcface_threshold_fallback_matches_hand_computation():
    s, m = 4.0, 0.5
    head = _head(s=s)
    # cos = -0.96 to class 0 is below cos(pi - m) = -0.878: target logit s * (cos - m * sin(pi - m)).
    loss = head(torch.tensor([[-24.0, 7.0]]), torch.tensor([0]))
    expected = _ce(s * (-0.96 - m * math.sin(math.pi - m)), s * 0.28)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_cosface_mixed_loss_matches_hand_computation():
    s, m = 4.0, 0.35
    head = _head("cosface", s=s)
    loss = head(torch.tensor([[3.0, 4.0]]), torch.tensor([[0, 1]]), torch.tensor([[0.3, 0.7]]))
    expected = 0.3 * _ce(s * (0.6 - m), s * 0.8) + 0.7 * _ce(s * (0.8 - m), s * 0.6)
    assert head.m == 0.35 and loss.item() == pytest.approx(expected, abs=1e-5)


def _reference_margin_ce(head: MarginHead, embeddings, labels):
    """The standard one-label ArcFace/CosFace cross-entropy (insightface formulation), float64."""
    cos = F.normalize(embeddings.double(), dim=1) @ F.normalize(head.weight.double(), dim=1).t()
    target = cos.gather(1, labels[:, None])
    if head.kind == "arcface":
        theta = torch.acos(target)
        phi = torch.where(
            theta + head.m < math.pi, torch.cos(theta + head.m), target - head.m * math.sin(math.pi - head.m)
        )
    else:
        phi = target - head.m
    logits = head.s * cos.scatter(1, labels[:, None], phi)
    return F.cross_entropy(logits, labels, reduction="none")


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_one_hot_weights_equal_the_standard_margin_loss(kind):
    torch.manual_seed(0)
    head = MarginHead(8, 7, kind=kind)
    embeddings, labels = torch.randn(5, 8), torch.tensor([0, 3, 6, 2, 3])
    others = torch.randint(0, 7, (5, 2))
    mixed = head(embeddings, torch.cat([labels[:, None], others], 1), torch.tensor([[1.0, 0.0, 0.0]]).expand(5, 3))
    plain = head(embeddings, labels)
    reference = _reference_margin_ce(head, embeddings, labels).float()
    torch.testing.assert_close(plain, reference, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mixed, plain, atol=1e-6, rtol=1e-6)


def test_repeated_label_equals_the_unmixed_loss():
    torch.manual_seed(1)
    head = MarginHead(8, 5)
    embeddings = torch.randn(3, 8)
    labels = torch.tensor([1, 4, 0])
    mixed = head(embeddings, labels[:, None].expand(3, 2), torch.tensor([[0.5, 0.5], [0.2, 0.8], [0.65, 0.35]]))
    torch.testing.assert_close(mixed, head(embeddings, labels))


def test_mixed_loss_is_the_weighted_sum_of_single_label_losses():
    torch.manual_seed(2)
    head = MarginHead(8, 6, s=30.0)
    embeddings = torch.randn(4, 8)
    labels = torch.tensor([[0, 5, 2], [1, 1, 3], [4, 0, 0], [2, 3, 5]])
    weights = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0], [0.34, 0.33, 0.33]])
    expected = sum(weights[:, i] * head(embeddings, labels[:, i]) for i in range(3))
    torch.testing.assert_close(head(embeddings, labels, weights), expected)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_embeddings_give_the_float32_loss(kind, dtype, tolerance):
    torch.manual_seed(3)
    head = MarginHead(16, 10, kind=kind)
    embeddings = torch.randn(6, 16)
    labels, weights = torch.randint(0, 10, (6, 3)), torch.softmax(torch.randn(6, 3), 1)
    low = head(embeddings.to(dtype), labels, weights)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    # Computed in float32: exactly the loss of the rounded embeddings, close to the unrounded one.
    torch.testing.assert_close(low, head(embeddings.to(dtype).float(), labels, weights), atol=0, rtol=0)
    torch.testing.assert_close(low, head(embeddings, labels, weights), atol=tolerance, rtol=0)


def test_autocast_region_still_computes_in_float32():
    torch.manual_seed(4)
    linear, head = torch.nn.Linear(8, 16), MarginHead(16, 10)
    x, labels = torch.randn(4, 8), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = linear(x)
        loss = head(embeddings, labels)
    assert embeddings.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, head(embeddings.float(), labels), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_embedding_on_a_class_centre_gives_finite_gradients(kind):
    head = MarginHead(4, 3, kind=kind, s=64.0)
    for dtype in (torch.float32, torch.float16):
        embeddings = head.weight.detach()[[0, 1]].clone().to(dtype).requires_grad_(True)  # cos = 1 exactly
        loss = head(embeddings, torch.tensor([[0, 2], [1, 1]]), torch.tensor([[0.6, 0.4], [1.0, 0.0]])).sum()
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()
        head.weight.grad = None


def test_logits_and_centres():
    head = _head(s=4.0)
    torch.testing.assert_close(
        head.logits(torch.tensor([[3.0, 4.0], [0.0, -2.0]])), torch.tensor([[2.4, 3.2], [0.0, -4.0]])
    )
    torch.testing.assert_close(head.cosines(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6, 0.8]]))
    centres = head.centres()
    torch.testing.assert_close(centres, torch.eye(2))
    assert not centres.requires_grad


def test_bad_arguments_raise_with_messages():
    head = MarginHead(4, 3)
    embeddings = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"Expected kind in \('arcface', 'cosface'\), got 'sphereface'"):
        MarginHead(4, 3, kind="sphereface")
    with pytest.raises(ValueError, match=r"Expected an ArcFace margin m in \[0, pi/2\), got 2.0"):
        MarginHead(4, 3, m=2.0)
    with pytest.raises(ValueError, match="Expected s > 0, got 0"):
        MarginHead(4, 3, s=0)
    with pytest.raises(ValueError, match=r"Expected embeddings of shape \(B, 4\), got \(2, 5\)"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"Expected embeddings of shape \(B, 4\), got \(2, 5\)"):
        head.cosines(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"Expected embeddings of shape \(B, 4\), got \(2, 5\)"):
        head.logits(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"Expected labels of shape \(2,\) when weights is None, got \(2, 2\)"):
        head(embeddings, torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(
        ValueError, match=r"Expected labels and weights of one shape \(2, K\), got \(2, 2\) and \(2, 3\)"
    ):
        head(embeddings, torch.tensor([[0, 1], [1, 2]]), torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="Expected weights on the simplex"):
        head(embeddings, torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.5, 0.6], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="Expected weights on the simplex"):
        head(embeddings, torch.tensor([[0, 1], [1, 2]]), torch.tensor([[1.5, -0.5], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"Expected labels in \[0, 2\], got \[0, 3\]"):
        head(embeddings, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="Expected labels with an integer dtype, got torch.float32"):
        head(embeddings, torch.tensor([0.0, 1.0]))
