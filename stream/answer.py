"""From ranked candidates to the recommendation message: filtering, explanations, bundles, output JSON.

Everything here works on a whole micro-batch: `explain` and `bundles` make one batched call each into
the model side (`model.explain.explain_items`, `model.bundles.bundles_batch`), so attribution and bundle
assembly cost a few batched forwards per batch, not per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydantic_core import to_json

from model import Recommender
from model.bundles import ExplainedBundle, bundles_batch
from model.explain import ExplainedItem, explain_items
from stream import metrics
from stream.events import ClickEvent
from stream.state import UserState

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class Answer:
    items: tuple[ExplainedItem, ...]
    bundles: tuple[ExplainedBundle, ...] = field(default=())


def personalized(ranked: Ranked, state: UserState, k: int) -> Ranked:
    """Model candidates minus the items this user must not be offered now (bought, in the cart)."""
    excluded = state.excluded
    return [(item, score) for item, score in ranked if item not in excluded][:k]


def popular(ranked_sources: Iterable[Ranked], excluded: frozenset[str], k: int) -> Ranked:
    """The first k distinct, non-excluded items from popularity lists in order of preference."""
    picked: dict[str, float] = {}
    for ranked in ranked_sources:
        for item, score in ranked:
            if len(picked) == k:
                break
            if item not in excluded and item not in picked:
                picked[item] = score
    return list(picked.items())


def explain(
    recommender: Recommender, states: Sequence[UserState], rankings: Sequence[Ranked]
) -> list[list[ExplainedItem]]:
    """Reasons and a one-line explanation per item, one batched attribution for the whole batch.

    Users with no known item get the code `popular` (their rankings are popularity lists).
    """
    return explain_items(
        recommender,
        [state.history for state in states],
        [state.history_types for state in states],
        rankings,
    )


def has_known_item(recommender: Recommender, state: UserState) -> bool:
    """Whether a bundle can be anchored for this user: an item of the session or cart the model knows."""
    return recommender.known(state.history) or recommender.known(state.cart)


def bundles(
    recommender: Recommender, states: Sequence[UserState], n: int, size: int
) -> list[list[ExplainedBundle]]:
    """Up to n explained bundles of `size` items per user with a known item, none for the others.

    Purchased items never enter a bundle; cart items anchor bundles (and stay in them: the bundle is
    what completes the cart). An artifact without a complement model offers no bundles.
    """
    answers: list[list[ExplainedBundle]] = [[] for _ in states]
    eligible = [i for i, state in enumerate(states) if has_known_item(recommender, state)]
    if n == 0 or recommender.complements is None or not eligible:
        return answers
    assembled = bundles_batch(
        recommender,
        [states[i].history for i in eligible],
        [states[i].history_types for i in eligible],
        [states[i].cart for i in eligible],
        [states[i].purchased for i in eligible],
        n=n,
        size=size,
    )
    for i, user_bundles in zip(eligible, assembled, strict=True):
        answers[i] = user_bundles
    return answers


def compose_answers(
    recommender: Recommender,
    states: Sequence[UserState],
    rankings: Sequence[Ranked],
    bundle_count: int,
    bundle_size: int,
) -> list[Answer]:
    """The final answers of a batch: every ranking explained, and every user's bundles.

    Both are timed together as the `bundles` stage (attribution and assembly: what an answer costs on
    top of retrieval).
    """
    with metrics.observe_stage("bundles"):
        items = explain(recommender, states, rankings)
        offered = bundles(recommender, states, bundle_count, bundle_size)
    return [Answer(tuple(i), tuple(b)) for i, b in zip(items, offered, strict=True)]


def recommendation_message(
    event: ClickEvent, model_version: str, answer: Answer, generated_at: datetime, latency_ms: float
) -> bytes:
    """The output message (see stream/schemas/recommendation.schema.json), serialised in one pass by
    pydantic-core (the explained items and bundles are pydantic models; no intermediate dicts)."""
    return to_json(
        {
            "user_id": event.user_id,
            "event_id": event.event_id,
            "model_version": model_version,
            "generated_at": generated_at.isoformat(),
            "items": answer.items,
            "bundles": answer.bundles,
            "latency_ms": round(latency_ms, 3),
        }
    )
