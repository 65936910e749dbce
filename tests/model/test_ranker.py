"""The learned complement ranker: its labels, no look-ahead, what it learns, and the signals it names."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from model.complement.evaluate import CoPurchaseCompleter
from model.complement.model import SIGNAL_NAMES, ComplementConfig, ComplementModel
from model.complement.ranker import (
    FEATURES,
    NO_EVIDENCE,
    RankerConfig,
    fit_complements,
    fit_ranked,
    training_set,
)

SMALL = RankerConfig(window=100, label_windows=6, min_history=300, trees=60, min_child_samples=5, recent=100)
GROUPS = 20


def discontinued_partner_world() -> list[tuple[str, ...]]:
    """a_i was bought with b_i for 900 baskets, then b_i left the range and a_i went with c_i.

    Over all baskets b_i is still a_i's most frequent partner, so co-purchase counts keep proposing it;
    every label window after the switch says c_i.
    """
    return [(f"a{t % GROUPS}", f"b{t % GROUPS}" if t < 900 else f"c{t % GROUPS}") for t in range(1200)]


def test_the_ranker_learns_what_later_baskets_say_where_counts_do_not() -> None:
    baskets = discontinued_partner_world()
    ranked = fit_ranked(baskets, config=SMALL)
    counts = CoPurchaseCompleter(baskets)
    for group in range(GROUPS):
        assert counts.complete([f"a{group}"], k=1)[0][0] == f"b{group}"
        assert ranked.complete([f"a{group}"], k=1)[0][0] == f"c{group}"


def test_labels_are_each_pairs_share_of_the_anchors_recall() -> None:
    # History: a with b, c and d, so all three are candidates; the only window then holds a+b and a+c+d.
    history = [("a", "b"), ("a", "c"), ("a", "d"), ("x", "y")] * 100
    window = [("a", "b"), ("a", "c", "d")] + [("x", "y")] * 98
    config = RankerConfig(window=100, label_windows=1, min_history=300, recent=100)
    features, labels, weights = training_set(history + window, None, None, ComplementConfig(), config)
    together = features[:, FEATURES.index("pair_baskets")] * 400  # back to counts: 400 history baskets
    a_rows = weights == 2  # a is in 2 window baskets, x and y in 98 each
    # b earns a's whole first basket (1 of 1 other product), c and d half of the second each: over 2 baskets.
    assert sorted(labels[a_rows].tolist()) == [0.25, 0.25, 0.5]
    assert together[a_rows].tolist() == [100.0] * 3  # signals from the history only, not the window


def test_no_signal_comes_from_the_window_it_labels() -> None:
    # r goes with p once before the window and 100 times inside it: its features must still say once.
    history = [("p", "q")] * 299 + [("p", "r")]
    window = [("p", "r")] * 100
    config = RankerConfig(window=100, label_windows=1, min_history=300, recent=100)
    features, labels, _ = training_set(history + window, None, None, ComplementConfig(), config)
    pair = features[:, FEATURES.index("pair_baskets")] * 300
    recent = features[:, FEATURES.index("recent_pair_baskets")] * 100
    r_rows = labels == 1.0  # p -> r and r -> p
    assert pair[r_rows].tolist() == [1.0, 1.0] and recent[r_rows].tolist() == [1.0, 1.0]


def test_every_stored_pair_names_the_signal_behind_it() -> None:
    ranked = fit_ranked(discontinued_partner_world(), config=SMALL)
    assert ranked.signals is not None and ranked.signals.nnz == ranked.scores.nnz
    assert ranked.signal("a3", "c3") == "co_purchase"
    assert {ranked.signal("a3", item) for item in ranked.vocab.item_ids} <= set(SIGNAL_NAMES)
    assert ranked.signal("a3", "unknown") == "popularity"
    assert list(NO_EVIDENCE) == list(SIGNAL_NAMES[:-1])
    assert all(name in FEATURES for family in NO_EVIDENCE.values() for name in family)


def test_the_learned_model_survives_a_round_trip(tmp_path) -> None:
    ranked = fit_ranked(discontinued_partner_world(), config=SMALL)
    ranked.save(tmp_path)
    loaded = ComplementModel.load(tmp_path)
    assert loaded.complete(["a1"], k=3) == ranked.complete(["a1"], k=3)
    assert loaded.signal("a1", "c1") == ranked.signal("a1", "c1")
    assert loaded.ranker == ranked.ranker and set(loaded.ranker["gain_share"]) == set(FEATURES)
    assert sum(loaded.ranker["gain_share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_too_few_baskets_fall_back_to_the_hand_set_model_and_say_so(caplog) -> None:
    baskets = discontinued_partner_world()[:350]
    with caplog.at_level(logging.WARNING):
        model = fit_complements(baskets, config=SMALL)
    assert model.ranker is None and model.signal("a1", "b1") == "complement_model"
    assert "too few for the complement ranker" in caplog.text
    assert np.isfinite(model.scores.data).all()


def test_the_signal_named_for_any_pair_is_read_from_the_stored_matrices() -> None:
    """Every pair either way round, against scipy's own indexing: the named signal where the ranker stored
    one, the hand-set blend for another stored pair, popularity for a pair stored neither way."""
    ranked = fit_ranked(discontinued_partner_world(), config=SMALL)
    assert ranked.signals is not None
    ranked.signals = ranked.signals.multiply(ranked.signals >= 3).tocsr()  # unname some stored pairs
    ranked.signals.sort_indices()
    names = ranked.vocab.item_ids
    found = {"complement_model": 0, "popularity": 0}
    for a in range(len(names)):
        for b in range(len(names)):
            codes = [int(ranked.signals[a, b]), int(ranked.signals[b, a])]
            stored = ranked.scores[a, b] > 0 or ranked.scores[b, a] > 0
            fallback = "complement_model" if stored else "popularity"
            expected = next((SIGNAL_NAMES[code - 1] for code in codes if code), fallback)
            assert ranked.signal(names[a], names[b]) == expected, (names[a], names[b])
            found[expected] = found.get(expected, 0) + 1
    assert all(found.values()), found  # every kind of answer was checked
