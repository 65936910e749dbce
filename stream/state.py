"""Per-user session state and its pure update rule.

The worker keeps one `UserState` per user in a Faust table on RocksDB (JSON values, changelogged), so
these functions define what survives a restart. Everything is bounded: recent events, cart and
purchases have caps, and a user idle for `state_ttl_s` is deleted altogether.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import Any, NamedTuple

import orjson

from stream.events import ClickEvent

SWEEP_SLICE_S = 0.001  # the expiry sweep works this long at a time (bench/sweep_latency.py)
SWEEP_PAUSES = 4  # slices' worth of time it then leaves the event loop to answering: a fifth of the loop
CLOCK_EVERY = 64  # states scanned between clock reads


@dataclass(frozen=True)
class StateLimits:
    max_events: int = 50
    session_gap_s: float = 1800.0
    purchased_max: int = 500


@dataclass(frozen=True)
class RecentEvent:
    event_id: str
    item_id: str
    type: str
    ts: float


@dataclass(frozen=True)
class UserState:
    """Recent events of the current session (oldest first), cart, purchases, and activity times.

    Immutable, so its derived views are computed once (an answer reads them several times).
    """

    events: tuple[RecentEvent, ...] = ()
    cart: tuple[str, ...] = ()
    purchased: tuple[str, ...] = ()
    last_event_ts: float = 0.0  # event time of the newest event (session boundaries)
    updated_at: float = 0.0  # worker wall-clock time of the last update (state expiry)
    sessions: int = 0  # sessions started so far

    @cached_property
    def history(self) -> tuple[str, ...]:
        return tuple(event.item_id for event in self.events)

    @cached_property
    def history_types(self) -> tuple[str, ...]:
        return tuple(event.type for event in self.events)

    @cached_property
    def excluded(self) -> frozenset[str]:
        """Items never worth recommending to this user again right now: bought, or already in the cart."""
        return frozenset(self.purchased) | frozenset(self.cart)

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [[e.event_id, e.item_id, e.type, e.ts] for e in self.events],
            "cart": list(self.cart),
            "purchased": list(self.purchased),
            "last_event_ts": self.last_event_ts,
            "updated_at": self.updated_at,
            "sessions": self.sessions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> UserState:
        if not data:
            return cls()
        return cls(
            events=tuple(
                RecentEvent(str(i), str(item), str(t), float(ts)) for i, item, t, ts in data["events"]
            ),
            cart=tuple(data["cart"]),
            purchased=tuple(data["purchased"]),
            last_event_ts=float(data["last_event_ts"]),
            updated_at=float(data["updated_at"]),
            sessions=int(data["sessions"]),
        )


def bounded_append(items: tuple[str, ...], item: str, cap: int) -> tuple[str, ...]:
    """Move or add `item` to the end, keeping at most `cap` most recent entries.

    A wholesale buyer's purchases fill the cap (hundreds of items), so this stays in C-level tuple
    operations: `items` never holds an item twice, so a move removes one entry.
    """
    if cap <= 0:
        return ()
    items = _without(items, item)
    return (*items[-(cap - 1) :], item) if cap > 1 else (item,)


def _without(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    """`items` minus its one entry `item`, if there is one."""
    if item not in items:
        return items
    position = items.index(item)
    return items[:position] + items[position + 1 :]


def apply_event(
    state: UserState, event: ClickEvent, now: float, limits: StateLimits
) -> tuple[UserState, bool]:
    """The state after `event`, and whether it was applied (False: a redelivered event_id, state unchanged).

    Redeliveries after a crash (at-least-once) are recognised by event_id among the recent events, so
    they are answered again but never counted twice in the session.
    """
    if any(recent.event_id == event.event_id for recent in state.events):
        return state, False
    new_session = not state.events or event.ts - state.last_event_ts > limits.session_gap_s
    events = () if new_session else state.events
    events = (*events, RecentEvent(event.event_id, event.item_id, event.type, event.ts))[-limits.max_events :]
    cart, purchased = state.cart, state.purchased
    if event.type == "add_to_cart":
        cart = bounded_append(cart, event.item_id, limits.max_events)
    elif event.type == "remove_from_cart":
        cart = _without(cart, event.item_id)
    elif event.type == "purchase":
        cart = _without(cart, event.item_id)
        purchased = bounded_append(purchased, event.item_id, limits.purchased_max)
    updated = replace(
        state,
        events=events,
        cart=cart,
        purchased=purchased,
        last_event_ts=max(state.last_event_ts, event.ts),
        updated_at=now,
        sessions=state.sessions + new_session,
    )
    return updated, True


def is_expired(state_json: dict[str, Any], now: float, ttl_s: float) -> bool:
    """Whether a stored state has been idle (wall clock) for longer than the TTL."""
    return now - float(state_json.get("updated_at", 0.0)) > ttl_s


Stored = Iterator[tuple[bytes, bytes]]  # (user_id, JSON state) in key order, as RocksDB iterates


class Slice(NamedTuple):
    seen: int
    deleted: int
    resume_at: bytes | None


def sweep_slice(
    stored: Stored, delete: Callable[[bytes], None], ttl_s: float, clock: Callable[[], float], slice_s: float
) -> Slice:
    """Delete the idle states of `stored` until `slice_s` has passed, deletes (and their tombstones)
    included in the time.

    Returns how many states were seen and deleted, and the first key not yet seen (None: none left),
    from which the next slice starts a fresh iterator.
    """
    started = now = clock()
    seen = deleted = 0
    for key, value in stored:
        if now - started >= slice_s:
            return Slice(seen, deleted, key)
        seen += 1
        if is_expired(orjson.loads(value), now, ttl_s):
            delete(key)
            deleted += 1
        if seen % CLOCK_EVERY == 0:
            now = clock()
    return Slice(seen, deleted, None)


async def sweep_expired(
    partitions: Iterable[int],
    stored_from: Callable[[int, bytes | None], Stored | None],
    delete: Callable[[int, bytes], None],
    clock: Callable[[], float],
    ttl_s: float,
    slice_s: float = SWEEP_SLICE_S,
    after_slice: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, int]:
    """Delete every stored state idle for longer than the TTL; returns (states seen, states deleted).

    The sweep shares the worker's event loop with answering, so it works in slices of `slice_s` and
    pauses `SWEEP_PAUSES` times as long between them: a table of millions of users costs many short
    delays of at most a slice, never a stall.
    `stored_from(partition, key)` iterates one partition from a key, or is None once the partition is no
    longer this worker's (a rebalance during the pause); no iterator and no view of Faust's partition map
    lives across a pause, so a rebalance cannot change what a slice iterates. A state is checked and
    deleted in the same slice, so an event arriving during a pause is never deleted with its user.
    """
    seen = deleted = 0
    for partition in list(partitions):
        resume_at: bytes | None = None
        while (stored := stored_from(partition, resume_at)) is not None:
            part = sweep_slice(stored, partial(delete, partition), ttl_s, clock, slice_s)
            seen, deleted = seen + part.seen, deleted + part.deleted
            if after_slice is not None:  # (the worker hands the slice's tombstones to Kafka)
                await after_slice()
            await asyncio.sleep(slice_s * SWEEP_PAUSES)
            if part.resume_at is None:
                break
            resume_at = part.resume_at
    return seen, deleted
