"""The query API's logic without a server: requests checked, answers in the published JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from model import Recommender
from model.answers import Query
from stream.answer import answer_content
from stream.config import StreamSettings
from stream.pipeline import Admitted, Pipeline, query_for
from stream.query import (
    MAX_EXCLUDED,
    MAX_K,
    Ask,
    BadRequest,
    QueryTraffic,
    RecentAnswer,
    RecentAnswers,
    answer_json,
    parse_parameters,
    parse_session,
    query_for_session,
    query_for_user,
    session_key,
)
from stream.schemas import validator
from stream.state import UserState

SETTINGS = StreamSettings(top_k=20, bundles_per_answer=3, max_id_chars=16, session_max_events=5)


def test_parameters_default_to_the_workers_answer_and_read_repeats() -> None:
    assert parse_parameters([], SETTINGS) == Ask(20, 3, frozenset())
    ask = parse_parameters([("k", "5"), ("bundles", "0"), ("exclude", "a,b"), ("exclude", "c")], SETTINGS)
    assert ask == Ask(5, 0, frozenset({"a", "b", "c"}))


@pytest.mark.parametrize(
    ("pairs", "says"),
    [
        ([("kk", "5")], "unknown parameter 'kk'"),
        ([("k", "0")], "k must be between 1 and"),
        ([("k", str(MAX_K + 1))], "k must be between"),
        ([("k", "ten")], "k must be a whole number"),
        ([("bundles", "11")], "bundles must be between 0 and 10"),
        ([("exclude", "x" * 17)], "an excluded item id must have 1 to 16 characters"),
        ([("exclude", ",".join(map(str, range(MAX_EXCLUDED + 1))))], f"at most {MAX_EXCLUDED}"),
    ],
)
def test_bad_parameters_are_refused_in_one_line(pairs: list[tuple[str, str]], says: str) -> None:
    with pytest.raises(BadRequest, match=says) as refused:
        parse_parameters(pairs, SETTINGS)
    assert "\n" not in str(refused.value)


def test_a_session_body_is_items_and_cart() -> None:
    assert parse_session(b'{"items": ["a", "b"], "cart": ["c"]}', SETTINGS) == (["a", "b"], ["c"])
    assert parse_session(b"{}", SETTINGS) == ([], [])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "must be JSON"),
        (b'["a"]', "must be a JSON object"),
        (b'{"items": ["a"], "user": "u"}', "unknown field 'user'"),
        (b'{"items": "a"}', "items must be a list"),
        (b'{"cart": [1]}', "cart must be a list of item ids"),
        (b'{"items": ["a", "b", "c", "d", "e", "f"]}', "at most 5"),
        (b'{"items": [""]}', "must have 1 to 16 characters"),
        (b'{"items": []}' + b" " * (64 * 1024), "bytes; at most"),
    ],
)
def test_bad_session_bodies_are_refused(body: bytes, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        parse_session(body, SETTINGS)


def test_a_users_query_leaves_out_purchases_the_cart_and_what_the_page_excludes() -> None:
    state = UserState(cart=("c",), purchased=("p",))
    query = query_for_user(state, Ask(5, 1, frozenset({"x"})))
    assert query.excluded_items == {"c", "p", "x"} and query.cart == ("c",)
    anonymous = query_for_session(["a", "b"], ["c"], Ask(5, 1, frozenset()))
    assert list(anonymous.history) == ["a", "b", "c"] and list(anonymous.event_types)[-1] == "add_to_cart"


def test_answers_are_valid_against_the_published_schema(artifact_root: Path) -> None:
    recommender = Recommender.load(artifact_root)
    known = recommender.vocab.item_ids[:3]
    check = validator("recommendation-query")
    for user, query in (
        ("u1", query_for_session(known[:2], known[2:], Ask(7, 2, frozenset()))),
        (None, query_for_session(["never-seen"], [], Ask(7, 2, frozenset()))),
    ):
        (answer,) = recommender.answer_batch([query], 7, 2, 3)
        body = json.loads(answer_json(user, recommender.version, answer, datetime.now(UTC)))
        check.validate(body)
        assert body["user_id"] == user and len(body["items"]) == 7
        assert body["cold_start"] == (user is None) and (body["bundles"] == []) == (user is None)


def test_the_streams_answer_for_a_state_is_the_answer_a_query_computes_for_it(artifact_root: Path) -> None:
    """What lets the query API return the stream's answer: for the same state and model it is byte for byte
    the answer a query would compute, and both see the same session."""
    recommender = Recommender.load(artifact_root)
    settings = StreamSettings(top_k=20, bundles_per_answer=3)
    pipeline, states = Pipeline(settings), {}
    now = 1_300_000_000.0
    admitted = []
    for n, item in enumerate(recommender.vocab.item_ids[5:9]):
        kind = "add_to_cart" if n == 2 else "view"
        body = {"event_id": f"e{n}", "user_id": "u1", "item_id": item, "type": kind, "ts": now + n}
        outcome = pipeline.admit(b"u1", json.dumps(body).encode(), states, 0.0, now + n)
        assert isinstance(outcome, Admitted)
        admitted.append(outcome)
    (streamed, *_) = pipeline.answer(recommender, admitted[-1:], now)
    state = admitted[-1].state
    ask = parse_parameters([], settings)
    (queried,) = recommender.answer_batch(
        [query_for_user(state, ask)], ask.k, ask.bundles, settings.bundle_size
    )
    assert not queried.cold_start and state.cart
    assert streamed.content == answer_content(queried)
    assert session_key(query_for(state)) == session_key(query_for_user(state, ask))


def kept_answer(query: Query, version: str = "v1", k: int = 20, bundles: int = 3) -> RecentAnswer:
    return RecentAnswer(
        version, session_key(query), k, bundles, b'"items":[],"bundles":[]', datetime.now(UTC)
    )


def test_a_kept_answer_is_returned_only_for_the_same_session_model_and_shape() -> None:
    answers, session = RecentAnswers(capacity=10), Query(["a", "b"], ["view", "view"], (), ("p",))
    answers.put("u1", kept_answer(session))
    assert answers.get("u1", "v1", Query(["a", "b"], None, [], frozenset({"p"})), 20, 3) is not None
    assert answers.get("u2", "v1", session, 20, 3) is None
    assert answers.get("u1", "v2", session, 20, 3) is None  # another model
    assert answers.get("u1", "v1", session, 10, 3) is None and answers.get("u1", "v1", session, 20, 0) is None
    assert answers.get("u1", "v1", Query(["a", "b", "c"], None, (), ("p",)), 20, 3) is None  # a new event
    assert answers.get("u1", "v1", Query(["a", "b"], ["view", "add_to_cart"], (), ("p",)), 20, 3) is None
    assert answers.get("u1", "v1", Query(["a", "b"], None, (), ("p", "x")), 20, 3) is None  # ?exclude=x
    answers.forget("u1")
    assert answers.get("u1", "v1", session, 20, 3) is None


def test_kept_answers_are_bounded_least_recently_answered_first_out() -> None:
    answers, session = RecentAnswers(capacity=2), Query(["a"])
    for user in ("u1", "u2", "u1", "u3"):
        answers.put(user, kept_answer(session))
    assert len(answers) == 2 and answers.get("u2", "v1", session, 20, 3) is None
    assert answers.get("u1", "v1", session, 20, 3) and answers.get("u3", "v1", session, 20, 3)
    off = RecentAnswers(capacity=0)
    off.put("u1", kept_answer(session))
    assert len(off) == 0


def test_query_traffic_is_recent_for_idle_s_after_the_last_query() -> None:
    now = [100.0]
    traffic = QueryTraffic(30.0, clock=lambda: now[0])
    assert not traffic.recent()  # no query yet: the worker answers on its event loop
    traffic.note()
    now[0] += 29.9
    assert traffic.recent()
    traffic.note()
    now[0] += 30.0
    assert not traffic.recent()
    traffic = QueryTraffic(0.0, clock=lambda: now[0])
    traffic.note()
    assert not traffic.recent()  # 0: always on the loop
