"""Session state updates: bounded, session gaps, cart and purchases, redelivery, JSON round trip."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

from stream.events import ClickEvent
from stream.state import (
    CLOCK_EVERY,
    StateLimits,
    UserState,
    apply_event,
    bounded_append,
    is_expired,
    sweep_expired,
    sweep_slice,
)

LIMITS = StateLimits(max_events=3, session_gap_s=100.0, purchased_max=2)


def event(n: int, item: str, kind: str = "view", ts: float | None = None) -> ClickEvent:
    return ClickEvent(f"e{n}", "u1", item, kind, 1000.0 + n if ts is None else ts)


def play(*events: ClickEvent) -> UserState:
    state = UserState()
    for e in events:
        state, _ = apply_event(state, e, now=5.0, limits=LIMITS)
    return state


def test_recent_events_are_bounded_and_ordered() -> None:
    state = play(*(event(n, f"i{n}") for n in range(5)))
    assert state.history == ("i2", "i3", "i4")
    assert state.history_types == ("view",) * 3


def test_cart_and_purchases_drive_exclusions() -> None:
    state = play(
        event(1, "a", "add_to_cart"), event(2, "b", "add_to_cart"), event(3, "a", "remove_from_cart")
    )
    assert state.cart == ("b",)
    state = play(event(1, "b", "add_to_cart"), event(2, "b", "purchase"), event(3, "c", "purchase"))
    assert state.cart == () and state.purchased == ("b", "c")
    assert state.excluded == {"b", "c"}
    assert play(*(event(n, f"p{n}", "purchase") for n in range(4))).purchased == ("p2", "p3")


def test_inactivity_gap_starts_a_new_session_but_keeps_purchases() -> None:
    state = play(event(1, "a", "purchase"), event(2, "b"), event(3, "c", ts=1002.0 + 101))
    assert state.history == ("c",)
    assert state.purchased == ("a",)
    assert state.sessions == 2


def test_a_pause_of_exactly_the_gap_keeps_the_session_and_one_longer_ends_it() -> None:
    last = 1002.0
    same = play(event(1, "a"), event(2, "b"), event(3, "c", ts=last + LIMITS.session_gap_s))
    assert same.history == ("a", "b", "c") and same.sessions == 1
    after = play(event(1, "a"), event(2, "b"), event(3, "c", ts=last + LIMITS.session_gap_s + 0.001))
    assert after.history == ("c",) and after.sessions == 2


def test_redelivered_event_is_not_applied_twice() -> None:
    state = play(event(1, "a"), event(2, "b"))
    again, applied = apply_event(state, event(2, "b"), now=9.0, limits=LIMITS)
    assert not applied and again == state


def test_json_round_trip_and_expiry() -> None:
    state = play(event(1, "a", "add_to_cart"), event(2, "b", "purchase"))
    assert UserState.from_json(state.to_json()) == state
    assert UserState.from_json(None) == UserState()
    assert not is_expired(state.to_json(), now=5.0 + 10, ttl_s=60)
    assert is_expired(state.to_json(), now=5.0 + 61, ttl_s=60)


class Partitions:
    """Partitions of stored states as the sweep sees them: a fresh key-ordered iterator per slice, None for
    a partition no longer held. Rebalanced by the `answering` task while the sweep pauses."""

    def __init__(self, stored: dict[int, dict[bytes, dict]]) -> None:
        self.stored = stored
        self.deleted: list[tuple[int, bytes]] = []

    def stored_from(self, partition: int, key: bytes | None) -> Iterator[tuple[bytes, bytes]] | None:
        if partition not in self.stored:
            return None
        items = sorted(self.stored[partition].items())
        return ((k, json.dumps(v).encode()) for k, v in items if key is None or k >= key)

    def delete(self, partition: int, key: bytes) -> None:
        del self.stored[partition][key]
        self.deleted.append((partition, key))


class SteppingClock:
    """Each read is `step` later than the one before: slices end after a known number of states."""

    def __init__(self, start: float, step: float) -> None:
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_slice_stops_when_its_time_is_up_and_says_where_to_resume() -> None:
    stored = iter([(f"u{n:03}".encode(), b'{"updated_at": 0}') for n in range(1000)])
    deleted: list[bytes] = []
    part = sweep_slice(stored, deleted.append, ttl_s=10, clock=SteppingClock(100.0, 1.0), slice_s=2.5)
    # The clock is read at the start and every CLOCK_EVERY states: 2.5 s have passed at the fourth read.
    assert part.seen == 3 * CLOCK_EVERY and part.resume_at == f"u{3 * CLOCK_EVERY:03}".encode()
    assert part.deleted == part.seen and deleted == [f"u{n:03}".encode() for n in range(part.seen)]
    rest = sweep_slice(iter([(b"z", b'{"updated_at": 99}')]), deleted.append, 10, lambda: 100.0, 1)
    assert rest == (1, 0, None)


def test_the_sweep_deletes_idle_users_where_they_are_and_survives_a_rebalance_between_slices() -> None:
    partitions = Partitions(
        {
            0: {f"a{n:03}".encode(): {"updated_at": 0.0} for n in range(300)}
            | {b"a-active": {"updated_at": 95.0}},
            1: {f"b{n:03}".encode(): {"updated_at": 0.0} for n in range(300)},
            2: {f"c{n:03}".encode(): {"updated_at": 0.0} for n in range(300)},
        }
    )
    pauses: list[int] = []

    async def sweep() -> tuple[int, int]:
        async def answering() -> None:  # the worker's batches, and a rebalance, between slices
            while True:
                pauses.append(len(partitions.deleted))
                if len(pauses) == 3:
                    del partitions.stored[2]  # revoked while the sweep pauses
                    partitions.stored[7] = {b"new": {"updated_at": 0.0}}  # assigned: not in this sweep
                await asyncio.sleep(0)

        task = asyncio.create_task(answering())
        try:
            clock = SteppingClock(100.0, 0.001)  # every CLOCK_EVERY states take a "millisecond"
            return await sweep_expired([0, 1, 2], partitions.stored_from, partitions.delete, clock, 30, 0.002)
        finally:
            task.cancel()

    seen, deleted = asyncio.run(sweep())
    assert (seen, deleted) == (601, 600)
    assert set(partitions.stored[0]) == {b"a-active"} and not partitions.stored[1]
    assert {p for p, _ in partitions.deleted} == {0, 1}  # each in its own partition
    assert all(key.decode()[0] == "ab"[p] for p, key in partitions.deleted)
    assert len(set(pauses)) > 5  # answering ran between slices, with the sweep's deletes in progress


def test_a_bounded_list_moves_a_repeated_item_to_the_end_and_keeps_the_latest_cap_entries() -> None:
    assert bounded_append(("a", "b", "c"), "d", 3) == ("b", "c", "d")
    assert bounded_append(("a", "b", "c"), "a", 3) == ("b", "c", "a")
    assert bounded_append(("a", "b", "c"), "b", 2) == ("c", "b")
    assert bounded_append(("a",), "b", 5) == ("a", "b")
    assert bounded_append(("a", "b"), "c", 1) == ("c",)
    assert bounded_append(("a", "b"), "c", 0) == ()
