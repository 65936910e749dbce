"""Why each recommended item and bundle is there: machine-readable reasons plus one human line.

JSON shape (what the stream puts into each output message, `reasons` of an item or a bundle):

    {"code": "personalized",                      # personalized | complement | repeat | popular | cold_start
     "drivers": [{"item_id": "85123A", "type": "view", "weight": 0.21}, ...],   # the user's own events
     "evidence": [{"item_id": "22423", "with_item": "85123A", "pair_baskets": 41, "lift": 6.3}, ...]}

- `drivers`: the user's recent events that drove the item, strongest first. The weight of an event is how
  much the item's score (session vector . item vector) drops when that one event is left out of the
  session (leave-one-out on the session vector, all variants of a micro-batch in one batched `encode`).
  Only events that raise the score are listed.
- `evidence`: co-purchase evidence for bundle members: baskets holding both items and their lift.
- `code`: `repeat` (the item is already in the session), `personalized` (the session model ranked it from the
  user's events), `complement` (it goes with an item the user is into; bundles), `popular` (no known event:
  best sellers), `cold_start` (an item with almost no training interactions, or a bundle member with no
  co-purchase yet, proposed because it is described like products that are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from model.sasrec.encode import EncodedSessions, encode_history, encode_sessions

if TYPE_CHECKING:
    from model.recommender import Recommender

ReasonCode = Literal["personalized", "complement", "repeat", "popular", "cold_start"]
MAX_DRIVERS = 3
# Most recent events attributed, one extra forward each; older ones barely move a SASRec session vector.
ATTRIBUTION_WINDOW = 10
COLD_INTERACTIONS = 5  # training interactions below which an item is explained as cold_start


class Driver(BaseModel):
    item_id: str
    type: str
    weight: float


class Evidence(BaseModel):
    item_id: str
    with_item: str
    pair_baskets: int = Field(ge=0)
    lift: float = Field(ge=0.0)


class Reasons(BaseModel):
    code: ReasonCode
    drivers: list[Driver] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)


class ExplainedItem(BaseModel):
    item_id: str
    score: float
    reasons: Reasons
    explanation: str


def describe(rec: Recommender, item_id: str) -> str:
    """Short human name of an item: its catalogue description in title case, else its id."""
    return rec.names.get(item_id) or item_id


def leave_one_out(
    rec: Recommender,
    histories: Sequence[Sequence[str]],
    types: Sequence[Sequence[str]] | None,
    items: Sequence[Sequence[str]],
) -> list[list[list[tuple[int, float]]]]:
    """Per history and recommended item: (position, score drop) of each attributed event, largest first.

    Positions index the history; only the last ATTRIBUTION_WINDOW events are attributed. One batched
    forward covers every history and all its leave-one-out variants; each history is mapped to model
    inputs once (a variant is its input minus one event), and identical inputs (a repeated event, or
    two users with one history) are encoded once.
    """
    inputs: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}  # distinct model input -> its row

    def row_of(indices: list[int], type_ids: list[int]) -> int:
        return inputs.setdefault((tuple(indices), tuple(type_ids)), len(inputs))

    plans: list[tuple[list[int], list[int]]] = []  # per history: attributed positions, rows (full first)
    for row, history in enumerate(histories):
        indices, type_ids = encode_history(history, types[row] if types is not None else None, rec.vocab)
        known = [p for p, item in enumerate(history) if item in rec.vocab]  # aligned with `indices`
        window = [j for j, p in enumerate(known) if p >= len(history) - ATTRIBUTION_WINDOW]
        rows = [row_of(indices, type_ids)]
        rows += [row_of(indices[:j] + indices[j + 1 :], type_ids[:j] + type_ids[j + 1 :]) for j in window]
        plans.append(([known[j] for j in window], rows))
    distinct = list(inputs)
    sessions = encode_sessions(rec.model, distinct, next(rec.model.parameters()).device)
    sessions.vectors[[not indices for indices, _ in distinct]] = 0.0  # as `Recommender.encode`
    drops: list[list[list[tuple[int, float]]]] = []
    for (positions, rows), row_items in zip(plans, items, strict=True):
        attributed = np.array(positions, dtype=np.int64)
        item_rows = [rec.vocab.get(item) for item in row_items]
        known_rows = np.array([r if r is not None else 0 for r in item_rows], dtype=np.int64)
        variants = EncodedSessions(sessions.vectors[rows], [sessions.repeats[r] for r in rows])
        # Full model scores (repeat bonus included), so dropping an item also drops its repeat bonus.
        scores = variants.scores(rec.item_vectors, known_rows)  # (1 + P, I)
        drop = scores[0] - scores[1:]  # (P, I): one sort for all items, largest drop first
        order = np.argsort(-drop, axis=0, kind="stable")
        sorted_positions = attributed[order].T.tolist()
        sorted_drops = np.take_along_axis(drop, order, axis=0).T.tolist()
        drops.append(
            [
                [] if item_row is None or not positions else list(zip(at, by, strict=True))
                for item_row, at, by in zip(item_rows, sorted_positions, sorted_drops, strict=True)
            ]
        )
    return drops


def drivers_from(
    history: Sequence[str], event_types: Sequence[str], drops: Sequence[tuple[int, float]]
) -> list[Driver]:
    """The strongest positive events, one per item id."""
    drivers: list[Driver] = []
    seen: set[str] = set()
    for position, weight in drops:
        if weight <= 0 or len(drivers) == MAX_DRIVERS:
            break
        if history[position] not in seen:
            seen.add(history[position])
            drivers.append(
                Driver(item_id=history[position], type=event_types[position], weight=round(weight, 4))
            )
    return drivers


def explain_items(
    rec: Recommender,
    histories: Sequence[Sequence[str]],
    types: Sequence[Sequence[str]] | None,
    recommendations: Sequence[Sequence[tuple[str, float]]],
) -> list[list[ExplainedItem]]:
    """Reasons and a one-line explanation for every recommended item of a micro-batch of users."""
    histories = [list(history) for history in histories]
    all_types = [list(t) for t in types] if types is not None else [["view"] * len(h) for h in histories]
    drops = leave_one_out(rec, histories, all_types, [[item for item, _ in recs] for recs in recommendations])
    answers = []
    for history, event_types, recs, item_drops in zip(
        histories, all_types, recommendations, drops, strict=True
    ):
        personal = rec.known(history)
        answer = []
        for (item, score), item_drop in zip(recs, item_drops, strict=True):
            drivers = drivers_from(history, event_types, item_drop) if personal else []
            code: ReasonCode
            if not personal:
                code = "popular"
            elif item in history:
                code = "repeat"
            elif _interactions(rec, item) < COLD_INTERACTIONS:
                code = "cold_start"
            else:
                code = "personalized"
            reasons = Reasons(code=code, drivers=drivers)
            answer.append(
                ExplainedItem(
                    item_id=item,
                    score=round(score, 6),
                    reasons=reasons,
                    explanation=item_line(rec, item, reasons),
                )
            )
        answers.append(answer)
    return answers


def _interactions(rec: Recommender, item: str) -> int:
    """Training interactions of an item (0 for one the model never saw)."""
    row = rec.vocab.get(item)
    return 0 if row is None else int(rec.popularity[row])


def item_line(rec: Recommender, item: str, reasons: Reasons) -> str:
    match reasons.code:
        case "popular":
            return f"{describe(rec, item)}: a best seller right now"
        case "repeat":
            return f"{describe(rec, item)}: you looked at it earlier in this session"
    because = " and ".join(describe(rec, d.item_id) for d in reasons.drivers[:2])
    if reasons.code == "cold_start":
        tail = f", close to {because}" if because else ""
        return f"{describe(rec, item)}: new in the shop{tail}"
    return f"{describe(rec, item)}: because of {because}" if because else describe(rec, item)
