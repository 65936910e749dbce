"""Stream popularity: recent activity outweighs old activity, intent weights, and filtering."""

from __future__ import annotations

import pytest

from stream.popularity import DecayedPopularity


def test_counts_decay_with_the_half_life() -> None:
    popularity = DecayedPopularity(half_life_s=10.0)
    for _ in range(4):
        popularity.add("old", "view", now=0.0)
    popularity.add("new", "view", now=30.0)
    popularity.add("new", "view", now=30.0)
    top = dict(popularity.top(2, now=30.0))
    assert top["old"] == pytest.approx(4 / 8)  # three half-lives later
    assert top["new"] == pytest.approx(2.0)
    assert [item for item, _ in popularity.top(2, now=30.0)] == ["new", "old"]


def test_intent_weights_and_allowed_filter() -> None:
    popularity = DecayedPopularity(half_life_s=60.0)
    popularity.add("bought", "purchase", now=0.0)
    popularity.add("seen", "view", now=0.0)
    popularity.add("seen", "view", now=0.0)
    popularity.add("removed", "remove_from_cart", now=0.0)
    assert [item for item, _ in popularity.top(5, now=0.0)] == ["bought", "seen"]
    assert popularity.top(5, now=0.0, allowed={"seen"}) == [("seen", 2.0)]


def test_rescaling_keeps_scores_finite_and_drops_negligible_items() -> None:
    popularity = DecayedPopularity(half_life_s=1.0)
    popularity.add("a", "view", now=0.0)
    popularity.add("c", "view", now=80.0)
    popularity.add("b", "view", now=100.0)  # 2^100 growth forces a rescale
    popularity.add("b", "view", now=100.0)
    assert popularity.top(3, now=100.0) == [("b", pytest.approx(2.0)), ("c", pytest.approx(2.0**-20))]
    assert len(popularity) == 2  # "a" decayed below 1e-12 and was dropped
