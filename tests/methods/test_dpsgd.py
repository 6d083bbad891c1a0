"""DP-SGD: batch norm replaced through opacus, per-sample gradients of the head, epsilon at the configured delta."""

import pytest
import torch
from opacus.accountants import RDPAccountant

from fmix.methods import build_method
from fmix.models.artifact import load_trained_model
from fmix.models.frnet import build_net
from fmix.models.heads import MarginHead
from fmix.params import DpsgdParams, MixingParams, TrainParams
from fmix.train.loop import train

TINY = TrainParams(
    method="dpsgd",
    width=0.125,
    embedding_size=32,
    batch_size=8,
    epochs=2,
    threads=1,
    dpsgd=DpsgdParams(noise_multiplier=1.1, delta=1e-4),
)


def test_the_head_grad_sampler_gives_each_samples_own_gradient():
    from fmix.methods.dpsgd import margin_head_grad_sample

    torch.manual_seed(0)
    head = MarginHead(8, 5, "arcface", 16.0)
    embeddings, labels = torch.randn(4, 8), torch.tensor([[0, 3], [1, 1], [4, 2], [2, 0]])
    weights = torch.tensor([[0.6, 0.4], [1.0, 0.0], [0.5, 0.5], [0.3, 0.7]])
    backprops = torch.tensor([0.25, -1.0, 2.0, 0.5])
    grads = margin_head_grad_sample(head, [embeddings, labels, weights], backprops)[head.weight]
    for b in range(4):
        head.zero_grad()
        (backprops[b] * head(embeddings[b : b + 1], labels[b : b + 1], weights[b : b + 1])[0]).backward()
        torch.testing.assert_close(grads[b], head.weight.grad, rtol=1e-5, atol=1e-7)


def test_batch_norm_is_replaced_and_distributed_training_refused():
    method = build_method(TINY)
    net = method.prepare_net(build_net(TrainParams(width=0.125, embedding_size=32), 3, 112, 4))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    with pytest.raises(ValueError, match="method 'dpsgd' trains in one process"):
        method.check(MixingParams(), world=2)


def test_dpsgd_trains_and_reports_epsilon_at_the_configured_delta(pipeline_sample, tmp_path):
    summary = train(
        TINY, pipeline_sample["aligned"], pipeline_sample["splits"], tmp_path, pipeline_sample["masker"], progress=False
    )
    privacy = summary["privacy"]
    # 16 training faces in batches of 8: sampling rate 1/2, 2 steps per epoch, 2 epochs.
    assert (privacy["sample_rate"], privacy["steps"], privacy["delta"], privacy["noise_multiplier"]) == (
        0.5,
        4,
        1e-4,
        1.1,
    )
    reference = RDPAccountant()
    reference.history = [(1.1, 0.5, 4)]
    assert summary["epsilon"] == privacy["epsilon"] == pytest.approx(reference.get_epsilon(1e-4))
    assert privacy["epsilon"] == pytest.approx(5.566, abs=0.001)  # fixed reference (opacus 1.6.0 RDP)
    model, record = load_trained_model(tmp_path / "model.pt")
    assert record.net_fix == "opacus" and record.privacy == privacy and not summary["bn_recalibrated"]
    embeddings = model.embed(torch.rand(2, 3, 112, 112) * 255)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_a_resumed_dpsgd_run_keeps_its_privacy_ledger(pipeline_sample, tmp_path):
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    assert train(TINY, *paths, tmp_path, pipeline_sample["masker"], max_steps=3, progress=False) == {
        "stopped_at_step": 3
    }
    resumed = train(TINY, *paths, tmp_path, pipeline_sample["masker"], resume=True, progress=False)
    assert resumed["privacy"]["steps"] == 4
