import math

import pytest
import torch

from fmix.models import (
    DualVariable,
    EmaBaseline,
    budget_price,
    effective_reward,
    expected_mean_k,
    policy_loss,
    reinforce_loss,
)


def test_reinforce_loss_reference_value_and_gradient():
    log_prob = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss = reinforce_loss(log_prob, torch.tensor([3.0, 1.0]), 1.0)
    assert loss.item() == pytest.approx(1.0)  # -mean([2 * -1, 0 * -2])
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-1.0, 0.0]))  # -(reward - baseline) / B


def test_reward_and_baseline_receive_no_gradient():
    log_prob = torch.tensor([-1.0, -2.0], requires_grad=True)
    reward = torch.tensor([3.0, 1.0], requires_grad=True)
    baseline = torch.tensor(0.5, requires_grad=True)
    reinforce_loss(log_prob, reward, baseline).backward()
    assert reward.grad is None and baseline.grad is None and log_prob.grad is not None


def test_policy_loss_reference_value_and_gradient():
    log_prob = torch.tensor([-1.0, -2.0], requires_grad=True)
    entropy = torch.tensor([1.0, 0.5], requires_grad=True)
    reward, k = torch.tensor([3.0, 1.0]), torch.tensor([2, 4])
    loss = policy_loss(log_prob, reward, 0.0, entropy, k, price=0.5, entropy_weight=0.1)
    # Effective reward r - nu * k = [2, -1]: -mean([2 * -1, -1 * -2]) - 0.1 * mean([1, 0.5]).
    assert loss.item() == pytest.approx(-0.075)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-1.0, 0.5]))
    torch.testing.assert_close(entropy.grad, torch.tensor([-0.05, -0.05]))
    torch.testing.assert_close(effective_reward(reward, k, 0.5), torch.tensor([2.0, -1.0]))


def test_policy_loss_without_penalty_is_reinforce_minus_entropy_bonus():
    log_prob, reward = torch.tensor([-0.5, -1.5, -1.0]), torch.tensor([2.0, 0.0, 1.0])
    entropy, k = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2, 6, 3])
    loss = policy_loss(log_prob, reward, 1.0, entropy, k, price=0.0, entropy_weight=0.2)
    assert loss.item() == pytest.approx(reinforce_loss(log_prob, reward, 1.0).item() - 0.2)


def test_ema_baseline_reference_values_and_state_round_trip():
    baseline = EmaBaseline(momentum=0.9)
    assert baseline.value == 0.0
    assert baseline.update(10.0) == 10.0  # the first batch sets the value
    assert baseline.update(torch.tensor([20.0, 20.0])) == pytest.approx(11.0)
    assert baseline.update(torch.tensor([0.0, 2.0])) == pytest.approx(10.0)
    restored = EmaBaseline(momentum=0.9)
    restored.load_state_dict(baseline.state_dict())
    assert restored.state_dict() == baseline.state_dict() == {"value": pytest.approx(10.0), "count": 3}
    assert restored.update(0.0) == baseline.update(0.0) == pytest.approx(9.0)


def test_dual_variable_rises_below_the_floor_and_decays_to_zero_above_it():
    dual = DualVariable(lr=0.5, floor=0.9)
    assert dual.value == 0.0
    assert dual.update(0.7) == pytest.approx(0.1)
    assert dual.update(0.7) == pytest.approx(0.2)
    assert dual.update(0.8) == pytest.approx(0.25)
    assert dual.update(0.9) == pytest.approx(0.25)  # at the floor: unchanged
    assert dual.update(1.0) == pytest.approx(0.2)
    assert dual.update(0.5) == pytest.approx(0.4)
    assert [dual.update(1.0) for _ in range(4)] == pytest.approx([0.35, 0.3, 0.25, 0.2])
    dual_high = DualVariable(lr=1.0, floor=0.5, initial=0.3)
    assert dual_high.update(1.0) == 0.0  # max(0, 0.3 - 0.5): never negative
    assert dual_high.update(1.0) == 0.0


def test_dual_variable_state_round_trip():
    dual = DualVariable(lr=0.5, floor=0.9)
    dual.update(0.7)
    dual.update(0.6)
    restored = DualVariable(lr=0.5, floor=0.9)
    restored.load_state_dict(dual.state_dict())
    assert restored.state_dict() == dual.state_dict() == {"value": pytest.approx(0.25), "count": 2}
    assert restored.update(0.8) == dual.update(0.8) == pytest.approx(0.3)


def test_expected_mean_k_reference_values():
    k = torch.tensor([2, 3])
    assert expected_mean_k(torch.zeros(1, 2), k) == pytest.approx(2.5)
    assert expected_mean_k(torch.tensor([[0.0, math.log(3)], [0.0, 0.0]]), k) == pytest.approx((2.75 + 2.5) / 2)


def test_budget_price_reference_values():
    k = torch.tensor([2, 3])
    assert budget_price(torch.zeros(1, 2), k, 2.5) == pytest.approx(0.0, abs=1e-6)
    # p(3) / p(2) = exp(-price) = 3 gives a mean k of 2.75
    assert budget_price(torch.zeros(1, 2), k, 2.75) == pytest.approx(-math.log(3), abs=1e-6)
    assert budget_price(torch.tensor([[0.0, math.log(3)]]), k, 2.5) == pytest.approx(math.log(3), abs=1e-6)


def test_budget_price_holds_the_target():
    logits = torch.randn(256, 5, generator=torch.Generator().manual_seed(0)) * 2
    k = torch.tensor([2, 3, 4, 5, 6])
    for target in (2.5, 4.0, 5.9):
        shifted = torch.softmax(logits - budget_price(logits, k, target) * k, 1)
        assert (shifted * k).sum(1).mean().item() == pytest.approx(target, abs=1e-5)


def test_budget_price_bad_arguments_raise_with_messages():
    k = torch.tensor([2, 3, 4])
    with pytest.raises(ValueError, match=r"Expected target strictly between 2 and 4, got 4.0"):
        budget_price(torch.zeros(2, 3), k, 4.0)
    with pytest.raises(
        ValueError,
        match=r"Expected logits of shape \(N >= 1, 3\) and k_values of shape \(n_k,\), got \(2, 2\) and \(3,\)",
    ):
        budget_price(torch.zeros(2, 2), k, 3.0)
    with pytest.raises(ValueError, match=r"got \(0, 3\)"):
        budget_price(torch.zeros(0, 3), k, 3.0)
    with pytest.raises(ValueError, match="Expected finite logits"):
        budget_price(torch.tensor([[0.0, float("nan"), 0.0]]), k, 3.0)


def test_bad_arguments_raise_with_messages():
    with pytest.raises(ValueError, match=r"Expected reward of shape \(2,\), got \(3,\)"):
        reinforce_loss(torch.zeros(2), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match=r"Expected baseline of shape \(\) or \(2,\), got \(3,\)"):
        reinforce_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="Expected a finite price, got inf"):
        policy_loss(
            torch.zeros(2),
            torch.zeros(2),
            0.0,
            torch.zeros(2),
            torch.tensor([2, 3]),
            price=float("inf"),
            entropy_weight=0.0,
        )
    with pytest.raises(ValueError, match=r"Expected momentum in \[0, 1\), got 1.0"):
        EmaBaseline(momentum=1.0)
    with pytest.raises(ValueError, match="Expected a non-empty rewards tensor"):
        EmaBaseline().update(torch.zeros(0))
    with pytest.raises(ValueError, match="Expected lr > 0, got 0"):
        DualVariable(lr=0, floor=0.9)
    with pytest.raises(ValueError, match=r"Expected floor in \[0, 1\], got 90"):
        DualVariable(lr=0.1, floor=90)
    with pytest.raises(ValueError, match=r"Expected val_accuracy in \[0, 1\], got 97.0"):
        DualVariable(lr=0.1, floor=0.9).update(97.0)
    with pytest.raises(
        ValueError, match=r"Expected a state for DualVariable with keys \['count', 'value'\], got \['nu'\]"
    ):
        DualVariable(lr=0.1, floor=0.9).load_state_dict({"nu": 1.0})
    with pytest.raises(ValueError, match="Expected a state for DualVariable with value >= 0, got -1.0"):
        DualVariable(lr=0.1, floor=0.9).load_state_dict({"value": -1.0, "count": 1})
    with pytest.raises(TypeError, match="Expected a state dict for EmaBaseline, got float"):
        EmaBaseline().load_state_dict(1.0)
