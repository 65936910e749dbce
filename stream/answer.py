"""From ranked candidates to the recommendation message: filtering, reasons, and the output JSON.

`compose_answer` is the one place where an answer's items get their reasons and where bundles are
attached, so richer explanations and bundle assembly plug in there without touching the worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from model import Recommender
from stream.events import ClickEvent
from stream.state import UserState

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    reasons: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Answer:
    items: tuple[ScoredItem, ...]
    bundles: tuple[dict[str, Any], ...] = field(default=())


def personalized(ranked: Ranked, state: UserState, k: int) -> tuple[ScoredItem, ...]:
    """Model candidates minus excluded items; `repeat` marks items the user already met this session."""
    seen = set(state.history)
    excluded = state.excluded
    return tuple(
        ScoredItem(item, score, ({"code": "repeat" if item in seen else "personalized"},))
        for item, score in ranked
        if item not in excluded
    )[:k]


def popular(ranked_sources: Iterable[Ranked], excluded: frozenset[str], k: int) -> tuple[ScoredItem, ...]:
    """The first k distinct, non-excluded items from popularity lists in order of preference."""
    picked: dict[str, float] = {}
    for ranked in ranked_sources:
        for item, score in ranked:
            if len(picked) == k:
                break
            if item not in excluded and item not in picked:
                picked[item] = score
    return tuple(ScoredItem(item, score, ({"code": "popular"},)) for item, score in picked.items())


def compose_answer(recommender: Recommender, state: UserState, items: tuple[ScoredItem, ...]) -> Answer:
    """The final answer for one event: the items with their reasons, and the bundles (none yet)."""
    return Answer(items=items)


def recommendation_message(
    event: ClickEvent, model_version: str, answer: Answer, generated_at: datetime, latency_ms: float
) -> bytes:
    """The output message (see stream/schemas/recommendation.schema.json)."""
    return json.dumps(
        {
            "user_id": event.user_id,
            "event_id": event.event_id,
            "model_version": model_version,
            "generated_at": generated_at.isoformat(),
            "items": [
                {"item_id": item.item_id, "score": round(item.score, 6), "reasons": list(item.reasons)}
                for item in answer.items
            ],
            "bundles": list(answer.bundles),
            "latency_ms": round(latency_ms, 3),
        }
    ).encode("utf-8")
