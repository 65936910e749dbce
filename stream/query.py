"""The query API's logic, without a server: a request checked, a session answered as JSON.

`stream.web` serves it on every worker: `GET /recommendations/{user_id}` (from the user's current state,
on the worker that holds it) and `POST /recommendations` (an anonymous session given in the body, nothing
stored). Both answer through the model's one answer seam, as the stream does, with the JSON of the
stream's answers (stream/schemas/recommendation-query.schema.json).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import orjson

from model.answers import Answer, Query
from stream.answer import answer_content
from stream.config import StreamSettings
from stream.state import UserState

MAX_K = 100  # items one request may ask for
MAX_BUNDLES = 10
MAX_EXCLUDED = 200  # ids in `exclude`
PARAMETERS = ("k", "bundles", "exclude")
SESSION_FIELDS = ("items", "cart")


class BadRequest(ValueError):
    """A request the API refuses (HTTP 400); the message says what is wrong in one line."""


@dataclass(frozen=True)
class Ask:
    """What a request asks for: k items, up to `bundles` bundles, none of `exclude`."""

    k: int
    bundles: int
    exclude: frozenset[str]


def parse_parameters(pairs: Iterable[tuple[str, str]], settings: StreamSettings) -> Ask:
    """The query string's (name, value) pairs, repeats included: `k`, `bundles`, `exclude` (comma-separated
    and/or repeated). Defaults: the worker's `top_k` (at most MAX_K) and `bundles_per_answer`."""
    k, bundles, exclude = min(settings.top_k, MAX_K), settings.bundles_per_answer, set()
    for name, value in pairs:
        if name == "k":
            k = _bounded_int(name, value, 1, MAX_K)
        elif name == "bundles":
            bundles = _bounded_int(name, value, 0, MAX_BUNDLES)
        elif name == "exclude":
            exclude.update(item for item in value.split(",") if item)
        else:
            raise BadRequest(f"unknown parameter {name[:64]!r}: the parameters are {', '.join(PARAMETERS)}")
    if len(exclude) > MAX_EXCLUDED:
        raise BadRequest(f"exclude names {len(exclude)} items; at most {MAX_EXCLUDED}")
    for item in exclude:
        check_id("an excluded item id", item, settings)
    return Ask(k, bundles, frozenset(exclude))


def _bounded_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {value[:32]!r}") from None
    if not low <= number <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {number}")
    return number


def check_id(what: str, value: str, settings: StreamSettings) -> None:
    if not 1 <= len(value) <= settings.max_id_chars:
        raise BadRequest(f"{what} must have 1 to {settings.max_id_chars} characters")


def parse_session(body: bytes, settings: StreamSettings) -> tuple[list[str], list[str]]:
    """(items, cart) of a POST body `{"items": [...], "cart": [...]}`: an anonymous session, oldest first."""
    if len(body) > settings.max_payload_bytes:
        raise BadRequest(f"the body has {len(body):,} bytes; at most {settings.max_payload_bytes:,}")
    try:
        session = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(
            'the body must be JSON: {"items": [item ids, oldest first], "cart": [item ids]}'
        ) from None
    if not isinstance(session, dict):
        raise BadRequest('the body must be a JSON object: {"items": [...], "cart": [...]}')
    unknown = sorted(set(session) - set(SESSION_FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:64]!r}: the fields are {', '.join(SESSION_FIELDS)}")
    lists = []
    for field in SESSION_FIELDS:
        values = session.get(field, [])
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise BadRequest(f"{field} must be a list of item ids (strings)")
        if len(values) > settings.session_max_events:
            raise BadRequest(f"{field} has {len(values)} items; at most {settings.session_max_events}")
        for value in values:
            check_id(f"an item id in {field}", value, settings)
        lists.append(values)
    return lists[0], lists[1]


def query_for_user(state: UserState, ask: Ask) -> Query:
    """A user's session as the stream would answer it, less what the request excludes."""
    return Query(state.history, state.history_types, state.cart, frozenset(state.purchased) | ask.exclude)


def query_for_session(items: list[str], cart: list[str], ask: Ask) -> Query:
    """An anonymous session: items viewed (cart items count as added to the cart, after them)."""
    return Query([*items, *cart], ["view"] * len(items) + ["add_to_cart"] * len(cart), cart, ask.exclude)


def answer_json(user_id: str | None, model_version: str, answer: Answer, generated_at: datetime) -> bytes:
    """The response body: the stream's answer (items, bundles) with who, which model, when, and whether
    the items are popularity's (`cold_start`: no item of the session is known to the model)."""
    return answer_json_of(user_id, model_version, answer.cold_start, answer_content(answer), generated_at)


def answer_json_of(
    user_id: str | None, model_version: str, cold_start: bool, content: bytes, generated_at: datetime
) -> bytes:
    """`answer_json` around an answer's serialised content (`stream.answer.answer_content`)."""
    head = orjson.dumps(
        {
            "user_id": user_id,
            "model_version": model_version,
            "generated_at": generated_at.isoformat(),
            "cold_start": cold_start,
        }
    )
    return b"".join((head[:-1], b",", content, b"}"))


SessionKey = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], frozenset[str]]


def session_key(query: Query) -> SessionKey:
    """What an answer depends on besides the model: the session, its event types, the cart, the exclusions."""
    return tuple(query.history), tuple(query.event_types), tuple(query.cart), frozenset(query.exclude)


@dataclass(frozen=True)
class RecentAnswer:
    """An answer the stream published (never a cold start: those follow live popularity)."""

    model_version: str
    session: SessionKey
    k: int
    bundles: int
    content: bytes
    generated_at: datetime


class RecentAnswers:
    """The stream's latest answer for each of the last `capacity` users it answered.

    Shop pages ask about users who are active, and the stream has just answered their last event. While a
    user's session, the model version and the request's shape are what they were then, that answer is the
    one a query would compute (the answer seam is deterministic; popularity answers, which move with the
    stream's trending items, are not kept), so a query costs a lookup instead of a forward with every
    leave-one-out variant. Any change to the session (a new event, an expiry, an erasure) makes the entry
    miss; `forget` drops it at once.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[str, RecentAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def put(self, user_id: str, answer: RecentAnswer) -> None:
        if self.capacity <= 0:
            return
        self._answers[user_id] = answer
        self._answers.move_to_end(user_id)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def get(
        self, user_id: str, model_version: str, query: Query, k: int, bundles: int
    ) -> RecentAnswer | None:
        """The kept answer, if it answered exactly this session, with this model, in this shape."""
        found = self._answers.get(user_id)
        if found is None or (found.model_version, found.k, found.bundles) != (model_version, k, bundles):
            return None
        return found if found.session == session_key(query) else None

    def forget(self, user_id: str) -> None:
        self._answers.pop(user_id, None)


class QueryTraffic:
    """Whether the query API was asked anything in the last `idle_s` seconds.

    A worker computes its micro-batches' answers off the event loop while queries come, so that none waits
    for a batch's forwards; without queries it computes them on the loop, where the stream's own answers
    are faster (p99 at 1,000 events/s about 40% lower; BENCHMARKS.md, "Stream"). The first query after a
    quiet spell waits for at most the batch under way.
    """

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self.last: float | None = None

    def note(self) -> None:
        self.last = self.clock()

    def recent(self) -> bool:
        return self.last is not None and self.clock() - self.last < self.idle_s


def error_json(message: str) -> bytes:
    return orjson.dumps({"error": message})
