import numpy as np
import pytest

from model.baselines import Popularity, SequentialRules, SessionKNN
from model.data import Case, views
from model.vocab import ItemVocab

TRAIN = [
    views(["a", "b", "c"]),
    views(["a", "b", "d"]),
    views(["a", "b", "c"]),
    views(["x", "y", "z"]),
    views(["x", "y"]),
    views(["p", "q", "r", "p"]),
]
VOCAB = ItemVocab.from_sequences(s.items for s in TRAIN)


def case(*prefix: str) -> Case:
    return Case(prefix, ("view",) * len(prefix), target="?")


def ranking(scores: np.ndarray) -> list[str]:
    return [VOCAB.item_ids[i] for i in np.argsort(-scores, kind="stable")]


def fitted(scorer):
    scorer.fit(TRAIN, VOCAB)
    return scorer


def test_popularity_ranks_items_by_training_interactions():
    scores = fitted(Popularity()).score([case("a"), case("zzz")])
    assert scores.shape == (2, len(VOCAB))
    assert scores.dtype == np.float32
    assert ranking(scores[0])[:3] == ["a", "b", "c"]  # 3, 3, 2 clicks; first-seen order among equals
    np.testing.assert_array_equal(scores[0], scores[1])


def test_sequential_rules_rank_learned_successors_first():
    best = ranking(fitted(SequentialRules(repeat_weight=0.0)).score([case("x")])[0])
    assert best[:2] == ["y", "z"]  # x y z, x y: y follows x twice, z once at distance 2


def test_session_knn_ranks_items_of_the_neighbour_sessions_first():
    best = ranking(fitted(SessionKNN(repeat_weight=0.0)).score([case("x")])[0])
    assert set(best[:2]) == {"x", "y"}  # both neighbours hold x and y
    assert best[2] == "z"  # only one does


def test_sequential_rules_prefer_the_more_frequent_successor():
    scores = fitted(SequentialRules(repeat_weight=0.0)).score([case("b")])[0]
    assert ranking(scores)[:2] == ["c", "d"]  # b -> c twice, b -> d once


def test_sequential_rules_weight_distant_successors_down():
    rules = fitted(SequentialRules(window=2, repeat_weight=0.0))
    scores = rules.score([case("a")])[0]
    index = VOCAB.get
    assert scores[index("b")] > scores[index("c")] > scores[index("d")] > scores[index("z")]


def test_sequential_rules_window_limits_how_far_rules_reach():
    scores = fitted(SequentialRules(window=1, repeat_weight=0.0)).score([case("a")])[0]
    assert scores[VOCAB.get("d")] == scores[VOCAB.get("z")]  # a -> d is two steps away: no rule


@pytest.mark.parametrize("scorer_type", [SequentialRules, SessionKNN])
def test_repeat_score_ranks_the_last_item_highest(scorer_type):
    scorer = fitted(scorer_type(repeat_weight=10.0, repeat_decay=0.5))
    best = ranking(scorer.score([case("p", "q", "r")])[0])
    assert best[:3] == ["r", "q", "p"]


def test_session_knn_votes_with_the_most_similar_sessions():
    knn = fitted(SessionKNN(neighbours=2, sample_size=None, repeat_weight=0.0))
    scores = knn.score([case("a", "b")])[0]
    # The two nearest sessions are a b c (twice, but only two neighbours vote): c beats d.
    assert scores[VOCAB.get("c")] > scores[VOCAB.get("d")]
    assert scores[VOCAB.get("c")] > scores[VOCAB.get("x")]


def test_session_knn_sample_keeps_only_the_most_recent_candidates():
    knn = fitted(SessionKNN(neighbours=1, sample_size=1, repeat_weight=0.0))
    scores = knn.score([case("b")])[0]
    # Sessions with b: #0 (a b c), #1 (a b d), #2 (a b c); the most recent is #2.
    assert ranking(scores)[0] in {"a", "b", "c"}
    assert scores[VOCAB.get("d")] < scores[VOCAB.get("c")]


@pytest.mark.parametrize("scorer_type", [SequentialRules, SessionKNN])
def test_unknown_items_fall_back_to_popularity(scorer_type):
    scores = fitted(scorer_type()).score([case("unknown-1", "unknown-2")])
    assert scores.dtype == np.float32
    assert ranking(scores[0])[:3] == ["a", "b", "c"]


@pytest.mark.parametrize("scorer_type", [Popularity, SequentialRules, SessionKNN])
def test_scoring_before_fit_is_a_clear_error(scorer_type):
    with pytest.raises(RuntimeError, match="fit"):
        scorer_type().score([case("a")])


def test_invalid_hyper_parameters_are_rejected():
    with pytest.raises(ValueError):
        SequentialRules(window=0)
    with pytest.raises(ValueError):
        SessionKNN(neighbours=10, sample_size=5)
    with pytest.raises(ValueError):
        SessionKNN(repeat_decay=0.0)
