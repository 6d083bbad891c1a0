import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from fmix.data.faces import load_face_set
from fmix.methods.adaptive_game import AdaptiveGame
from fmix.metrics.policy import mutual_information
from fmix.params import AdaptiveParams, MixupParams, TrainParams
from fmix.train.checkpoint import load_checkpoint, save_checkpoint
from fmix.train.data import batch_indices, epoch_order
from fmix.train.loop import train
from fmix.train.trainer import lr_factor
from fmix_testing import k_times_parity, parity_game

TINY = TrainParams(
    width=0.125,
    embedding_size=32,
    batch_size=8,
    epochs=2,
    checkpoint_every=2,
    threads=1,
    adaptive=AdaptiveParams(policy_warmup_epochs=0.5, n_fr=1, n_pi=1),
)


def _tiny(**overrides) -> TrainParams:
    """:data:`TINY` with ``overrides``; ``adaptive`` given as a mapping replaces only its keys."""
    game = overrides.pop("adaptive", {})
    return dataclasses.replace(TINY, adaptive=dataclasses.replace(TINY.adaptive, **game), **overrides)


def test_lr_factor_reference_values():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert [lr_factor(s, 100, 0, "step") for s in (0, 59, 60, 85)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_batches_are_seeded_full_and_disjoint_across_ranks():
    order = epoch_order(20, epoch=3, seed=1)
    assert torch.equal(order, epoch_order(20, 3, 1)) and not torch.equal(order, epoch_order(20, 4, 1))
    rank0, rank1 = batch_indices(order, 4, 0, 2), batch_indices(order, 4, 1, 2)
    assert len(rank0) == len(rank1) == 2 and all(len(b) == 4 for b in rank0 + rank1)
    assert not set(torch.cat(rank0).tolist()) & set(torch.cat(rank1).tolist())


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["backbone"]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def _untimed(rows: list[dict]) -> list[dict]:
    return [
        {key: value for key, value in row.items() if not key.startswith("seconds") and key != "policy_overhead"}
        for row in rows
    ]


def test_kill_and_resume_ends_like_an_uninterrupted_run(pipeline_sample, tmp_path):
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    full = train(TINY, *paths, tmp_path / "full", pipeline_sample["masker"], progress=False)
    assert train(TINY, *paths, tmp_path / "killed", pipeline_sample["masker"], max_steps=3, progress=False) == {
        "stopped_at_step": 3
    }
    resumed = train(TINY, *paths, tmp_path / "killed", pipeline_sample["masker"], resume=True, progress=False)
    assert resumed["val_accuracy"] == full["val_accuracy"]
    for name, tensor in _weights(tmp_path / "full" / "model.pt").items():
        torch.testing.assert_close(_weights(tmp_path / "killed" / "model.pt")[name], tensor, rtol=0, atol=0)
    log, reference = _log(tmp_path / "killed"), _log(tmp_path / "full")
    assert len(log) == 2 and _untimed(log) == _untimed(reference)
    game_epoch = log[1]
    assert (
        game_epoch["policy_steps"] > 0
        and game_epoch["nu"] is not None
        and sum(game_epoch["k_histogram"].values()) == pytest.approx(1.0)
    )


def test_resume_refuses_other_parameters(pipeline_sample, tmp_path):
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    train(TINY, *paths, tmp_path / "run", pipeline_sample["masker"], max_steps=2, progress=False)
    other = _tiny(lr=0.05)
    with pytest.raises(ValueError, match="was written with other train parameters"):
        train(other, *paths, tmp_path / "run", pipeline_sample["masker"], resume=True, progress=False)


@pytest.mark.parametrize("method", ["none", "freq", "ppfrfd", "mixup"])
def test_every_method_trains_through_the_same_loop(pipeline_sample, tmp_path, method):
    params = _tiny(method=method, epochs=1, mixup=MixupParams(k=3))
    summary = train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path,
        pipeline_sample["masker"],
        progress=False,
    )
    assert summary["method"] == method and 0.0 <= summary["val_accuracy"] <= 1.0
    assert summary["final_mean_k"] == (3.0 if method == "mixup" else None)
    record = load_checkpoint(tmp_path / "model.pt")
    assert record["input"] == {"none": [3, 112], "freq": [192, 28]}.get(
        method, [174, 28]
    )  # export.upsample 2: 28x28 maps


@pytest.mark.parametrize(("method", "sign_invariant"), [("mixup", True), ("ppfrfd", False)])
def test_a_network_trained_on_sign_masked_mixes_reads_magnitudes(pipeline_sample, tmp_path, method, sign_invariant):
    from fmix.models.artifact import load_trained_model
    from fmix.params import MixingParams

    params = _tiny(method=method, epochs=1, mixup=MixupParams(k=2))
    train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path,
        pipeline_sample["masker"],
        progress=False,
        mixing=MixingParams(sign_flip=True),
    )
    model, _ = load_trained_model(tmp_path / "model.pt")
    assert model.backbone.sign_invariant is sign_invariant  # ppfrfd never mixes, so it sees no sign mask


def test_masking_method_without_masker_is_refused(pipeline_sample, tmp_path):
    params = _tiny(method="ppfrfd")
    with pytest.raises(ValueError, match="method 'ppfrfd' needs the exported masker"):
        train(params, pipeline_sample["aligned"], pipeline_sample["splits"], tmp_path, None, progress=False)


def test_checkpoints_never_unpickle_objects(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is not a readable fmix checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    save_checkpoint({"w": torch.ones(2), "step": 3}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 3
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.slow
def test_two_process_ddp_on_cpu(pipeline_sample, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "train:\n  width: 0.125\n  embedding_size: 32\n  batch_size: 4\n  epochs: 1\n  threads: 1\n  adaptive: {policy_warmup_epochs: 0.0, n_fr: 1, n_pi: 1}\n"
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fmix",
        "train",
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(tmp_path / "out"),
        "--masker",
        str(pipeline_sample["masker"]),
        "--params",
        str(params),
        "--quiet",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trained adaptive" in result.stdout
    log = _log(tmp_path / "out")
    assert log[0]["policy_steps"] >= 1 and log[0]["fr_steps"] >= 1


@pytest.mark.parametrize("signal", ["none", "confidence"])
def test_export_with_the_trained_policy(pipeline_sample, tmp_path, signal):
    from fmix.masker.export import export_masker, masker_with_trained_policy
    from fmix.masker.onnx_masker import OnnxMasker
    from fmix.params import ExportParams

    params = _tiny(epochs=1, adaptive={"policy_warmup_epochs": 0.0, "policy_signal": signal})
    train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path / "run",
        pipeline_sample["masker"],
        progress=False,
    )
    summary = export_masker(
        None, None, tmp_path / "adaptive.onnx", ExportParams(), policy_model=tmp_path / "run" / "model.pt"
    )
    assert summary["kept_channels"] == 174
    onnx_masker = OnnxMasker(tmp_path / "adaptive.onnx")
    assert json.loads(onnx_masker.metadata["policy"]) == "strategy"
    torch_masker = masker_with_trained_policy(tmp_path / "run" / "model.pt")
    assert (torch_masker.policy.signal is not None) == (
        signal == "confidence"
    )  # the FR network travels with a confidence policy
    images, noise = torch.rand(16, 3, 112, 112) * 255, torch.linspace(0.01, 0.99, 16)
    masked, k = onnx_masker(images, noise)
    expected_masked, expected_k = torch_masker(images, noise)
    assert torch.equal(k, expected_k) and set(k.tolist()) <= {2, 3, 4, 5, 6}
    assert ((masked - expected_masked).abs().max() / expected_masked.abs().max()).item() < 1e-5
    # The exported policy is priced to the budget (4) on the private faces, after the last batch-norm recalibration.
    private = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    with torch.no_grad():
        masked = torch_masker.masked(private.float_images(torch.arange(len(private))))
        probs = torch_masker.policy(masked, torch_masker.progress.expand(len(masked)))
    assert (probs * torch_masker.k_values).sum(1).mean().item() == pytest.approx(
        params.adaptive.target_mean_k, abs=1e-4
    )
    with pytest.raises(ValueError, match="has no strategy network"):
        fixed = _tiny(method="ppfrfd", epochs=1)
        train(
            fixed,
            pipeline_sample["aligned"],
            pipeline_sample["splits"],
            tmp_path / "fixed",
            pipeline_sample["masker"],
            progress=False,
        )
        masker_with_trained_policy(tmp_path / "fixed" / "model.pt")


def test_mixing_methods_start_unmixed_during_the_mix_warmup(pipeline_sample, tmp_path):
    params = _tiny(method="mixup", mixup=MixupParams(k=3), epochs=2, mix_warmup_fraction=0.5)
    train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path,
        pipeline_sample["masker"],
        progress=False,
    )
    first, second = _log(tmp_path)
    assert "k_histogram" not in first  # un-mixed: no k drawn
    assert second["k_histogram"]["3"] == 1.0


def test_adaptive_logs_k_against_difficulty_with_the_per_sample_advantage(pipeline_sample, tmp_path):
    params = _tiny(method="adaptive", adaptive={"policy_reference": "unmixed"})
    summary = train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path,
        pipeline_sample["masker"],
        progress=False,
    )
    table = summary["final_k_by_difficulty"]
    assert len(table) == 4 and all(len(row) == 5 for row in table)
    assert sum(map(sum, table)) == _log(tmp_path)[-1]["policy_steps"] * TINY.batch_size
    assert summary["final_k_difficulty_mutual_information"] == pytest.approx(mutual_information(table))


def test_per_sample_advantage_subtracts_each_samples_unmixed_loss():
    labels = torch.tensor([0, 1, 2, 3])
    anchors = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def label_loss(x, constituents, weights):  # a stand-in FR loss: the weighted constituent labels
        return (constituents.float() * weights).sum(1)

    rewards = {}
    for reference in ("none", "unmixed"):
        torch.manual_seed(0)  # the same policy weights, k draws and mixes for both references
        game = AdaptiveGame(
            3,
            (2, 3, 4, 5, 6),
            AdaptiveParams(
                policy_reference=reference,
                policy_signal="none",
                policy_gradient="sampled",
                policy_objective="adversarial",
            ),
        )
        rewards[reference] = game.policy_step(anchors, labels, 0.5, torch.Generator().manual_seed(1), label_loss)[
            "reward"
        ]
    # Un-mixed, each sample's loss is its own label: mean 1.5 over the batch.
    assert rewards["none"] - rewards["unmixed"] == pytest.approx(1.5)


def _play(game: AdaptiveGame, anchors: Tensor, labels: Tensor, steps: int = 60) -> dict:
    """``steps`` policy steps against :func:`k_times_parity` from one seeded generator; the last step's statistics."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        step = game.policy_step(anchors, labels, 0.5, generator, k_times_parity)
    return step


def test_the_gradients_are_reduced_between_backward_and_the_step():
    """DDP averages the ranks' policy gradients there; averaged after the step, they would change nothing."""
    game, anchors, labels = parity_game()
    before = [p.detach().clone() for p in game.policy.parameters()]
    seen = []

    def zero_them():  # a reduction that leaves no gradient: the step must then move nothing
        seen.append(any(p.grad is not None and p.grad.abs().sum() > 0 for p in game.policy.parameters()))
        for p in game.policy.parameters():
            p.grad = torch.zeros_like(p) if p.grad is not None else None

    game.policy_step(anchors, labels, 0.5, torch.Generator().manual_seed(1), k_times_parity, zero_them)
    assert seen == [True] and all(torch.equal(a, b) for a, b in zip(before, game.policy.parameters()))
    game.policy_step(anchors, labels, 0.5, torch.Generator().manual_seed(1), k_times_parity)
    assert not all(torch.equal(a, b) for a, b in zip(before, game.policy.parameters()))


def test_expected_policy_gradient_learns_a_per_sample_k():
    game, anchors, labels = parity_game(policy_gradient="expected")
    step = _play(game, anchors, labels)
    greedy = game.policy.greedy(anchors, 0.5)
    assert greedy[0::2].tolist() == [6] * 8  # the loss grows with k for even anchors...
    assert greedy[1::2].tolist() == [2] * 8  # ...and falls with k for odd ones
    assert sum(map(sum, step["k_by_difficulty"])) == 16
    assert 2.0 < step["k"] < 6.0  # the policy's expected mean k


def test_a_cooperative_policy_gives_more_faces_where_they_cost_the_loss_least():
    game, anchors, labels = parity_game(policy_gradient="expected", policy_objective="cooperative")
    step = _play(game, anchors, labels)
    greedy = game.policy.greedy(anchors, 0.5)
    assert greedy[0::2].tolist() == [2] * 8  # the loss grows with k for even anchors...
    assert greedy[1::2].tolist() == [6] * 8  # ...and falls with k for odd ones
    # Minus (loss - un-mixed loss): -(2 - 1) for the even anchors at k=2, -(-6 + 1) for the odd ones at k=6.
    assert step["reward"] == pytest.approx(2.0, abs=0.25)


def test_the_shuffle_ablation_keeps_the_k_histogram_and_drops_the_per_sample_choice():
    chosen = {}
    for shuffle in (False, True):
        game, anchors, labels = parity_game(policy_gradient="expected", policy_shuffle=shuffle)
        _play(game, anchors, labels)
        chosen[shuffle] = game.choose_k(anchors, 0.5, torch.Generator().manual_seed(3)).tolist()
    assert chosen[False] == [6, 2] * 8  # the policy's per-sample choice
    assert chosen[True] == [6, 6, 6, 2, 2, 2, 6, 2, 6, 2, 2, 2, 6, 2, 6, 6]  # the same eight 6s and eight 2s, shuffled


def test_expected_policy_gradient_scores_every_k_with_the_anchor_reward():
    game, anchors, labels = parity_game(policy_gradient="expected", policy_reward="anchor", policy_reference="none")
    calls = []

    def own_label_count(x, constituents, weights):  # the anchor reward passes only the anchor's label
        calls.append(constituents.shape[1])
        return weights.sum(1).float()

    step = game.policy_step(anchors, labels, 0.5, torch.Generator().manual_seed(1), own_label_count)
    assert calls == [1] * 6  # the un-mixed reference, then one mix per k in (2, ..., 6)
    assert step["reward"] == pytest.approx(1.0)


def test_the_confidence_signal_carries_a_per_sample_k_the_faces_do_not_show():
    game, anchors, labels = parity_game(policy_gradient="expected", policy_signal="confidence")
    anchors = torch.zeros_like(anchors)  # the faces alike: only the signal tells the samples apart
    game.signal = lambda x: 1.0 - 2.0 * (labels % 2).float()
    _play(game, anchors, labels)
    greedy = game.policy.greedy(anchors, 0.5, game.signal(anchors))
    assert greedy[0::2].tolist() == [6] * 8 and greedy[1::2].tolist() == [2] * 8
    game.signal = None
    with pytest.raises(RuntimeError, match="no signal source was set"):
        game.choose_k(anchors, 0.5, torch.Generator())


def test_calibration_prices_the_learned_policy_to_the_budget():
    game, anchors, labels = parity_game(policy_gradient="expected", target_mean_k=3.0)
    _play(game, anchors, labels, steps=30)

    def expected_k():
        with torch.no_grad():
            return (game.policy.distribution(anchors, 0.5).probs * game.policy.k_table).sum(1)

    game.policy.eval()
    before = expected_k()
    game.policy.train()
    stats = game.calibrate(anchors.split(5), 0.5)
    assert game.policy.training  # the mode it was in
    game.policy.eval()
    after = expected_k()
    assert stats["expected_mean_k"] == pytest.approx(before.mean().item(), abs=1e-5)
    assert (
        after.mean().item() == pytest.approx(3.0, abs=1e-5)
        and stats["budget_price"] == game.policy.k_price.item() != 0.0
    )
    assert after[0::2].min() > after[1::2].max()  # the even anchors, whose loss grows with k, still get more faces
    free, *_ = parity_game(target_mean_k=None)
    assert free.calibrate(anchors.split(5), 0.5) == {} and free.policy.k_price.item() == 0.0
    with pytest.raises(
        ValueError,
        match=r"train.adaptive.target_mean_k=5.0 must lie strictly between the smallest and the largest k of the policy \(2, 3, 4\)",
    ):
        AdaptiveGame(3, (2, 3, 4), AdaptiveParams(target_mean_k=5.0))


def test_a_model_from_before_the_game_keys_loads_with_the_game_it_was_trained_with(pipeline_sample, tmp_path):
    from fmix.masker.export import masker_with_trained_policy
    from fmix.models.artifact import ModelRecord, load_trained_model

    params = _tiny(
        epochs=1, adaptive={"policy_warmup_epochs": 0.0, "policy_signal": "none", "policy_gradient": "sampled"}
    )
    train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path / "run",
        pipeline_sample["masker"],
        progress=False,
    )
    state = load_checkpoint(tmp_path / "run" / "model.pt")
    assert state["sign_invariant"] is True and state["params"]["adaptive"] == dataclasses.asdict(params.adaptive)
    # An older model.pt: the method settings flat in train (before train.<method>), without the game's later keys,
    # without sign_invariant (derived from the method's name and the mixing) nor the encoder's kind.
    flat = state["params"]
    flat.update(
        {
            key: value
            for key, value in flat.pop("adaptive").items()
            if key not in ("policy_signal", "policy_gradient", "policy_reward", "policy_objective")
        }
    )
    flat["k"] = flat.pop("mixup")["k"]
    flat.update(
        {f"dctdp_{key}": value for key, value in flat.pop("dctdp").items() if key in ("epsilon", "clip")}
    )  # the keys there were before train.dctdp
    flat.update({f"dpsgd_{key}": value for key, value in flat.pop("dpsgd").items()})
    del state["sign_invariant"], state["encoder"]["kind"], state["encoder"]["allow_dc"]
    del state["policy"]["k_price"]
    flat["budget_lr"] = 0.5  # the dual step of the mean-k price, retired since
    save_checkpoint(state, tmp_path / "old.pt")
    record = ModelRecord.load(tmp_path / "old.pt")
    game = record.params.adaptive
    assert (game.policy_signal, game.policy_gradient, game.policy_reward, game.policy_objective) == (
        "none",
        "sampled",
        "mixed",
        "adversarial",
    )
    assert (game.n_fr, game.policy_warmup_epochs, record.params.mixup.k) == (
        1,
        0.0,
        2,
    ) and record.sign_invariant is True
    assert record.encoder["kind"] == "frequency" and record.encoder["allow_dc"] is False
    old = masker_with_trained_policy(tmp_path / "old.pt").policy
    assert old.signal is None and old.network.k_price.item() == 0.0
    del state["mixing"]  # older still: the mixing lived in train.mix_*, and no sign mask existed
    flat["mix_cap"] = 0.6
    save_checkpoint(state, tmp_path / "oldest.pt")
    record = ModelRecord.load(tmp_path / "oldest.pt")
    assert record.mixing.cap == 0.6 and record.mixing.sign_flip is False and record.sign_invariant is False
    assert load_trained_model(tmp_path / "oldest.pt")[0].backbone.sign_invariant is False


def test_streamed_faces_train_as_the_in_memory_ones(pipeline_sample, tmp_path):
    """train.source folder (decoded per batch, in a loader process) gives the in-memory run's weights; a run
    killed while reading from memory resumes streamed (how faces are read is no training parameter)."""
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    params = _tiny(method="mixup", epochs=1)
    memory = train(params, *paths, tmp_path / "memory", pipeline_sample["masker"], progress=False)
    streamed = dataclasses.replace(params, source="folder", workers=1)
    assert train(params, *paths, tmp_path / "folder", pipeline_sample["masker"], max_steps=1, progress=False) == {
        "stopped_at_step": 1
    }
    folder = train(streamed, *paths, tmp_path / "folder", pipeline_sample["masker"], resume=True, progress=False)
    assert folder["val_accuracy"] == memory["val_accuracy"] and folder["training_faces"] == memory["training_faces"]
    reference = _weights(tmp_path / "memory" / "model.pt")
    for name, tensor in _weights(tmp_path / "folder" / "model.pt").items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    assert _untimed(_log(tmp_path / "folder")) == _untimed(_log(tmp_path / "memory"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "lmdb"}, "train.source must be 'memory' or 'folder', got 'lmdb'"),
        ({"workers": -1}, "train.workers must be >= 0, got -1"),
    ],
)
def test_how_faces_are_read_is_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**overrides)
