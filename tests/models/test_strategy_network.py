import math

import pytest
import torch

from fmix.models import ConfidenceSignal, MarginHead, StrategyNetwork, policy_loss, reinforce_loss


@pytest.fixture
def anchors() -> torch.Tensor:
    return torch.randn(64, 8, 14, 14, generator=torch.Generator().manual_seed(0))


def _mean_probability(policy: StrategyNetwork, x: torch.Tensor, k: int) -> float:
    with torch.no_grad():
        return policy.distribution(x, 0.3).probs[:, policy.k_values.index(k)].mean().item()


def test_initial_policy_is_uniform(anchors):
    policy = StrategyNetwork(8, hidden=8)
    logits = policy(anchors, 0.5)
    assert logits.shape == (64, 5)
    k, log_prob, entropy = policy.sample(anchors, 0.5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_prob, torch.full((64,), -math.log(5)))
    torch.testing.assert_close(entropy, torch.full((64,), math.log(5)))
    assert policy.greedy(anchors, 0.5).tolist() == [2] * 64  # ties go to the smallest k


def test_k_price_shifts_the_logits_and_older_policies_load_without_it(anchors):
    policy = StrategyNetwork(8, hidden=8)
    torch.nn.init.normal_(policy.mlp[-1].weight, generator=torch.Generator().manual_seed(0))
    before = policy(anchors, 0.5)
    policy.k_price.fill_(0.5)
    torch.testing.assert_close(policy(anchors, 0.5), before - 0.5 * torch.tensor([2.0, 3, 4, 5, 6]))
    older = {name: value for name, value in policy.state_dict().items() if name != "k_price"}
    restored = StrategyNetwork(8, hidden=8)
    restored.load_state_dict(older)  # a model.pt from before the budget calibration
    assert restored.k_price.item() == 0.0
    torch.testing.assert_close(restored(anchors, 0.5), before)


def test_sample_is_reproducible_and_in_k_values(anchors):
    policy = StrategyNetwork(8, k_values=(2, 4, 6), hidden=8)
    k1, log_prob, entropy = policy.sample(anchors, 0.2, generator=torch.Generator().manual_seed(7))
    k2, _, _ = policy.sample(anchors, 0.2, generator=torch.Generator().manual_seed(7))
    assert k1.dtype == torch.long and torch.equal(k1, k2)
    assert set(k1.tolist()) == {2, 4, 6}
    assert log_prob.requires_grad and entropy.requires_grad
    again, _ = policy.evaluate_actions(anchors, 0.2, k1)
    torch.testing.assert_close(again, log_prob)


def test_progress_per_sample_and_as_scalar_tensor(anchors):
    policy = StrategyNetwork(8, hidden=8)
    torch.nn.init.normal_(policy.mlp[-1].weight)  # make the output depend on the progress
    scalar = policy(anchors[:4], 0.25)
    torch.testing.assert_close(policy(anchors[:4], torch.tensor(0.25)), scalar)
    per_sample = policy(anchors[:4], torch.tensor([0.25, 0.25, 1.0, 1.0]))
    torch.testing.assert_close(per_sample[:2], scalar[:2])
    assert not torch.allclose(per_sample[2:], scalar[2:])


def test_reinforce_step_raises_the_probability_of_the_rewarded_action(anchors):
    torch.manual_seed(0)
    policy = StrategyNetwork(8, hidden=8)
    optimiser = torch.optim.SGD(policy.parameters(), lr=0.5)
    before = _mean_probability(policy, anchors, 4)
    k, log_prob, _ = policy.sample(anchors, 0.3, generator=torch.Generator().manual_seed(2))
    reward = (k == 4).float()
    assert 0 < reward.sum() < len(reward)
    reinforce_loss(log_prob, reward, reward.mean()).backward()
    optimiser.step()
    after = _mean_probability(policy, anchors, 4)
    assert before == pytest.approx(0.2) and after > before + 0.01


def test_lagrange_penalty_lowers_the_expected_k(anchors):
    torch.manual_seed(0)
    policy = StrategyNetwork(8, hidden=8)
    optimiser = torch.optim.SGD(policy.parameters(), lr=0.5)
    k_values = torch.tensor(policy.k_values, dtype=torch.float32)

    def expected_k() -> float:
        with torch.no_grad():
            return (policy.distribution(anchors, 0.3).probs @ k_values).mean().item()

    before = expected_k()
    k, log_prob, entropy = policy.sample(anchors, 0.3, generator=torch.Generator().manual_seed(3))
    nu = 1.0
    baseline = (-nu * k.float()).mean()  # the effective reward's mean: the FR reward is 0 here
    policy_loss(log_prob, torch.zeros(64), baseline, entropy, k, price=nu, entropy_weight=0.0).backward()
    optimiser.step()
    assert before == pytest.approx(4.0) and expected_k() < before - 0.05


def test_difficulty_head_learns_the_per_sample_signal_and_moves_the_policy(anchors):
    """The head regresses a per-sample difficulty (z-scored); the logits then differ between easy and hard anchors."""
    torch.manual_seed(0)
    policy = StrategyNetwork(8, hidden=8)
    difficulty = anchors[:, 0].mean(dim=(1, 2)) * 10 + 3  # any scale: only the ranking matters
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.02)
    first = policy.difficulty_loss(anchors, difficulty).item()
    for _ in range(150):
        optimizer.zero_grad()
        policy.difficulty_loss(anchors, difficulty).backward()
        optimizer.step()
    assert policy.difficulty_loss(anchors, difficulty).item() < 0.1 * first
    with torch.no_grad():
        predicted = policy.difficulty(policy.features(anchors)).squeeze(1)
    assert torch.corrcoef(torch.stack([predicted, difficulty]))[0, 1] > 0.95
    # The MLP reads the prediction: a trained last layer makes k depend on it.
    torch.nn.init.normal_(policy.mlp[-1].weight)
    with torch.no_grad():
        logits = policy(anchors, 0.5)
    easy, hard = difficulty.argsort()[:8], difficulty.argsort()[-8:]
    assert not torch.allclose(logits[easy].mean(0), logits[hard].mean(0), atol=1e-3)
    with pytest.raises(ValueError, match=r"Expected difficulty of shape \(64,\) for a batch of at least 2, got \(3,\)"):
        policy.difficulty_loss(anchors, torch.zeros(3))


def test_sample_with_a_generator_on_another_device_returns_on_the_input_device(anchors):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: a CPU generator drawing for CUDA inputs")
    policy = StrategyNetwork(8, hidden=8).cuda()
    k_gpu, log_prob, _ = policy.sample(anchors.cuda(), 0.0, generator=torch.Generator().manual_seed(5))
    k_cpu, _, _ = policy.cpu().sample(anchors, 0.0, generator=torch.Generator().manual_seed(5))
    assert k_gpu.is_cuda and log_prob.is_cuda and torch.equal(k_gpu.cpu(), k_cpu)


def test_cost_is_small_next_to_the_input():
    policy = StrategyNetwork(192)
    # 1x1 reduction to 32 channels, two 3x3 convolutions, the 32 -> 1 difficulty head and a 34 -> 32 -> 5 MLP.
    assert sum(p.numel() for p in policy.parameters()) == (192 * 32 + 32) + 2 * (32 * 32 * 9 + 32) + (32 + 1) + (
        34 * 32 + 32
    ) + (32 * 5 + 5)


def test_bad_arguments_raise_with_messages(anchors):
    policy = StrategyNetwork(8, hidden=8)
    with pytest.raises(ValueError, match=r"Expected x of shape \(B, 8, h, w\), got \(64, 8, 14\)"):
        policy(anchors[..., 0], 0.5)
    with pytest.raises(ValueError, match=r"Expected progress in \[0, 1\], got 1.5"):
        policy(anchors, 1.5)
    with pytest.raises(ValueError, match=r"Expected progress in \[0, 1\]"):
        policy(anchors[:2], torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match=r"Expected progress of shape \(\) or \(64,\), got \(3,\)"):
        policy(anchors, torch.zeros(3))
    with pytest.raises(TypeError, match="Expected progress to be a float or a tensor, got str"):
        policy(anchors, "0.5")
    with pytest.raises(ValueError, match=r"Expected every k in k_values=\(2, 3, 4, 5, 6\), got \[1, 2\]"):
        policy.evaluate_actions(anchors[:2], 0.5, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"Expected k_values distinct and increasing, got \(3, 2\)"):
        StrategyNetwork(8, k_values=(3, 2))
    with pytest.raises(ValueError, match="Expected every entry of k_values >= 1, got 0"):
        StrategyNetwork(8, k_values=(0, 2))
    with pytest.raises(ValueError, match="Expected signals 0 or 1, got 2"):
        StrategyNetwork(8, signals=2)
    with pytest.raises(
        ValueError, match=r"Expected a signal of shape \(64,\) exactly when the network has signals \(it has 0\)"
    ):
        policy(anchors, 0.5, torch.zeros(64))
    informed = StrategyNetwork(8, hidden=8, signals=1)
    with pytest.raises(ValueError, match=r"exactly when the network has signals \(it has 1\)"):
        informed(anchors, 0.5)
    with pytest.raises(ValueError, match=r"Expected signal of shape \(64,\), got \(64, 1\)"):
        informed(anchors, 0.5, torch.zeros(64, 1))


def test_confidence_signal_is_the_largest_cosine_to_a_class_centre():
    backbone, head = torch.nn.Flatten(), MarginHead(2, 2, "cosface")
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    backbone.train()
    masked = torch.tensor([[3.0, 4.0], [-1.0, 0.0], [0.0, -5.0]]).view(3, 2, 1, 1)
    confidence = ConfidenceSignal(backbone, head)(masked)
    # Unit embeddings (0.6, 0.8), (-1, 0), (0, -1) against the centres (1, 0) and (0, 1).
    torch.testing.assert_close(confidence, torch.tensor([0.8, 0.0, 0.0]))
    assert backbone.training and head.training  # modes put back
    assert not confidence.requires_grad


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: fast, enough here
def test_policy_exports_to_onnx(tmp_path, anchors):
    import onnxruntime

    class LogitsAndGreedy(torch.nn.Module):
        def __init__(self, policy: StrategyNetwork) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, x: torch.Tensor, progress: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.policy(x, progress), self.policy.greedy(x, progress)

    torch.manual_seed(0)
    policy = StrategyNetwork(8, hidden=8).eval()
    torch.nn.init.normal_(policy.mlp[-1].weight, std=10.0)
    x, progress = anchors[:6], torch.linspace(0, 1, 6)
    path = tmp_path / "policy.onnx"
    torch.onnx.export(LogitsAndGreedy(policy), (x, progress), path, dynamo=False, input_names=["x", "progress"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, k = session.run(None, {"x": x.numpy(), "progress": progress.numpy()})
    with torch.no_grad():
        expected = policy(x, progress)
    assert expected.std(0).min() > 0  # the logits depend on the sample
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)
    assert k.tolist() == policy.greedy(x, progress).tolist()
