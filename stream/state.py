"""Per-user session state and its pure update rule.

The worker keeps one `UserState` per user in a Faust table on RocksDB (JSON values, changelogged), so
these functions define what survives a restart. Everything is bounded: recent events, cart and
purchases have caps, and a user idle for `state_ttl_s` is deleted altogether.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from stream.events import ClickEvent

EXPIRY_CHUNK = 500  # stored states checked between yields to the event loop


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


async def sweep_expired(
    stored: Iterable[tuple[bytes, dict[str, Any]]],
    reread: Callable[[bytes], dict[str, Any] | None],
    delete: Callable[[bytes], None],
    clock: Callable[[], float],
    ttl_s: float,
    chunk: int = EXPIRY_CHUNK,
) -> tuple[int, int]:
    """Delete every stored state idle for longer than the TTL; returns (states seen, states deleted).

    The sweep shares the worker's event loop with answering, so it yields every `chunk` states: a table
    of millions of users costs many short pauses, not one stall of seconds. A user found idle is read
    again right before deletion, because their events may have arrived while the sweep was paused.
    """
    seen, idle = 0, []
    for key, value in stored:
        seen += 1
        if is_expired(value, clock(), ttl_s):
            idle.append(key)
        if seen % chunk == 0:
            await asyncio.sleep(0)
    deleted = 0
    for done, key in enumerate(idle, start=1):
        current = reread(key)
        if current is not None and is_expired(current, clock(), ttl_s):
            delete(key)
            deleted += 1
        if done % chunk == 0:
            await asyncio.sleep(0)
    return seen, deleted
