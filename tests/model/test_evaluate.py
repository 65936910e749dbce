import json
from collections.abc import Sequence

import numpy as np
import pytest
from rich.console import Console

from model.baselines import Popularity, SequentialRules, SessionKNN
from model.data import Case, Session, views
from model.evaluate import Prefitted, evaluate, format_table, results_to_json
from model.vocab import ItemVocab

TRAIN = [views(["a", "b", "c"]), views(["a", "b", "c"]), views(["d", "e"]), views(["c", "d", "e"])]
VOCAB = ItemVocab.from_sequences(s.items for s in TRAIN)
CASES = [
    Case(("a",), ("view",), "b"),
    Case(("a", "b"), ("view", "view"), "c"),
    Case(("d",), ("view",), "e"),
    Case(("a",), ("view",), "never-seen"),
]


class Oracle:
    """Scores the true target highest: a reference whose metrics are known exactly."""

    name = "Oracle"

    def __init__(self, targets: dict[tuple[str, ...], str]) -> None:
        self.targets = targets
        self.fit_calls = 0

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None:
        self.fit_calls += 1

    def score(self, cases: Sequence[Case]) -> np.ndarray:
        scores = np.zeros((len(cases), len(VOCAB)), dtype=np.float32)
        for row, case in enumerate(cases):
            if (index := VOCAB.get(self.targets.get(case.prefix, ""))) is not None:
                scores[row, index] = 1.0
        return scores


def test_end_to_end_ranks_baselines_and_counts_unknown_targets_as_misses():
    scorers = [Popularity(), SequentialRules(repeat_weight=0.0), SessionKNN()]
    results = evaluate(scorers, TRAIN, CASES, VOCAB, ks=(1, 2), batch_size=2, progress=False)
    by_name = {result.name: result for result in results}
    assert list(by_name) == ["Popularity", "SequentialRules", "SessionKNN"]
    for result in results:
        assert result.n_cases == 4
        assert result.n_unknown_targets == 1
        assert result.fit_seconds is not None and result.fit_seconds >= 0
        assert result.fit_peak_rss_mib is not None and result.fit_peak_rss_mib > 0
    # Popularity order: c (3), then a, b, d, e (2 each, first-seen order): only "a b -> c" is a top-1 hit.
    assert by_name["Popularity"].metrics["HR@1"] == pytest.approx(1 / 4)
    # Without repeats the rules a -> b, b -> c, d -> e hit three cases; the unknown target is the fourth.
    assert by_name["SequentialRules"].metrics["HR@2"] == pytest.approx(3 / 4)


def test_oracle_is_perfect_except_on_the_unknown_target():
    oracle = Oracle({("a",): "b", ("a", "b"): "c", ("d",): "e"})
    (result,) = evaluate([oracle], TRAIN, CASES, VOCAB, ks=(1,), progress=False)
    assert oracle.fit_calls == 1
    # The fourth case shares the prefix ("a",) with the first, so the oracle scores b, not its target.
    assert result.metrics["HR@1"] == pytest.approx(3 / 4)
    assert result.metrics["MRR@1"] == pytest.approx(3 / 4)
    assert result.metrics["coverage@1"] == pytest.approx(3 / 5)


def test_what_the_user_bought_is_ranked_by_no_method_but_what_they_viewed_is():
    class CFirst(Oracle):  # c, then a, then the rest, for every case
        def score(self, cases: Sequence[Case]) -> np.ndarray:
            scores = np.zeros((len(cases), len(VOCAB)), dtype=np.float32)
            scores[:, VOCAB.encode(["c", "a"])] = [2.0, 1.0]
            return scores

    # The first user bought c, so their target a is first; the second only viewed c, so a is second.
    cases = [Case(("c", "d"), ("purchase", "view"), "a"), Case(("c",), ("view",), "a")]
    (result,) = evaluate([CFirst({})], TRAIN, cases, VOCAB, ks=(1, 2), progress=False)
    assert result.metrics["HR@1"] == pytest.approx(1 / 2)
    assert result.metrics["MRR@2"] == pytest.approx((1 + 1 / 2) / 2)


def test_prefitted_scorer_is_not_fitted_again_and_reports_the_given_cost():
    oracle = Oracle({})
    (result,) = evaluate(
        [Prefitted(oracle, fit_seconds=12.5, fit_peak_rss_mib=300.0)], TRAIN, CASES, VOCAB, progress=False
    )
    assert oracle.fit_calls == 0
    assert result.name == "Oracle"
    assert (result.fit_seconds, result.fit_peak_rss_mib) == (12.5, 300.0)


def test_a_score_matrix_of_the_wrong_shape_is_a_clear_error():
    class Narrow(Oracle):
        def score(self, cases: Sequence[Case]) -> np.ndarray:
            return np.zeros((len(cases), len(VOCAB) - 1), dtype=np.float32)

    with pytest.raises(ValueError, match=r"Oracle.score returned \(4, 4\)"):
        evaluate([Narrow({})], TRAIN, CASES, VOCAB, progress=False)


def test_table_and_json_carry_every_method():
    results = evaluate([Popularity()], TRAIN, CASES, VOCAB, progress=False)
    console = Console(record=True, width=200)
    console.print(format_table(results))
    text = console.export_text()
    assert "Popularity" in text and "HR@20" in text and "4 cases" in text
    summary = json.loads(json.dumps(results_to_json(results)))
    assert summary["methods"][0]["name"] == "Popularity"
    assert summary["methods"][0]["metrics"]["HR@20"] == pytest.approx(3 / 4)
