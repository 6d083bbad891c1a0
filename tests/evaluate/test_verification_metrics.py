import numpy as np
import pytest
import torch

from fmix.evaluate import (
    accuracy_at,
    best_threshold,
    candidate_thresholds,
    cosine_scores,
    paired_fold_difference,
    roc_auc,
    tar_at_far,
    verification_metrics,
)


def test_perfectly_separable_pairs():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.95, 0.3, 0.0])
    same = np.array([True, True, False, False, True, True, False, False])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    metrics = verification_metrics(scores, same, folds)
    assert metrics["accuracy_mean"] == 1.0 and metrics["accuracy_std"] == 0.0
    assert metrics["fold_accuracies"] == [1.0, 1.0]
    assert metrics["auc"] == 1.0 and metrics["best_accuracy"] == 1.0
    assert metrics["best_threshold"] == pytest.approx(0.5)  # midpoint of 0.3 and 0.7
    assert metrics["num_positive"] == 4 and metrics["num_negative"] == 4
    assert metrics["min_measurable_far"] == 0.25
    assert metrics["tar_at_far_1e-3"] is None and metrics["tar_at_far_1e-4"] is None  # 4 negatives: FAR >= 0.25 only


def test_auc_with_ties_hand_worked():
    # Positive > negative pairs: (0.8, 0.5) (0.8, 0.2) (0.5, 0.2) (0.5, 0.2); ties (0.5, 0.5) x2 count 1/2: 5/6.
    scores = np.array([0.8, 0.5, 0.5, 0.5, 0.2])
    same = np.array([True, True, True, False, False])
    assert roc_auc(scores, same) == pytest.approx(5 / 6)
    assert verification_metrics(scores, same, np.array([0, 0, 1, 1, 1]))["auc"] == pytest.approx(5 / 6)


def test_fold_threshold_is_chosen_on_the_other_folds():
    # Fold 0 alone is best split at 0.75, fold 1 alone at 0.35; each gets the other's threshold.
    scores = np.array([0.9, 0.6, 0.5, 0.2])
    same = np.array([True, False, True, False])
    folds = np.array([0, 0, 1, 1])
    metrics = verification_metrics(scores, same, folds)
    assert metrics["fold_thresholds"] == pytest.approx([0.35, 0.75])
    assert best_threshold(scores[:2], same[:2]) == (pytest.approx(0.75), 1.0)  # fold 0's own best
    assert best_threshold(scores[2:], same[2:]) == (pytest.approx(0.35), 1.0)  # fold 1's own best
    assert metrics["fold_accuracies"] == [0.5, 0.5]  # the other fold's threshold misclassifies one pair here
    assert metrics["accuracy_mean"] == 0.5 and metrics["accuracy_std"] == 0.0
    assert metrics["best_accuracy"] == 0.75 and metrics["best_threshold"] == pytest.approx(0.35)  # ties: smallest


def test_fold_accuracy_matches_a_brute_force_reference():
    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.5
    scores = np.round(rng.normal(same * 1.0, 0.8), 1)  # rounding makes ties
    folds = np.repeat(np.arange(10), 20)
    expected = []
    for fold in range(10):
        train, test = folds != fold, folds == fold
        # Every split "score > t" of the training scores, smallest t first. On the 0.1 grid of
        # the scores, t = a grid score splits the test fold like the midpoint above it.
        best_t, best_acc = None, -1.0
        for t in [scores[train].min() - 1.0] + sorted(set(scores[train])):
            acc = np.mean((scores[train] > t) == same[train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        expected.append(np.mean((scores[test] > best_t) == same[test]))
    metrics = verification_metrics(scores, same, folds)
    assert metrics["fold_accuracies"] == pytest.approx(expected)
    assert metrics["accuracy_mean"] == pytest.approx(np.mean(expected))
    assert metrics["accuracy_std"] == pytest.approx(np.std(expected))


def test_tar_at_far_reference_values():
    negatives = np.arange(10000) / 10000  # 0.0 .. 0.9999
    positives = np.array([0.99985, 0.9995, 0.5])
    scores, same = np.concatenate([positives, negatives]), np.r_[np.ones(3, bool), np.zeros(10000, bool)]
    # FAR 1e-4: 1 false accept allowed, threshold 0.9998; FAR 1e-3: 10 allowed, threshold 0.9989.
    assert tar_at_far(scores, same, 1e-4) == pytest.approx(1 / 3)
    assert tar_at_far(scores, same, 1e-3) == pytest.approx(2 / 3)
    metrics = verification_metrics(scores, same, np.arange(len(scores)) % 10)
    assert metrics["tar_at_far_1e-4"] == pytest.approx(1 / 3) and metrics["tar_at_far_1e-3"] == pytest.approx(2 / 3)
    assert metrics["min_measurable_far"] == 1e-4


def test_tar_at_far_with_1000_negatives_measures_only_1e_3():
    negatives = np.arange(1000) / 1000
    scores = np.concatenate([[0.9985, 0.999, 0.5, 1.0], negatives])
    same = np.r_[np.ones(4, bool), np.zeros(1000, bool)]
    metrics = verification_metrics(scores, same, np.arange(len(scores)) % 2)
    assert metrics["tar_at_far_1e-3"] == 0.75  # threshold 0.998: only the negative 0.999 is accepted
    assert metrics["tar_at_far_1e-4"] is None and metrics["min_measurable_far"] == 1e-3


def test_accuracy_at_reference_values():
    scores, same = np.array([0.1, 0.4, 0.6]), np.array([False, True, True])
    np.testing.assert_allclose(accuracy_at(scores, same, np.array([-1.0, 0.25, 0.5, 0.6])), [2 / 3, 1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(candidate_thresholds(scores), [-0.9, 0.25, 0.5, 0.6])


def test_torch_inputs_are_accepted():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2])
    same = torch.tensor([True, False, True, False])
    assert verification_metrics(scores, same, torch.tensor([0, 0, 1, 1]))["accuracy_mean"] == 1.0


def test_cosine_scores_reference_values():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[4.0, 3.0], [0.0, 2.0], [-2.0, -2.0]])
    torch.testing.assert_close(cosine_scores(a, b), torch.tensor([0.96, 0.0, -1.0]))
    assert cosine_scores(a.double(), b).dtype == torch.float64


def test_bad_inputs_raise_with_messages():
    scores, same, folds = np.array([0.9, 0.1]), np.array([True, False]), np.array([0, 1])
    with pytest.raises(ValueError, match="Expected scores, same and folds of one length, got 2, 2 and 3"):
        verification_metrics(scores, same, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"Expected at least one positive \(same identity\) pair, got none"):
        verification_metrics(scores, np.array([False, False]), folds)
    with pytest.raises(ValueError, match=r"Expected at least one negative \(different identities\) pair, got none"):
        verification_metrics(scores, np.array([True, True]), folds)
    with pytest.raises(ValueError, match="Expected at least 2 folds, got 1"):
        verification_metrics(scores, same, np.array([3, 3]))
    with pytest.raises(ValueError, match="Expected finite scores, got NaN or infinity"):
        verification_metrics(np.array([np.nan, 0.1]), same, folds)
    with pytest.raises(TypeError, match="Expected same with a bool dtype, got int64"):
        verification_metrics(scores, np.array([1, 0]), folds)
    with pytest.raises(ValueError, match=r"Expected scores of shape \(N,\), got \(2, 1\)"):
        verification_metrics(scores[:, None], same, folds)
    with pytest.raises(ValueError, match=r"Expected emb_a and emb_b of one shape \(N, E\), got \(2, 3\) and \(2, 4\)"):
        cosine_scores(torch.zeros(2, 3), torch.zeros(2, 4))


def test_paired_fold_difference_reference_values():
    result = paired_fold_difference([0.7, 0.8, 0.6, 0.9], [0.6, 0.75, 0.6, 0.8])
    # differences 0.1, 0.05, 0.0, 0.1: mean 0.0625, std (ddof=1) 0.0478714
    assert result["mean"] == pytest.approx(0.0625)
    assert result["std"] == pytest.approx(0.04787135538781691)
    assert result["sem"] == pytest.approx(0.04787135538781691 / 2)
    assert result["t"] == pytest.approx(0.0625 / (0.04787135538781691 / 2))
    assert result["wins"] == 3 and result["folds"] == 4
    assert paired_fold_difference([0.75, 0.5], [0.5, 0.25])["t"] == float("inf")  # exact in binary


def test_paired_fold_difference_rejects_unequal_folds():
    with pytest.raises(ValueError, match="Expected two equal-length lists of at least 2 fold accuracies, got 3 and 2"):
        paired_fold_difference([0.1, 0.2, 0.3], [0.1, 0.2])
