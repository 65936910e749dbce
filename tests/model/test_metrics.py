import math

import numpy as np
import pytest

from model.metrics import (
    UNKNOWN_TARGET,
    RankingAccumulator,
    boosted_target_ranks,
    self_information,
    target_ranks,
    top_k_items,
)


def test_ranks_count_strictly_higher_items_plus_every_tied_item():
    scores = np.array(
        [
            [0.9, 0.5, 0.5, 0.1],  # target 1 ties with item 2: pessimistic rank 3
            [0.2, 0.8, 0.4, 0.1],  # target 1 is best: rank 1
            [0.3, 0.3, 0.3, 0.3],  # all tied: the target is ranked last
        ],
        dtype=np.float32,
    )
    assert target_ranks(scores, np.array([1, 1, 2])).tolist() == [3, 1, 4]


def test_unknown_target_is_a_miss_even_when_k_exceeds_the_catalogue():
    accumulator = RankingAccumulator(np.ones(3), ks=(5,))
    accumulator.update(np.zeros((2, 3), dtype=np.float32), np.array([UNKNOWN_TARGET, 0]))
    metrics = accumulator.result()
    assert metrics["HR@5"] == pytest.approx(1 / 2)
    assert metrics["MRR@5"] == pytest.approx(1 / 3 / 2)  # the known target ties with all 3 items: rank 3


def test_target_index_outside_the_catalogue_is_an_error():
    with pytest.raises(ValueError, match="target indices"):
        target_ranks(np.zeros((1, 3)), np.array([3]))


def test_top_k_items_are_ordered_best_first():
    scores = np.array([[0.1, 0.7, 0.3, 0.9, 0.5]])
    assert top_k_items(scores, 3).tolist() == [[3, 1, 4]]


def test_self_information_is_minus_log2_of_the_interaction_share():
    assert self_information(np.array([2, 1, 1])).tolist() == [1.0, 2.0, 2.0]


def test_accumulator_matches_hand_computed_metrics_across_batches():
    # Item shares 4/8, 2/8, 1/8, 1/8 -> self-information 1, 2, 3, 3 bits.
    accumulator = RankingAccumulator(np.array([4, 2, 1, 1]), ks=(1, 2))
    # Case A: target 0 ranked 1; its top-2 is [0, 1].
    accumulator.update(np.array([[0.9, 0.5, 0.2, 0.1]]), np.array([0]))
    # Case B: target 2 ties with item 1 at 0.6 -> rank 3 (a miss at K=2); top-2 is [3, 1 or 2].
    # Case C: target 1 ranked 2; top-2 is [2, 1].
    accumulator.update(
        np.array([[0.1, 0.6, 0.6, 0.8], [0.0, 0.5, 0.7, 0.1]]),
        np.array([2, 1]),
    )
    metrics = accumulator.result()
    assert accumulator.n_cases == 3
    assert metrics["HR@1"] == pytest.approx(1 / 3)
    assert metrics["HR@2"] == pytest.approx(2 / 3)
    assert metrics["MRR@1"] == pytest.approx(1 / 3)
    assert metrics["MRR@2"] == pytest.approx((1 + 0.5) / 3)
    assert metrics["NDCG@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    # Top-1 lists: {0}, {3}, {2} -> 3 of 4 items; novelty (1 + 3 + 3) / 3.
    assert metrics["coverage@1"] == pytest.approx(3 / 4)
    assert metrics["novelty@1"] == pytest.approx(7 / 3)
    # Top-2 lists cover all four items whichever way case B's tie is broken.
    assert metrics["coverage@2"] == pytest.approx(1.0)


def test_accumulator_rejects_a_score_matrix_of_the_wrong_width():
    accumulator = RankingAccumulator(np.ones(4), ks=(1,))
    with pytest.raises(ValueError, match="shape"):
        accumulator.update(np.zeros((2, 3)), np.array([0, 1]))


def test_result_without_cases_is_an_error():
    with pytest.raises(ValueError, match="no cases"):
        RankingAccumulator(np.ones(4), ks=(1,)).result()


def test_boosted_ranks_equal_the_ranks_of_the_boosted_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(40, 25)).astype(np.float32)  # many ties
    targets = rng.integers(0, 25, size=40)
    targets[::7] = UNKNOWN_TARGET
    rows, columns = np.nonzero(rng.random((40, 25)) < 0.2)
    rows, columns = np.concatenate([rows, np.arange(0, 40, 3)]), np.concatenate([columns, targets[::3]])
    rows, columns = np.unique(np.stack([rows, columns]), axis=1)  # distinct pairs, targets boosted too
    rows, columns = rows[columns >= 0], columns[columns >= 0]
    boosts = rng.integers(0, 3, size=len(rows)).astype(np.float64)
    boosted = scores.copy()
    boosted[rows, columns] += boosts.astype(np.float32)
    expected = target_ranks(boosted, targets)
    assert np.array_equal(boosted_target_ranks(scores, rows, columns, boosts, targets), expected)
    assert not np.array_equal(target_ranks(scores, targets), expected)  # the boosts do move ranks
