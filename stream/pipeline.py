"""One micro-batch, independent of Kafka: admit events into state, then answer them all at once.

`admit` runs per message (validation, state update or erasure, stream popularity); `answer` once per batch
(once per user in it) with one model forward (sessions and their leave-one-out variants,
`model.explain.attribute`) and one FAISS search deep enough for both the items and the bundle anchors;
users with no known item get popularity; then explanations and bundles (`stream.answer.compose_answers`).
The Faust agent in `stream.worker` feeds these with Kafka messages and a RocksDB-backed table; tests feed
them with dicts.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

from model import Recommender
from model.bundles import CANDIDATES_PER_ANCHOR
from model.explain import attribute
from stream import metrics
from stream.answer import Answer, Ranked, compose_answers, popular
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

    def answer(self, recommender: Recommender, batch: Sequence[Admitted], now: float) -> list[Answer]:
        """Answers for a batch, in order, one per event.

        A user with several events in the batch is answered once, from the state after the last of them:
        the freshest state the worker has when it answers, and one computation instead of several (shops
        send bursts: an order's lines, a page's views). Each event still gets its own message.
        """
        last_state: dict[str, UserState] = {}
        for admitted in batch:
            last_state[admitted.event.user_id] = admitted.state
        answers = self._answer_states(recommender, list(last_state.values()), now)
        by_user = dict(zip(last_state, answers, strict=True))
        return [by_user[admitted.event.user_id] for admitted in batch]

    def _answer_states(
        self, recommender: Recommender, states: Sequence[UserState], now: float
    ) -> list[Answer]:
        """One answer per state: the model for states with a known item, popularity otherwise (marked
        `cold_start`); then explanations for all and bundles for states with a
        known item (batched, see stream.answer).

        Purchased and in-cart items are excluded by the search itself, so its top k are the answer.
        """
        with metrics.observe_stage("model"):
            attribution = attribute(
                recommender, [state.history for state in states], [state.history_types for state in states]
            )
        known = [recommender.known(state.history) for state in states]
        warm = [i for i, is_known in enumerate(known) if is_known]
        cold = [i for i, is_known in enumerate(known) if not is_known]
        depth = max(self.k, CANDIDATES_PER_ANCHOR) if self.bundle_count else self.k
        candidates: list[Ranked] = [[] for _ in states]  # cold users have no model candidates
        with metrics.observe_stage("faiss"):
            found = recommender.search(attribution.sessions[warm], depth, [states[i].excluded for i in warm])
        for i, ranked in zip(warm, found, strict=True):
            candidates[i] = ranked
        rankings: list[Ranked] = [ranked[: self.k] for ranked in candidates]
        if cold:
            depth = self.k + max(len(states[i].excluded) for i in cold)
            sources = (
                self.popularity.top(depth, now, recommender.vocab),
                recommender.popular(depth),
            )
            for i in cold:
                rankings[i] = popular(sources, states[i].excluded, self.k)
        return compose_answers(
            recommender, states, rankings, attribution, candidates, self.bundle_count, self.bundle_size, cold
        )
