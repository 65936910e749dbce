"""Bundles: a few sets of 2-4 products that go together, assembled per user, each explained.

Assembly is greedy and deterministic (ties broken by item id):

1. Anchors, in order: the cart (latest first), else the current item (the last event), then the session
   model's top candidates. Each bundle starts from a different anchor, so an answer offers a few ideas.
2. Candidates are the anchor's complements (`ComplementModel.complete`), minus excluded (purchased) items,
   items outside the catalogue, items over the remaining budget, and near-duplicates of anything already in
   the bundle (`ProductKinds`: same product in another colour or size).
3. Each next member maximises (1 - RELEVANCE_WEIGHT) * fit + RELEVANCE_WEIGHT * relevance, where fit is
   its mean complement score with every member so far (so members go with each other, not only with the
   anchor) and relevance is this user's session score for it, both scaled to [0, 1] over the candidates.
   The last slot must add a second kind of product if the bundle has only one so far.

A purchased anchor is context, not a member: its bundle is built from its complements only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import numpy as np
from pydantic import BaseModel

from model.complement.model import ComplementModel
from model.explain import Driver, Evidence, Reasons, describe, drivers_from, leave_one_out
from model.neardup import ProductKinds
from model.sasrec.encode import EncodedSessions

if TYPE_CHECKING:
    from model.recommender import Recommender

RELEVANCE_WEIGHT = 0.3
CANDIDATES_PER_ANCHOR = 60
MIN_SIZE, MAX_SIZE = 2, 4


class ExplainedBundle(BaseModel):
    items: list[str]
    anchor: str
    score: float
    reasons: Reasons
    explanation: str


@dataclass(frozen=True)
class Assembled:
    """A bundle before explanation: its members (anchor first when it is a member) and score."""

    anchor: str
    items: tuple[str, ...]
    score: float


def assemble(
    anchors: Sequence[str],
    complements: ComplementModel,
    kinds: ProductKinds,
    relevance: Callable[[str], float],
    prices: Mapping[str, float],
    n: int = 3,
    size: int = 3,
    budget: float | None = None,
    exclude: Collection[str] = (),
    catalogue: Collection[str] | None = None,
) -> list[Assembled]:
    """Up to n bundles of `size` items (2-4), one per anchor, from a ranked list of anchors (pure)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"bundle size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    excluded = set(exclude)
    bundles: list[Assembled] = []
    seen: set[frozenset[str]] = set()
    for anchor in dict.fromkeys(anchors):
        if len(bundles) == n:
            break
        bundle = _assemble_one(
            anchor, complements, kinds, relevance, prices, size, budget, excluded, catalogue
        )
        if bundle is not None and frozenset(bundle.items) not in seen:
            seen.add(frozenset(bundle.items))
            bundles.append(bundle)
    return bundles


def _assemble_one(
    anchor: str,
    complements: ComplementModel,
    kinds: ProductKinds,
    relevance: Callable[[str], float],
    prices: Mapping[str, float],
    size: int,
    budget: float | None,
    excluded: set[str],
    catalogue: Collection[str] | None,
) -> Assembled | None:
    def allowed(item: str) -> bool:
        return item not in excluded and (catalogue is None or item in catalogue)

    members = [anchor] if allowed(anchor) else []
    spent = sum(prices.get(item, 0.0) for item in members)
    if budget is not None and spent > budget:
        return None
    pool = [item for item, _ in complements.complete([anchor], k=CANDIDATES_PER_ANCHOR) if allowed(item)]
    pool = [item for item in pool if not kinds.are_near_duplicates(anchor, item)]
    relevance_scaled = _unit_scale({item: relevance(item) for item in pool})
    context = [anchor]
    pair_fit: list[float] = []
    while len(members) < size and pool:
        fits = {item: np.mean([_fit(complements, m, item) for m in context]) for item in pool}
        fit_scaled = _unit_scale(fits)
        single_kind = len({kinds.kind(m) for m in members}) <= 1 and len(members) == size - 1
        best, best_value = None, -np.inf
        for item in sorted(pool):
            if kinds.conflicts(item, members):
                continue
            if budget is not None and spent + prices.get(item, 0.0) > budget:
                continue
            if single_kind and members and kinds.kind(item) == kinds.kind(members[0]):
                continue
            value = (1 - RELEVANCE_WEIGHT) * fit_scaled[item] + RELEVANCE_WEIGHT * relevance_scaled[item]
            if value > best_value:
                best, best_value = item, value
        if best is None:
            break
        members.append(best)
        context.append(best)
        pair_fit.append(float(fits[best]))
        spent += prices.get(best, 0.0)
        pool.remove(best)
    if len(members) < MIN_SIZE:
        return None
    user_fit = float(np.mean([relevance(m) for m in members]))
    return Assembled(anchor, tuple(members), float(np.mean(pair_fit)) + RELEVANCE_WEIGHT * user_fit)


def _fit(complements: ComplementModel, a: str, b: str) -> float:
    """Symmetric complement strength: either item may be the one that makes the other worth buying."""
    return max(complements.pair_score(a, b), complements.pair_score(b, a))


def _unit_scale(values: Mapping[str, float]) -> dict[str, float]:
    if not values:
        return {}
    low, high = min(values.values()), max(values.values())
    span = high - low
    return {item: (value - low) / span if span > 0 else 0.0 for item, value in values.items()}


@dataclass(frozen=True)
class BundleContext:
    """What bundle assembly needs from an artifact, built once per loaded Recommender."""

    complements: ComplementModel
    kinds: ProductKinds
    prices: dict[str, float]
    catalogue: frozenset[str] | None


_CONTEXTS: WeakKeyDictionary[Recommender, BundleContext] = WeakKeyDictionary()


def context_for(rec: Recommender) -> BundleContext:
    if rec not in _CONTEXTS:
        if rec.complements is None:
            raise ValueError(
                f"artifact {rec.version} has no complement model (it was trained without baskets)"
            )
        catalog = rec.catalog
        prices = (
            {}
            if catalog is None
            else dict(zip(catalog["item_id"].astype(str), catalog["price"], strict=True))
        )
        _CONTEXTS[rec] = BundleContext(
            complements=rec.complements,
            kinds=ProductKinds.from_catalog(catalog),
            prices={item: float(price) for item, price in prices.items() if price == price},
            catalogue=None if catalog is None else frozenset(catalog["item_id"].astype(str)),
        )
    return _CONTEXTS[rec]


def bundles_batch(
    rec: Recommender,
    histories: Sequence[Sequence[str]],
    types: Sequence[Sequence[str]] | None = None,
    carts: Sequence[Sequence[str]] | None = None,
    excludes: Sequence[Collection[str]] | None = None,
    n: int = 3,
    size: int = 3,
    budget: float | None = None,
) -> list[list[ExplainedBundle]]:
    """Explained bundles for a micro-batch of users: one encode for relevance, one for attribution.

    A user with no known item (in history or cart) gets no bundles: there is nothing to anchor them on.
    """
    context = context_for(rec)
    histories = [list(history) for history in histories]
    all_types = [list(t) for t in types] if types is not None else [["view"] * len(h) for h in histories]
    carts = carts if carts is not None else [()] * len(histories)
    excludes = excludes if excludes is not None else [()] * len(histories)
    sessions = rec.encode(histories, all_types)
    candidates = rec.search(sessions, CANDIDATES_PER_ANCHOR, excludes)
    assembled: list[list[Assembled]] = []
    for row, (history, cart, excluded, ranked) in enumerate(
        zip(histories, carts, excludes, candidates, strict=True)
    ):
        known_cart = [item for item in reversed(cart) if item in rec.vocab]
        if not known_cart and not rec.known(history):
            assembled.append([])
            continue
        current = [history[-1]] if history and history[-1] in rec.vocab else []
        anchors = [*known_cart, *current, *(item for item, _ in ranked)]
        assembled.append(
            assemble(
                anchors,
                context.complements,
                context.kinds,
                _session_scores(rec, sessions[row : row + 1]),
                context.prices,
                n=n,
                size=size,
                budget=budget,
                exclude=set(excluded),
                catalogue=context.catalogue,
            )
        )
    anchor_drops = leave_one_out(rec, histories, all_types, [[b.anchor for b in user] for user in assembled])
    return [
        [
            explain_bundle(rec, context, bundle, history, event_types, cart, drops)
            for bundle, drops in zip(user, user_drops, strict=True)
        ]
        for user, user_drops, history, event_types, cart in zip(
            assembled, anchor_drops, histories, all_types, carts, strict=True
        )
    ]


def _session_scores(rec: Recommender, session: EncodedSessions) -> Callable[[str], float]:
    """This user's full model score of an item (0 for items the session model does not know)."""
    scores = session.scores(rec.item_vectors)[0]

    def score(item: str) -> float:
        row = rec.vocab.get(item)
        return 0.0 if row is None else float(scores[row])

    return score


def explain_bundle(
    rec: Recommender,
    context: BundleContext,
    bundle: Assembled,
    history: Sequence[str],
    event_types: Sequence[str],
    cart: Sequence[str],
    anchor_drops: Sequence[tuple[int, float]],
) -> ExplainedBundle:
    """Reasons: the events behind the anchor, and each member's co-purchase evidence with the anchor."""
    if bundle.anchor in cart:
        drivers = [Driver(item_id=bundle.anchor, type="add_to_cart", weight=1.0)]
    elif history and bundle.anchor == history[-1]:
        drivers = [Driver(item_id=bundle.anchor, type=event_types[-1], weight=1.0)]
    else:
        drivers = drivers_from(history, event_types, anchor_drops)
    evidence = []
    for item in bundle.items:
        if item != bundle.anchor:
            together, lift = context.complements.evidence(bundle.anchor, item)
            evidence.append(
                Evidence(item_id=item, with_item=bundle.anchor, pair_baskets=together, lift=round(lift, 3))
            )
    cold = any(e.pair_baskets == 0 for e in evidence)
    reasons = Reasons(code="cold_start" if cold else "complement", drivers=drivers, evidence=evidence)
    return ExplainedBundle(
        items=list(bundle.items),
        anchor=bundle.anchor,
        score=round(bundle.score, 6),
        reasons=reasons,
        explanation=bundle_line(rec, bundle, reasons, in_cart=bundle.anchor in cart),
    )


def bundle_line(rec: Recommender, bundle: Assembled, reasons: Reasons, in_cart: bool) -> str:
    others = [describe(rec, e.item_id) for e in reasons.evidence]
    where = "in your cart" if in_cart else "you are looking at" if reasons.drivers else "picked for you"
    strongest = max(reasons.evidence, key=lambda e: e.pair_baskets, default=None)
    proof = (
        f"; bought together in {strongest.pair_baskets} baskets (lift {strongest.lift:.1f})"
        if strongest is not None and strongest.pair_baskets > 0
        else ""
    )
    return f"Goes with {describe(rec, bundle.anchor)} {where}: {' + '.join(others)}{proof}"
