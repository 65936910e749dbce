"""One micro-batch, independent of Kafka: admit events into state, then answer them all at once.

`admit` runs per message (validation, state update or erasure, stream popularity); `answer` once per batch
(once per user in it) through the model's one answer seam, `Recommender.answer_batch`, with the stream's
live popularity for users with no known item. The Faust agent in `stream.worker` feeds these with Kafka
messages and a RocksDB-backed table; tests feed them with dicts.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

from model import Recommender
from model.answers import Query
from stream import metrics
from stream.answer import Answered, answer_content
from stream.config import StreamSettings
from stream.events import ClickEvent, ForgetRequest, Limits, Rejection, parse_event
from stream.popularity import DecayedPopularity
from stream.state import StateLimits, UserState, apply_event


@dataclass(frozen=True)
class Admitted:
    """A valid event with the user's state right after it (what its answer is computed from)."""

    event: ClickEvent
    state: UserState
    arrived: float  # time.monotonic() when the message reached the worker


class Pipeline:
    def __init__(self, settings: StreamSettings) -> None:
        self.k = settings.top_k
        self.bundle_count = settings.bundles_per_answer
        self.bundle_size = settings.bundle_size
        self.limits = Limits(settings.max_payload_bytes, settings.max_id_chars)
        self.state_limits = StateLimits(
            settings.session_max_events, settings.session_gap_s, settings.purchased_max
        )
        self.popularity = DecayedPopularity(settings.popularity_half_life_s)

    def admit(
        self,
        key: bytes | None,
        value: bytes | None,
        states: MutableMapping[str, UserState],
        arrived: float,
        now: float,
    ) -> Admitted | ForgetRequest | Rejection:
        """Validate one message; a valid event updates its user's state (`states`, keyed by user_id), and
        a forget request deletes it. Counts nothing: a batch that fails is retried, so the caller counts
        once the batch is through."""
        parsed = parse_event(key, value, self.limits)
        if isinstance(parsed, Rejection):
            return parsed
        if isinstance(parsed, ForgetRequest):
            with suppress(KeyError):
                del states[parsed.user_id]
            return parsed
        state, applied = apply_event(states.get(parsed.user_id, UserState()), parsed, now, self.state_limits)
        if applied:
            states[parsed.user_id] = state
            self.popularity.add(parsed.item_id, parsed.type, now)
        return Admitted(parsed, state, arrived)

    def answer(self, recommender: Recommender, batch: Sequence[Admitted], now: float) -> list[Answered]:
        """Answers for a batch, in order, one per event.

        A user with several events in the batch is answered once, from the state after the last of them:
        the freshest state the worker has when it answers, and one computation instead of several (shops
        send bursts: an order's lines, a page's views). Each event still gets its own message, around the
        user's one serialised answer.
        """
        last_state: dict[str, UserState] = {}
        for admitted in batch:
            last_state[admitted.event.user_id] = admitted.state
        answers = recommender.answer_batch(
            [query_for(state) for state in last_state.values()],
            self.k,
            self.bundle_count,
            self.bundle_size,
            trending=lambda depth: self.popularity.top(depth, now, recommender.vocab),
            stage=metrics.observe_stage,
        )
        by_user = {
            user: Answered(answer, answer_content(answer))
            for user, answer in zip(last_state, answers, strict=True)
        }
        return [by_user[admitted.event.user_id] for admitted in batch]


def query_for(state: UserState) -> Query:
    """What the model is asked for a user: their session, cart, and purchases (never offered again)."""
    return Query(state.history, state.history_types, state.cart, state.purchased)
