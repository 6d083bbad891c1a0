"""What the adaptive method's policy step costs (issue 34): one forward for the un-mixed loss and the
confidence, a sub-batch (``train.adaptive.policy_batch``), and the replay of the FR step
(``train.adaptive.sampled_from: fr_step``); the old settings reproduce the old steps."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fmix.methods.adaptive import _probe
from fmix.methods.adaptive_game import _own_label_loss
from fmix.models import ConfidenceSignal
from fmix.params import AdaptiveParams, MixingParams, ParamsError, TrainParams, check_sections
from fmix_testing import k_times_parity, parity_game


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The policy's tiny steps: more threads only wait on each other (and on other jobs of the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FR_STEP = {"sampled_from": "fr_step", "policy_gradient": "sampled"}
# The game before issue 34 (still one setting away): every k scored on the whole batch, every 2 FR steps.
OLD_GAME = {"policy_gradient": "expected", "policy_batch": None, "n_fr": 2}


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sampled_from": "cache"}, r"train.adaptive.sampled_from must be 'fr_step' or 'own', got 'cache'"),
        ({"policy_batch": 1}, r"train.adaptive.policy_batch must be null or >= 2, got 1"),
        ({**OLD_GAME, "policy_batch": 0}, r"train.adaptive.policy_batch must be null or >= 2, got 0"),
        (
            {**FR_STEP, "policy_reward": "anchor"},
            r"train.adaptive.policy_reward: anchor needs sampled_from: own \(the FR step scored each mix with its "
            r"constituents' labels only\) or policy_gradient: expected",
        ),
        (
            {**FR_STEP, "policy_shuffle": True},
            r"train.adaptive.policy_shuffle needs sampled_from: own or policy_gradient: expected \(the FR step's "
            r"shuffled k are not the policy's draws\)",
        ),
    ],
)
def test_bad_cost_settings_are_refused_with_the_key(values, message):
    with pytest.raises(ParamsError, match=message):
        AdaptiveParams(**values)


def test_the_settings_that_replay_the_fr_step_and_those_that_do_not():
    """sampled_from is a sampled step's: the expected gradient scores every k itself, whatever it says."""
    assert AdaptiveParams().replays_fr_step and AdaptiveParams(**FR_STEP).replays_fr_step
    assert not AdaptiveParams(policy_gradient="sampled", sampled_from="own").replays_fr_step
    assert not AdaptiveParams(**OLD_GAME).replays_fr_step
    # What needs its own mixes is accepted where the step makes them.
    assert AdaptiveParams(**OLD_GAME, policy_reward="anchor", policy_shuffle=True).policy_shuffle
    assert (
        AdaptiveParams(policy_gradient="sampled", sampled_from="own", policy_reward="anchor").policy_reward == "anchor"
    )


def test_a_sub_batch_that_mixes_holds_the_largest_k():
    mixing = MixingParams(k_values=(2, 3, 4, 5, 6))
    message = (
        r"train.adaptive.policy_batch=4 must be null or at least the largest of mixing.k_values=\[2, 3, 4, 5, 6\]: "
        r"the policy step mixes each anchor with partners from its sub-batch"
    )
    for own_mixes in ({**OLD_GAME, "policy_batch": 4}, {"sampled_from": "own", "policy_batch": 4}):
        with pytest.raises(ParamsError, match=message):
            check_sections(TrainParams(method="adaptive", adaptive=AdaptiveParams(**own_mixes)), mixing)
    check_sections(TrainParams(method="adaptive", adaptive=AdaptiveParams(**{**OLD_GAME, "policy_batch": 6})), mixing)
    # Replaying the FR step mixes nothing of its own: any sub-batch of 2 or more.
    check_sections(TrainParams(method="adaptive", adaptive=AdaptiveParams(policy_batch=2, **FR_STEP)), mixing)


def test_the_default_game_replays_the_fr_step_on_16_anchors_every_fr_step():
    """The defaults measured by experiments/policy_cost.py; the previous ones stay one setting away (OLD_GAME)."""
    game = AdaptiveParams()
    assert (game.policy_gradient, game.sampled_from, game.policy_batch, game.n_fr) == ("sampled", "fr_step", 16, 1)
    old = AdaptiveParams(**OLD_GAME)
    assert (old.policy_gradient, old.policy_batch, old.n_fr, old.replays_fr_step) == ("expected", None, 2, False)


# ----------------------------------------------------------------------------- the game


def test_a_sub_batch_scores_only_its_anchors():
    game, anchors, labels = parity_game(policy_gradient="expected", policy_batch=8)
    rows = []

    def counted(x, constituents, weights):
        rows.append(x.shape[0])
        return k_times_parity(x, constituents, weights)

    step = game.policy_step(anchors, labels, 0.5, torch.Generator().manual_seed(1), counted)
    assert rows == [8] * 6  # the un-mixed reference, then one mix per k, each on the first 8 anchors
    assert sum(map(sum, step["k_by_difficulty"])) == 8


def test_a_sub_batch_still_learns_the_per_sample_k():
    game, anchors, labels = parity_game(policy_gradient="expected", policy_batch=8)
    generator = torch.Generator().manual_seed(1)
    for _ in range(60):
        order = torch.randperm(16, generator=generator)  # the trainer's batches come shuffled
        game.policy_step(anchors[order], labels[order], 0.5, generator, k_times_parity)
    greedy = game.policy.greedy(anchors, 0.5)
    assert greedy[0::2].tolist() == [6] * 8 and greedy[1::2].tolist() == [2] * 8


def test_a_probe_gives_the_step_of_two_forwards_bit_for_bit():
    """The old settings reproduce the old step: one forward's loss and confidence are the two forwards' values."""
    states = []
    for probed in (False, True):
        game, anchors, labels = parity_game(policy_gradient="expected", policy_signal="confidence")
        game.signal = lambda x: x.mean((1, 2, 3))
        calls = []

        def loss_fn(x, constituents, weights):
            calls.append(constituents.shape[1])
            return k_times_parity(x, constituents, weights)

        def probe(x, ls):
            return _own_label_loss(loss_fn, x, ls), x.mean((1, 2, 3))

        generator = torch.Generator().manual_seed(1)
        steps = [
            game.policy_step(anchors, labels, 0.5, generator, loss_fn, probe=probe if probed else None)
            for _ in range(3)
        ]
        states.append((steps, {k: v.clone() for k, v in game.policy.state_dict().items()}, generator.get_state()))
    (old_steps, old_state, old_rng), (new_steps, new_state, new_rng) = states
    assert new_steps == old_steps and torch.equal(new_rng, old_rng)
    assert all(torch.equal(old_state[key], new_state[key]) for key in old_state)


def test_a_replay_step_rewards_the_fr_steps_loss_minus_the_reference():
    game, anchors, labels = parity_game(**FR_STEP, policy_batch=None)
    k = torch.tensor([2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 2])
    mixed_loss = torch.arange(16, dtype=torch.float32)
    unmixed_loss = torch.full((16,), 0.5)
    step = game.replay_step(anchors, labels, k, mixed_loss, unmixed_loss, None, 0.5)
    assert step["reward"] == pytest.approx(7.5 - 0.5)  # mean of 0..15, minus the un-mixed loss
    assert step["k"] == pytest.approx(3.875)  # the FR step's k, not a draw of the policy's
    assert sum(map(sum, step["k_by_difficulty"])) == 16
    cooperative, *_ = parity_game(**FR_STEP, policy_batch=None, policy_objective="cooperative")
    assert cooperative.replay_step(anchors, labels, k, mixed_loss, unmixed_loss, None, 0.5)["reward"] == pytest.approx(
        -7.0
    )
    batch, *_ = parity_game(**FR_STEP, policy_batch=4)
    assert batch.replay_step(anchors, labels, k, mixed_loss, unmixed_loss, None, 0.5)["reward"] == pytest.approx(
        1.5 - 0.5
    )  # the first 4 anchors only


def test_replaying_the_fr_steps_draws_learns_the_per_sample_k():
    """REINFORCE on the k the FR step drew (from the policy) and the loss it saw finds the parity game's best k."""
    game, anchors, labels = parity_game(**FR_STEP, policy_batch=None)
    generator = torch.Generator().manual_seed(1)
    unmixed = torch.zeros(16)
    for _ in range(300):  # one draw per sample and step: more steps than the exact expectation needs
        k = game.choose_k(anchors, 0.5, generator)
        loss = k.float() * (1.0 - 2.0 * (labels % 2).float())  # what the FR step would have seen
        game.replay_step(anchors, labels, k, loss, unmixed, None, 0.5)
    greedy = game.policy.greedy(anchors, 0.5)
    assert greedy[0::2].tolist() == [6] * 8 and greedy[1::2].tolist() == [2] * 8


# ----------------------------------------------------------------------------- in a trainer


def _count_forwards(trainer) -> list[int]:
    """The batch size of every forward of the FR backbone from now on."""
    calls = []
    trainer.net.backbone.register_forward_hook(lambda _module, inputs, _output: calls.append(len(inputs[0])))
    return calls


def _first_batch(trainer):
    return next(iter(trainer.loader(0)))


def test_the_probe_is_the_confidence_signal_and_the_own_label_loss(make_trainer):
    trainer = make_trainer("adaptive")
    x, labels = trainer.fr_step(_first_batch(trainer), 0, 0)
    trainer.net.eval()
    loss, confidence = _probe(trainer.net, True, x, labels)
    torch.testing.assert_close(confidence, ConfidenceSignal(trainer.net.backbone, trainer.net.head)(x), rtol=0, atol=0)
    torch.testing.assert_close(loss, _own_label_loss(trainer.net, x, labels), rtol=0, atol=0)
    assert _probe(trainer.net, False, x, labels)[1] is None


def test_a_turn_of_the_old_game_runs_one_forward_less(make_trainer):
    """The un-mixed loss and the confidence share one forward: 1 + 5 k, not 2 + 5."""
    trainer = make_trainer("adaptive", adaptive=AdaptiveParams(**{**OLD_GAME, "policy_warmup_epochs": 0.0, "n_fr": 1}))
    x, labels = trainer.fr_step(_first_batch(trainer), 0, 0)
    calls = _count_forwards(trainer)
    (step,) = trainer.method.take_turn(trainer.context, x, labels)
    assert len(calls) == 6 and trainer.net.training
    assert sum(map(sum, step["k_by_difficulty"])) == 8


@pytest.mark.parametrize("signal, embedded", [("none", 4), ("confidence", 8)])
def test_replaying_the_fr_step_runs_no_forward_of_its_own(make_trainer, signal, embedded):
    """choose_k embeds the anchors the turn plays on (all of them when the policy reads their confidence)."""
    game = AdaptiveParams(policy_warmup_epochs=0.0, n_fr=1, n_pi=1, policy_batch=4, policy_signal=signal, **FR_STEP)
    trainer = make_trainer("adaptive", adaptive=game)
    calls = _count_forwards(trainer)
    x, labels = trainer.fr_step(_first_batch(trainer), 0, 0)
    assert calls == [embedded, 8]  # the anchors' embeddings (choose_k), the FR step's own forward
    assert trainer.method.tap.loss.shape == (8,) and trainer.method.drawn.k.shape == (8,)
    before = [p.detach().clone() for p in trainer.method.game.policy.parameters()]
    (step,) = trainer.method.take_turn(trainer.context, x, labels)
    assert calls == [embedded, 8]  # the turn reads what the FR step left
    assert sum(map(sum, step["k_by_difficulty"])) == 4  # policy_batch
    assert step["k"] == trainer.method.drawn.k[:4].float().mean().item()
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.method.game.policy.parameters()))
    with pytest.raises(
        RuntimeError,
        match=r"train.adaptive.sampled_from: fr_step replays the FR step just taken, but this turn's anchors are not "
        r"the ones the last FR step drew k for and scored",
    ):
        trainer.method.take_turn(trainer.context, x.clone(), labels)


def test_a_run_that_replays_the_fr_step_trains_and_logs_its_policy_steps(make_trainer, tmp_path, pipeline_sample):
    from fmix.train.loop import train

    params = dataclasses.replace(
        make_trainer("adaptive").params,
        epochs=2,
        adaptive=AdaptiveParams(policy_warmup_epochs=0.0, n_fr=1, n_pi=1, policy_batch=6, **FR_STEP),
    )
    summary = train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path / "run",
        pipeline_sample["masker"],
        progress=False,
    )
    assert summary["seconds_per_policy_step"] > 0 and summary["policy_overhead"] is not None
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [
        row["fr_steps"] * row["seconds_per_fr_step"] + row["policy_steps"] * row["seconds_per_policy_step"]
        for row in log
    ]
    assert summary["seconds_per_epoch"] == pytest.approx(sum(steps) / 2) and summary["seconds_per_epoch"] > 0
    assert summary["final_mean_k"] is not None and 2.0 <= summary["final_mean_k"] <= 6.0
