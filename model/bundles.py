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

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import numpy as np

from model.complement.model import ComplementModel
from model.explain import Attribution, Driver, Evidence, Reasons, describe
from model.items import TrainedItems
from model.neardup import NearDuplicateIndex, ProductKinds

RELEVANCE_WEIGHT = 0.3
CANDIDATES_PER_ANCHOR = 60
MIN_SIZE, MAX_SIZE = 2, 4
POOL_CACHE_SIZE = 4096  # anchors whose candidate pools an item space keeps (a few KB each)


@dataclass(slots=True)
class ExplainedBundle:
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


@dataclass(frozen=True)
class ItemSpace:
    """What assembly needs about items, as arrays over the complement model's rows.

    Built once per artifact (`context_for`), so that assembling a bundle is a few array operations on
    its candidate pool rather than a Python loop over candidate pairs.
    """

    complements: ComplementModel
    kinds: ProductKinds
    near: NearDuplicateIndex
    id_rank: np.ndarray  # each row's place in item-id order: ties go to the smallest id
    prices: Mapping[str, float]
    row_prices: np.ndarray  # as prices.get(item, 0.0)
    catalogue: Collection[str] | None
    listed: np.ndarray  # in the catalogue (all rows when there is none)
    pools: OrderedDict[str, AnchorPool] = field(default_factory=OrderedDict)  # LRU, see `anchor_pool`


class AnchorPool:
    """An anchor's candidate members with everything assembly asks about them that is the same for every
    user: popular anchors recur across users, so this is computed once per anchor, not once per answer.

    `rows`: the anchor's complements that are listed and not near-duplicates of the anchor, in item-id
    order (ties go to the smallest id). Member-to-member strengths and near-duplicates are filled in row
    by row as members get picked.
    """

    def __init__(self, space: ItemSpace, anchor: str) -> None:
        complements, near = space.complements, space.near
        self.space = space
        anchor_row = complements.vocab.get(anchor)
        anchors = [] if anchor_row is None else [anchor_row]
        rows, _ = complements.complete_rows(anchors, CANDIDATES_PER_ANCHOR)
        rows = rows[space.listed[rows] & ~_in_sorted(rows, near.near_duplicates(anchor))]
        self.rows = rows[np.argsort(space.id_rank[rows])]
        self.kinds = near.kind_ids[self.rows]
        self.prices = space.row_prices[self.rows]
        self.anchor_fit = (
            np.zeros(len(self.rows)) if anchor_row is None else complements.strength(anchor_row, self.rows)
        )
        self._fit: dict[int, np.ndarray] = {}
        self._near: dict[int, np.ndarray] = {}

    def fit_with(self, member: int) -> np.ndarray:
        """Complement strength of every pool row with pool row `member`."""
        if member not in self._fit:
            self._fit[member] = self.space.complements.strength(int(self.rows[member]), self.rows)
        return self._fit[member]

    def near_to(self, member: int) -> np.ndarray:
        """Which pool rows are near-duplicates of pool row `member`."""
        if member not in self._near:
            item = self.space.complements.vocab.item_ids[self.rows[member]]
            self._near[member] = _in_sorted(self.rows, self.space.near.near_duplicates(item))
        return self._near[member]


def anchor_pool(space: ItemSpace, anchor: str) -> AnchorPool:
    """The anchor's pool, from the space's least-recently-used cache."""
    pool = space.pools.get(anchor)
    if pool is None:
        pool = space.pools[anchor] = AnchorPool(space, anchor)
        if len(space.pools) > POOL_CACHE_SIZE:
            space.pools.popitem(last=False)
    else:
        space.pools.move_to_end(anchor)
    return pool


_NEAR: WeakKeyDictionary[ComplementModel, WeakKeyDictionary[ProductKinds, NearDuplicateIndex]] = (
    WeakKeyDictionary()
)


def item_space(
    complements: ComplementModel,
    kinds: ProductKinds,
    prices: Mapping[str, float],
    catalogue: Collection[str] | None,
) -> ItemSpace:
    """The arrays of one (complement model, catalogue); the near-duplicate index is shared across calls."""
    by_kinds = _NEAR.setdefault(complements, WeakKeyDictionary())
    if kinds not in by_kinds:
        by_kinds[kinds] = NearDuplicateIndex(kinds, complements.vocab.item_ids)
    ids = complements.vocab.item_ids
    id_rank = np.empty(len(ids), dtype=np.int64)
    id_rank[sorted(range(len(ids)), key=ids.__getitem__)] = np.arange(len(ids))
    return ItemSpace(
        complements=complements,
        kinds=kinds,
        near=by_kinds[kinds],
        id_rank=id_rank,
        prices=prices,
        row_prices=np.array([prices.get(item, 0.0) for item in ids], dtype=np.float64),
        catalogue=catalogue,
        listed=np.ones(len(ids), dtype=bool)
        if catalogue is None
        else np.array([item in catalogue for item in ids], dtype=bool),
    )


@dataclass(frozen=True)
class Relevance:
    """One user's relevance of items: by id (for anchors and members) and by complement row (pools)."""

    of_item: Callable[[str], float]
    of_rows: Callable[[np.ndarray], np.ndarray]


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
    ids = complements.vocab.item_ids
    by_rows = Relevance(
        relevance, lambda rows: np.array([relevance(ids[row]) for row in rows], dtype=np.float64)
    )
    space = item_space(complements, kinds, prices, catalogue)
    return assemble_in(space, anchors, by_rows, n, size, budget, exclude)


def assemble_in(
    space: ItemSpace,
    anchors: Sequence[str],
    relevance: Relevance,
    n: int,
    size: int,
    budget: float | None,
    exclude: Collection[str],
) -> list[Assembled]:
    """`assemble` over a prepared item space (what the stream uses, with the space built once)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"bundle size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    excluded = set(exclude)
    excluded_rows = np.unique(np.array(space.complements.vocab.encode(excluded), dtype=np.int64))
    bundles: list[Assembled] = []
    seen: set[frozenset[str]] = set()
    for anchor in dict.fromkeys(anchors):
        if len(bundles) == n:
            break
        bundle = _assemble_one(anchor, space, relevance, size, budget, excluded, excluded_rows)
        if bundle is not None and frozenset(bundle.items) not in seen:
            seen.add(frozenset(bundle.items))
            bundles.append(bundle)
    return bundles


def _assemble_one(
    anchor: str,
    space: ItemSpace,
    relevance: Relevance,
    size: int,
    budget: float | None,
    excluded: set[str],
    excluded_rows: np.ndarray,
) -> Assembled | None:
    """One greedy bundle; every candidate of the anchor's pool is scored at once."""
    allowed = anchor not in excluded and (space.catalogue is None or anchor in space.catalogue)
    members = [anchor] if allowed else []
    spent = sum(space.prices.get(item, 0.0) for item in members)
    if budget is not None and spent > budget:
        return None
    pool = anchor_pool(space, anchor)
    remaining = ~_in_sorted(pool.rows, excluded_rows)
    pool_relevance = relevance.of_rows(pool.rows)
    relevance_scaled = _unit_scale(pool_relevance, over=remaining)
    member_relevance = [relevance.of_item(anchor)] if members else []
    fit_sum = pool.anchor_fit.copy()
    context_size = 1
    duplicate = np.zeros(len(pool.rows), dtype=bool)  # a near-duplicate of a member chosen so far
    pair_fit: list[float] = []
    while len(members) < size and remaining.any():
        fits = fit_sum / context_size
        eligible = remaining & ~duplicate
        if budget is not None:
            eligible &= ~(spent + pool.prices > budget)
        single_kind = len({space.kinds.kind(m) for m in members}) <= 1 and len(members) == size - 1
        if single_kind and members:  # the last slot must add a second kind
            eligible &= pool.kinds != space.near.kind_id(members[0])
        if not eligible.any():
            break
        fit_scaled = _unit_scale(fits, over=remaining)
        value = (1 - RELEVANCE_WEIGHT) * fit_scaled + RELEVANCE_WEIGHT * relevance_scaled
        best = int(np.argmax(np.where(eligible, value, -np.inf)))
        item = space.complements.vocab.item_ids[pool.rows[best]]
        members.append(item)
        member_relevance.append(float(pool_relevance[best]))
        pair_fit.append(float(fits[best]))
        spent += space.prices.get(item, 0.0)
        remaining[best] = False
        duplicate |= pool.near_to(best)
        fit_sum += pool.fit_with(best)
        context_size += 1
    if len(members) < MIN_SIZE:
        return None
    user_fit = sum(member_relevance) / len(member_relevance)
    return Assembled(anchor, tuple(members), sum(pair_fit) / len(pair_fit) + RELEVANCE_WEIGHT * user_fit)


def _in_sorted(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """Which of `rows` are in `sorted_rows` (np.isin for a few dozen rows, without its setup cost)."""
    if len(sorted_rows) == 0:
        return np.zeros(len(rows), dtype=bool)
    found = np.searchsorted(sorted_rows, rows).clip(max=len(sorted_rows) - 1)
    return sorted_rows[found] == rows


def _unit_scale(values: np.ndarray, over: np.ndarray | None = None) -> np.ndarray:
    """Values scaled to [0, 1] by the min and max of the entries `over` selects (all by default)."""
    selected = values if over is None else values[over]
    if len(selected) == 0:
        return np.zeros(len(values))
    low, high = selected.min(), selected.max()
    span = high - low
    return (values - low) / span if span > 0 else np.zeros(len(values))


@dataclass(frozen=True)
class BundleContext:
    """What bundle assembly needs from an artifact, built once per loaded Recommender."""

    space: ItemSpace
    session_rows: np.ndarray  # each complement row's row in the session model (-1: unknown to it)


_CONTEXTS: WeakKeyDictionary[TrainedItems, BundleContext] = WeakKeyDictionary()


def context_for(rec: TrainedItems) -> BundleContext:
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
        space = item_space(
            rec.complements,
            ProductKinds.from_catalog(catalog),
            {item: float(price) for item, price in prices.items() if price == price},
            None if catalog is None else frozenset(catalog["item_id"].astype(str)),
        )
        session_rows = [rec.vocab.get(item) for item in rec.complements.vocab.item_ids]
        _CONTEXTS[rec] = BundleContext(
            space, np.array([-1 if row is None else row for row in session_rows], dtype=np.int64)
        )
    return _CONTEXTS[rec]


def warm_up(rec: TrainedItems) -> None:
    """Fill the bundle caches of an artifact before it answers: every item's near-duplicates, and the
    candidate pools of as many anchors as the pool cache holds, most popular first.

    Built lazily, these cost the first answers that meet each anchor about twice the steady-state
    bundle time (a new worker, or a hot swap, under full load); once, at load, they cost about a second
    for a catalogue of a few thousand items.
    """
    space = context_for(rec).space
    for item in space.near.item_ids:
        space.near.near_duplicates(item)
    for item, _ in reversed(rec.popular(POOL_CACHE_SIZE)):  # the most popular end up most recently used
        anchor_pool(space, item)


def explained_bundles(
    rec: TrainedItems,
    attribution: Attribution,
    candidates: Sequence[Sequence[tuple[str, float]]],
    carts: Sequence[Sequence[str]],
    excludes: Sequence[Collection[str]],
    n: int = 3,
    size: int = 3,
    budget: float | None = None,
) -> list[list[ExplainedBundle]]:
    """Explained bundles for a micro-batch of users, from what retrieval already computed for them.

    `attribution` encodes their histories (`Recommender.attribute`) and `candidates` are the model's
    picks for them (`Recommender.search`, CANDIDATES_PER_ANCHOR deep): no forward or search of its own.
    A user with no known item (in history or cart) gets no bundles: there is nothing to anchor them on.
    """
    context = context_for(rec)
    sessions = attribution.sessions
    answers: list[list[ExplainedBundle]] = []
    for row, (history, event_types, cart, excluded, ranked) in enumerate(
        zip(attribution.histories, attribution.types, carts, excludes, candidates, strict=True)
    ):
        known_cart = [item for item in reversed(cart) if item in rec.vocab]
        if not known_cart and not rec.known(history):
            answers.append([])
            continue
        current = [history[-1]] if history and history[-1] in rec.vocab else []
        anchors = [*known_cart, *current, *(item for item, _ in ranked)]
        relevance = _session_relevance(rec, context, sessions.vectors[row], sessions.repeats[row])
        assembled = assemble_in(context.space, anchors, relevance, n, size, budget, excluded)
        attributed = [b.anchor for b in assembled if _needs_attribution(b, history, cart)]
        drivers = dict(zip(attributed, attribution.drivers(rec, row, attributed), strict=True))
        answers.append(
            [
                explain_bundle(rec, context, bundle, history, event_types, cart, drivers.get(bundle.anchor))
                for bundle in assembled
            ]
        )
    return answers


def _needs_attribution(bundle: Assembled, history: Sequence[str], cart: Sequence[str]) -> bool:
    """A bundle anchored on the cart or the current item names that event; others need leave-one-out."""
    return bundle.anchor not in cart and not (history and bundle.anchor == history[-1])


def _session_relevance(
    rec: TrainedItems, context: BundleContext, vector: np.ndarray, repeats: Mapping[int, float]
) -> Relevance:
    """This user's full model score of an item (0 for items the session model does not know), computed
    for the few items assembly asks about, not for the whole catalogue."""

    def of_rows(rows: np.ndarray) -> np.ndarray:
        session_rows = context.session_rows[rows]
        known = session_rows >= 0
        scores = np.zeros(len(rows), dtype=np.float64)
        scores[known] = rec.item_vectors[session_rows[known]] @ vector
        if repeats:
            scores += [repeats.get(row, 0.0) for row in session_rows.tolist()]
        return scores

    def of_item(item: str) -> float:
        row = rec.vocab.get(item)
        return 0.0 if row is None else float(rec.item_vectors[row] @ vector + repeats.get(row, 0.0))

    return Relevance(of_item, of_rows)


def explain_bundle(
    rec: TrainedItems,
    context: BundleContext,
    bundle: Assembled,
    history: Sequence[str],
    event_types: Sequence[str],
    cart: Sequence[str],
    anchor_drivers: list[Driver] | None,
) -> ExplainedBundle:
    """Reasons: the events behind the anchor, and each member's co-purchase evidence with the anchor.

    `anchor_drivers` are the anchor's leave-one-out drivers, needed unless it is in the cart or is the
    current item (then that event is the driver).
    """
    if bundle.anchor in cart:
        drivers, where = [Driver(bundle.anchor, "add_to_cart", 1.0)], "in your cart"
    elif history and bundle.anchor == history[-1]:
        drivers = [Driver(bundle.anchor, event_types[-1], 1.0)]
        where = "you just bought" if event_types[-1] == "purchase" else "you are looking at"
    else:
        drivers, where = anchor_drivers or [], "picked for you"
    evidence = []
    for item in bundle.items:
        if item != bundle.anchor:
            complements = context.space.complements
            together, lift = complements.evidence(bundle.anchor, item)
            signal = complements.signal(bundle.anchor, item)
            evidence.append(Evidence(item, bundle.anchor, together, round(lift, 3), signal))
    cold = any(e.pair_baskets == 0 for e in evidence)
    reasons = Reasons("cold_start" if cold else "complement", drivers, evidence)
    return ExplainedBundle(
        items=list(bundle.items),
        anchor=bundle.anchor,
        score=round(bundle.score, 6),
        reasons=reasons,
        explanation=bundle_line(rec, bundle, reasons, where),
    )


def bundle_line(rec: TrainedItems, bundle: Assembled, reasons: Reasons, where: str) -> str:
    """`where`: how the anchor relates to the user ("in your cart", "you are looking at", ...)."""
    others = [describe(rec, e.item_id) for e in reasons.evidence]
    strongest = max(reasons.evidence, key=lambda e: e.pair_baskets, default=None)
    proof = (
        f"; bought together in {strongest.pair_baskets} baskets (lift {strongest.lift:.1f})"
        if strongest is not None and strongest.pair_baskets > 0
        else ""
    )
    return f"Goes with {describe(rec, bundle.anchor)} {where}: {' + '.join(others)}{proof}"
