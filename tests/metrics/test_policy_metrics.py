"""Statistics of a k policy: the k histogram, k against difficulty, their mutual information."""

import pytest
import torch

from fmix.metrics.policy import difficulty_table, k_histogram, mutual_information


def test_k_histogram_lists_every_k():
    assert k_histogram({2: 3, 4: 1}, (2, 3, 4)) == {"2": 0.75, "3": 0.0, "4": 0.25}


def test_difficulty_table_reference_values():
    difficulty = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4])
    k = torch.tensor([2, 6, 4, 2, 6, 2, 6, 3])
    # Quartiles by rank: {0.1, 0.2} {0.3, 0.4} {0.5, 0.7} {0.8, 0.9}.
    assert difficulty_table(difficulty, k, (2, 3, 4, 5, 6), 4) == [
        [2, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 1],
        [0, 0, 0, 0, 2],
    ]


def test_difficulty_table_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Expected difficulty and k of one shape"):
        difficulty_table(torch.zeros(3), torch.tensor([2, 3]), (2, 3), 2)
    with pytest.raises(ValueError, match="Expected bins >= 1"):
        difficulty_table(torch.zeros(2), torch.tensor([2, 3]), (2, 3), 0)


def test_mutual_information_reference_values():
    assert mutual_information([[5, 0], [0, 5]]) == pytest.approx(1.0)  # k fully set by the row
    assert mutual_information([[3, 3], [3, 3]]) == pytest.approx(0.0)  # independent
    assert mutual_information([[2, 1], [1, 2]]) == pytest.approx(1 - 0.9182958340544896)  # 1 - H(1/3)
    assert mutual_information([[0, 0], [0, 0]]) == 0.0
