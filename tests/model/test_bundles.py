"""Bundle assembly: constraints (budget, purchased items, near-duplicates, size, kinds) and determinism."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from model.answers import Query
from model.bundles import (
    POOL_CACHE_SIZE,
    BundleContext,
    _session_relevance,
    assemble,
    context_for,
    warm_up,
)
from model.complement.model import SIGNAL_NAMES, ComplementConfig, ComplementModel
from model.neardup import ProductKinds
from model.recommender import Recommender
from model.vocab import ItemVocab

CATALOG = pd.DataFrame(
    {
        "item_id": ["cup", "saucer", "pot", "cup-pink", "spoon", "cake", "tray"],
        "description": [
            "RED REGENCY TEACUP",
            "REGENCY SAUCER",
            "REGENCY TEAPOT",
            "PINK REGENCY TEACUP",
            "SILVER TEA SPOON",
            "VICTORIA SPONGE CAKE STAND",
            "WOODEN TRAY",
        ],
        "price": [3.0, 2.0, 12.0, 3.0, 1.0, 8.0, 5.0],
    }
)
BASKETS = [
    ("cup", "saucer", "pot", "cup-pink"),
    ("cup", "saucer", "spoon", "cup-pink"),
    ("cup", "pot", "cake"),
    ("cup", "cup-pink", "saucer"),
    ("cup", "spoon", "tray"),
    ("saucer", "pot", "spoon"),
    ("cake", "tray"),
]
PRICES = dict(zip(CATALOG["item_id"], CATALOG["price"], strict=True))


@pytest.fixture(scope="module")
def complements() -> ComplementModel:
    # The knobs the pinned scores below were computed with (the defaults are tuned on real baskets).
    pinned_knobs = ComplementConfig(recency_scale=1.0, prior_strength=5.0)
    return ComplementModel.fit(BASKETS, CATALOG, config=pinned_knobs)


@pytest.fixture(scope="module")
def kinds() -> ProductKinds:
    return ProductKinds.from_catalog(CATALOG)


def no_relevance(_: str) -> float:
    return 0.0


def test_bundle_has_anchor_size_and_no_near_duplicates(
    complements: ComplementModel, kinds: ProductKinds
) -> None:
    (bundle,) = assemble(["cup"], complements, kinds, no_relevance, PRICES, n=1, size=3)
    assert bundle.items[0] == "cup" and len(bundle.items) == 3 == len(set(bundle.items))
    assert "cup-pink" not in bundle.items  # the same teacup in pink is a substitute, however often co-bought
    assert not kinds.near_duplicate_pairs(bundle.items)
    assert len({kinds.kind(item) for item in bundle.items}) >= 2


def test_budget_and_purchased_items_are_respected(complements: ComplementModel, kinds: ProductKinds) -> None:
    bundles = assemble(
        ["cup", "saucer"],
        complements,
        kinds,
        no_relevance,
        PRICES,
        n=2,
        size=3,
        budget=7.0,
        exclude={"spoon"},
    )
    assert bundles
    for bundle in bundles:
        assert sum(PRICES[item] for item in bundle.items) <= 7.0
        assert "spoon" not in bundle.items


def test_purchased_anchor_is_context_not_member(complements: ComplementModel, kinds: ProductKinds) -> None:
    (bundle,) = assemble(["cup"], complements, kinds, no_relevance, PRICES, n=1, size=2, exclude={"cup"})
    assert "cup" not in bundle.items and len(bundle.items) == 2


def test_catalogue_constraint_and_sizes(complements: ComplementModel, kinds: ProductKinds) -> None:
    for size in (2, 3, 4):
        for bundle in assemble(["cup", "pot"], complements, kinds, no_relevance, PRICES, n=2, size=size):
            assert 2 <= len(bundle.items) <= size
    only = {"cup", "saucer"}
    (bundle,) = assemble(["cup"], complements, kinds, no_relevance, PRICES, n=1, size=3, catalogue=only)
    assert set(bundle.items) <= only
    with pytest.raises(ValueError, match="size"):
        assemble(["cup"], complements, kinds, no_relevance, PRICES, size=5)


def test_relevance_steers_the_choice(complements: ComplementModel, kinds: ProductKinds) -> None:
    plain = assemble(["cup"], complements, kinds, no_relevance, PRICES, n=1, size=2)[0]
    other = next(item for item in ("saucer", "pot", "spoon", "cake", "tray") if item not in plain.items)
    steered = assemble(["cup"], complements, kinds, lambda item: 10.0 * (item == other), PRICES, n=1, size=2)[
        0
    ]
    assert steered.items == ("cup", other)


def test_assembly_is_deterministic(complements: ComplementModel, kinds: ProductKinds) -> None:
    def run() -> list[tuple[str, ...]]:
        return [
            b.items for b in assemble(["pot", "cup", "cake"], complements, kinds, no_relevance, PRICES, n=3)
        ]

    assert run() == run()


def test_recommender_bundles_are_explained_and_constrained(artifact_root: Path) -> None:
    rec = Recommender.load(artifact_root)
    assert rec.complements is not None
    kinds = ProductKinds.from_catalog(rec.catalog)
    catalogue = set(rec.catalog["item_id"])
    history = [item for item, _ in rec.popular(4)]
    purchased = {history[0]}
    bundles = rec.bundles(history, cart=[history[1]], n=3, size=3, exclude=purchased)
    assert bundles and bundles == rec.bundles(history, cart=[history[1]], n=3, size=3, exclude=purchased)
    assert bundles[0].anchor == history[1]  # the cart comes first
    for bundle in bundles:
        assert 2 <= len(bundle.items) <= 3 and set(bundle.items) <= catalogue
        assert not purchased & set(bundle.items)
        assert not any(kinds.are_near_duplicates(a, b) for a, b in combinations(bundle.items, 2))
        assert bundle.reasons.code in {"complement", "cold_start"} and bundle.explanation
        assert {e.item_id for e in bundle.reasons.evidence} == set(bundle.items) - {bundle.anchor}
        assert all(e.pair_baskets >= 0 and e.lift >= 0 for e in bundle.reasons.evidence)
        assert all(e.signal in SIGNAL_NAMES for e in bundle.reasons.evidence)
    assert rec.bundles(["no-such-item"]) == []


def test_warming_up_fills_the_bundle_caches_and_changes_no_answer(artifact_root: Path) -> None:
    cold, warm = Recommender.load(artifact_root), Recommender.load(artifact_root)
    warm_up(warm)
    space = context_for(warm).space
    assert set(space.near._near) == set(space.near.item_ids)  # every item's near-duplicates, once
    popular = [item for item, _ in warm.popular(POOL_CACHE_SIZE)]
    assert list(space.pools)[-len(popular) :] == popular[::-1]  # most popular = most recently used
    for history in ([item for item, _ in cold.popular(3)], [cold.vocab.item_ids[-1]]):
        assert warm.bundles(history) == cold.bundles(history)


def test_a_bundle_line_says_how_its_anchor_relates_to_the_user(artifact_root: Path) -> None:
    rec = Recommender.load(artifact_root)
    history = [item for item, _ in rec.popular(4)]
    in_cart, looked_at = rec.bundles(history[:2], cart=[history[0]], n=2, size=2)
    assert (in_cart.anchor, looked_at.anchor) == (history[0], history[1])
    assert "in your cart" in in_cart.explanation and "you are looking at" in looked_at.explanation
    bought = rec.answer_batch(
        [Query(history[:2], ["view", "purchase"], exclude={history[1]})], k=0, bundles=1, bundle_size=2
    )[0].bundles[0]
    assert bought.anchor == history[1] and "you just bought" in bought.explanation
    assert history[1] not in bought.items  # a purchased anchor is context, not a member
    picked = rec.answer_batch([Query(history[:2], cart=history[:2])], k=0, bundles=3, bundle_size=2)[
        0
    ].bundles[-1]
    assert picked.anchor not in history[:2] and "picked for you" in picked.explanation


RELEVANCE = {"saucer": 0.5, "pot": -1.0, "spoon": 2.0, "tray": 0.25}


@pytest.mark.parametrize(
    ("anchors", "options", "expected"),
    [
        (
            ["cup", "pot", "cake", "saucer"],
            {"n": 3, "size": 3},
            [
                (("cup", "saucer", "spoon"), 0.47975965589284897),
                (("pot", "spoon", "saucer"), 0.3605072028934956),
                (("cake", "tray", "cup"), 0.13942238092422485),
            ],
        ),
        (
            ["cup", "tray"],
            {"n": 2, "size": 4, "budget": 14.0},
            [
                (("cup", "saucer", "spoon", "tray"), 0.3774093541420168),
                (("tray", "cake", "spoon"), 0.32520065680146215),
            ],
        ),
        (
            ["cup", "spoon"],
            {"n": 2, "size": 2, "exclude": {"cup"}},
            [(("saucer", "spoon"), 0.604759655892849)],
        ),
    ],
)
def test_assembly_is_pinned(
    complements: ComplementModel,
    kinds: ProductKinds,
    anchors: list[str],
    options: dict[str, object],
    expected: list[tuple[tuple[str, ...], float]],
) -> None:
    """Bundles and scores of the scalar, pair-by-pair implementation the vectorised one replaced."""
    bundles = assemble(anchors, complements, kinds, lambda item: RELEVANCE.get(item, 0.0), PRICES, **options)
    assert [bundle.items for bundle in bundles] == [items for items, _ in expected]
    assert [bundle.score for bundle in bundles] == pytest.approx([score for _, score in expected], abs=1e-12)


def test_a_pools_relevance_is_each_items_model_score_plus_its_repeat_bonus() -> None:
    """Pools are scored row by row (`of_rows`); each row must get what `of_item` gives its item: the session
    vector's score, plus the repeat bonus of an item the session holds, and 0 for one the model lacks."""
    session_items = ["a", "b", "c", "d"]
    rec = SimpleNamespace(
        vocab=ItemVocab(session_items),
        item_vectors=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]]),
    )
    vector = np.array([0.5, 2.0])
    repeats = {3: 0.25, 1: 1.5}  # rows of "d" and "b", in no particular order
    complement_items = ["c", "x", "a", "b", "d", "y"]  # the complement model's rows; "x", "y" unknown
    session_rows = np.array([rec.vocab.get(item) if item in rec.vocab else -1 for item in complement_items])
    relevance = _session_relevance(rec, BundleContext(None, session_rows), vector, repeats)
    rows = np.array([4, 1, 0, 3, 3, 5, 2])
    expected = [relevance.of_item(complement_items[row]) for row in rows]
    assert relevance.of_rows(rows).tolist() == pytest.approx(expected)
    assert expected == pytest.approx([-1.0 + 0.25, 0.0, 2.5, 2.0 + 1.5, 2.0 + 1.5, 0.0, 0.5])
    assert _session_relevance(rec, BundleContext(None, session_rows), vector, {}).of_rows(rows)[3] == 2.0
