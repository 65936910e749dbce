"""Session state updates: bounded, session gaps, cart and purchases, redelivery, JSON round trip."""

from __future__ import annotations

import asyncio

from stream.events import ClickEvent
from stream.state import StateLimits, UserState, apply_event, bounded_append, is_expired, sweep_expired

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


def test_the_expiry_sweep_deletes_idle_users_and_spares_one_who_came_back_meanwhile() -> None:
    table = {f"u{n}".encode(): {"updated_at": 0.0} for n in range(5)} | {b"active": {"updated_at": 95.0}}
    other_work: list[int] = []

    async def sweep() -> tuple[int, int]:
        async def answering() -> None:  # another task on the loop, as the worker's batches are
            while True:
                other_work.append(len(table))
                if len(other_work) == 3:
                    table[b"u4"] = {"updated_at": 99.0}  # u4 sends an event while the sweep is paused
                await asyncio.sleep(0)

        task = asyncio.create_task(answering())
        try:
            return await sweep_expired(list(table.items()), table.get, table.pop, lambda: 100.0, 30, chunk=1)
        finally:
            task.cancel()

    seen, deleted = asyncio.run(sweep())
    assert (seen, deleted) == (6, 4)
    assert set(table) == {b"active", b"u4"}
    assert len(other_work) >= 6  # the loop ran other work between chunks


def test_a_bounded_list_moves_a_repeated_item_to_the_end_and_keeps_the_latest_cap_entries() -> None:
    assert bounded_append(("a", "b", "c"), "d", 3) == ("b", "c", "d")
    assert bounded_append(("a", "b", "c"), "a", 3) == ("b", "c", "a")
    assert bounded_append(("a", "b", "c"), "b", 2) == ("c", "b")
    assert bounded_append(("a",), "b", 5) == ("a", "b")
    assert bounded_append(("a", "b"), "c", 1) == ("c",)
    assert bounded_append(("a", "b"), "c", 0) == ()
