"""What the answer seam (`Recommender.answer_batch`) takes and gives: a session to answer, and its
explained items and bundles."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from model.bundles import ExplainedBundle
from model.explain import ExplainedItem

Recommendation = tuple[str, float]


@dataclass(frozen=True)
class Query:
    """One session to answer: what the user did, what is in their cart, what must not be offered."""

    history: Sequence[str]  # item ids, oldest first
    types: Sequence[str] | None = None  # their event types (views when not given)
    cart: Sequence[str] = ()  # anchors bundles; never offered as an item
    exclude: Collection[str] = ()  # never offered at all (bought, or hidden by the caller)

    @cached_property
    def event_types(self) -> Sequence[str]:
        return self.types if self.types is not None else ("view",) * len(self.history)

    @cached_property
    def excluded_items(self) -> frozenset[str]:
        """What the items of an answer leave out: excluded, or already in the cart."""
        return frozenset(self.exclude) | frozenset(self.cart)


@dataclass(frozen=True)
class Answer:
    items: tuple[ExplainedItem, ...]
    bundles: tuple[ExplainedBundle, ...] = field(default=())
    cold_start: bool = False  # no known item in the session: the items are popularity's


def first_distinct(
    sources: Iterable[Sequence[Recommendation]], excluded: Collection[str], k: int
) -> list[Recommendation]:
    """The first k distinct, non-excluded items of ranked lists taken in order of preference."""
    picked: dict[str, float] = {}
    for ranked in sources:
        for item, score in ranked:
            if len(picked) == k:
                break
            if item not in excluded and item not in picked:
                picked[item] = score
    return list(picked.items())
