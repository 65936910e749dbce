"""Why each recommended item and bundle is there: machine-readable reasons plus one human line.

JSON shape (what the stream puts into each output message, `reasons` of an item or a bundle):

    {"code": "personalized",                      # personalized | complement | repeat | popular | cold_start
     "drivers": [{"item_id": "85123A", "type": "view", "weight": 0.21}, ...],   # the user's own events
     "evidence": [{"item_id": "22423", "with_item": "85123A", "pair_baskets": 41, "lift": 6.3,
                   "signal": "co_purchase"}, ...]}

- `drivers`: the user's recent events that drove the item, strongest first. The weight of an event is how
  much the item's score (session vector . item vector) drops when that one event is left out of the
  session (leave-one-out on the session vector, all variants of a micro-batch in one batched forward).
  Only events that raise the score are listed.
- `evidence`: for each bundle member, baskets holding it and the anchor, their lift, and the `signal` that put
  it there (model.complement.model.SIGNAL_NAMES): co_purchase, same_customers (the anchor's buyers buy it on
  other invoices), similar_description, complement_model (the hand-set blend) or popularity.
- `code`: `repeat` (the item is already in the session), `personalized` (the session model ranked it from the
  user's events), `complement` (it goes with an item the user is into; bundles), `popular` (no known event:
  best sellers), `cold_start` (an item with almost no training interactions, or a bundle member that shares
  no basket with its anchor yet, proposed because it is described like products that do or because the
  anchor's buyers buy it on other invoices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from model.items import TrainedItems
from model.sasrec.encode import EncodedSessions, LeaveOneOut

ReasonCode = Literal["personalized", "complement", "repeat", "popular", "cold_start"]
MAX_DRIVERS = 3
# Most recent events attributed, one extra forward each; older ones barely move a SASRec session vector.
ATTRIBUTION_WINDOW = 10
COLD_INTERACTIONS = 5  # training interactions below which an item is explained as cold_start


# Plain slotted dataclasses (not frozen, not pydantic): an answer holds about a hundred of these, built
# from values the model computed, so they need neither validation nor the cost of frozen setattr; the
# published contract is stream/schemas/recommendation.schema.json.
@dataclass(slots=True)
class Driver:
    item_id: str
    type: str
    weight: float


@dataclass(slots=True)
class Evidence:
    item_id: str
    with_item: str
    pair_baskets: int
    lift: float
    signal: str


@dataclass(slots=True)
class Reasons:
    code: ReasonCode
    drivers: list[Driver] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)


@dataclass(slots=True)
class ExplainedItem:
    item_id: str
    score: float
    reasons: Reasons
    explanation: str


def describe(rec: TrainedItems, item_id: str) -> str:
    """Short human name of an item: its catalogue description in title case, else its id."""
    return rec.names.get(item_id) or item_id


@dataclass(frozen=True)
class Attribution:
    """A micro-batch of sessions encoded with their leave-one-out variants (`Recommender.attribute`).

    `sessions` (one row per history) is what retrieval searches with; `drops` then says, for any items,
    how much each recent event raised their score. Encoding both at once means a batch costs one
    forward for retrieval, item explanations and bundle explanations together.
    """

    variants: LeaveOneOut
    histories: Sequence[Sequence[str]]  # the item ids encoded, oldest first
    types: Sequence[Sequence[str]]  # their event types
    _drivers: dict[tuple[int, str], list[Driver]] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def sessions(self) -> EncodedSessions:
        return self.variants.sessions

    def drops(self, rec: TrainedItems, history: int, items: Sequence[str]) -> np.ndarray:
        """(P, I): how much each item's full score (repeat bonus included) falls when each attributed
        event of `history` is left out; 0 for items the model does not know."""
        rows, encoded = self.variants.rows[history], self.variants.encoded
        item_rows = [rec.vocab.get(item) for item in items]
        known = np.array([row is not None for row in item_rows], dtype=bool)
        columns = np.array([row if row is not None else 0 for row in item_rows], dtype=np.int64)
        scores = encoded.vectors[rows] @ rec.item_vectors[columns].T  # (1 + P, I)
        # Leaving an event out can only remove repeat bonuses, so the full input's repeats are all there is.
        session_items = encoded.repeats[rows[0]]
        for column, item_row in enumerate(item_rows):
            if item_row in session_items:
                scores[:, column] += [encoded.repeats[row].get(item_row, 0.0) for row in rows]
        return (scores[0] - scores[1:]) * known

    def drivers(self, rec: TrainedItems, history: int, items: Sequence[str]) -> list[list[Driver]]:
        """Each item's drivers among the events of history `history` (see `drivers_from`), computed once
        per (history, item): an answer's item explanations and its bundle explanations ask about the
        same items."""
        missing = [item for item in dict.fromkeys(items) if (history, item) not in self._drivers]
        if missing:
            found = drivers_from(
                self.histories[history],
                self.types[history],
                self.variants.positions[history],
                self.drops(rec, history, missing),
            )
            self._drivers.update(
                ((history, item), drivers) for item, drivers in zip(missing, found, strict=True)
            )
        return [self._drivers[(history, item)] for item in items]


def drivers_from(
    history: Sequence[str], event_types: Sequence[str], positions: Sequence[int], drops: np.ndarray
) -> list[list[Driver]]:
    """Per item (a column of `drops`, see `Attribution.drops`): its strongest positive events, one per
    item id, at most MAX_DRIVERS, strongest first (ties: the older event); weights rounded to 4 places."""
    if len(positions) == 0:
        return [[] for _ in range(drops.shape[1])]
    repeated = len(positions) - len({history[p] for p in positions})
    # Enough of each column's best rows to find MAX_DRIVERS distinct item ids among them.
    depth = min(len(positions), MAX_DRIVERS + repeated)
    order = np.argsort(-drops, axis=0, kind="stable")[:depth]
    weights = np.round(np.take_along_axis(drops, order, axis=0).astype(np.float64), 4).T.tolist()
    places = np.asarray(positions)[order].T.tolist()
    if not repeated:  # every attributed event is a different item: the best rows are the drivers
        return [
            [Driver(history[p], event_types[p], w) for w, p in zip(ws, ps, strict=True) if w > 0]
            for ws, ps in zip(weights, places, strict=True)
        ]
    answers = []
    for ws, ps in zip(weights, places, strict=True):
        drivers: list[Driver] = []
        named: set[str] = set()
        for weight, position in zip(ws, ps, strict=True):
            if weight <= 0 or len(drivers) == MAX_DRIVERS:
                break
            if history[position] not in named:
                named.add(history[position])
                drivers.append(Driver(history[position], event_types[position], weight))
        answers.append(drivers)
    return answers


def explain_items(
    rec: TrainedItems, attribution: Attribution, recommendations: Sequence[Sequence[tuple[str, float]]]
) -> list[list[ExplainedItem]]:
    """Reasons and a one-line explanation for every recommended item of a micro-batch of users, one
    list of recommendations per history of `attribution` (from `attribute`)."""
    answers = []
    for row, (history, recs) in enumerate(zip(attribution.histories, recommendations, strict=True)):
        personal = rec.known(history)
        items = [item for item, _ in recs]
        drivers = attribution.drivers(rec, row, items) if personal else [[] for _ in items]
        answer = []
        for (item, score), item_drivers in zip(recs, drivers, strict=True):
            code: ReasonCode
            if not personal:
                code = "popular"
            elif item in history:
                code = "repeat"
            elif _interactions(rec, item) < COLD_INTERACTIONS:
                code = "cold_start"
            else:
                code = "personalized"
            reasons = Reasons(code, item_drivers)
            answer.append(ExplainedItem(item, round(score, 6), reasons, item_line(rec, item, reasons)))
        answers.append(answer)
    return answers


def _interactions(rec: TrainedItems, item: str) -> int:
    """Training interactions of an item (0 for one the model never saw)."""
    row = rec.vocab.get(item)
    return 0 if row is None else int(rec.popularity[row])


def item_line(rec: TrainedItems, item: str, reasons: Reasons) -> str:
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
