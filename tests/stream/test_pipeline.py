"""One micro-batch without Kafka: state in a dict, the real small model, message building and schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from model import Recommender
from model.answers import Answer, first_distinct
from model.explain import ExplainedItem, Reasons
from stream.answer import answer_content, recommendation_message
from stream.config import StreamSettings
from stream.events import ClickEvent, Rejection
from stream.pipeline import Admitted, Pipeline
from stream.schemas import load_schema
from stream.state import UserState


@pytest.fixture(scope="module")
def recommender(artifact_root: Path) -> Recommender:
    return Recommender.load(artifact_root)


def message(n: int, user: str, item: str, kind: str = "view") -> tuple[bytes, bytes]:
    body = {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": kind, "ts": 1_300_000_000 + n}
    return user.encode(), json.dumps(body).encode()


def admit_all(
    pipeline: Pipeline, states: dict[str, UserState], messages: list[tuple[bytes, bytes]]
) -> list[Admitted]:
    admitted = [pipeline.admit(key, value, states, arrived=0.0, now=100.0) for key, value in messages]
    assert not any(isinstance(a, Rejection) for a in admitted)
    return admitted  # type: ignore[return-value]


def answers_of(
    pipeline: Pipeline, recommender: Recommender, batch: list[Admitted], now: float
) -> list[Answer]:
    return [answered.answer for answered in pipeline.answer(recommender, batch, now)]


def test_popular_prefers_the_first_source_and_skips_excluded() -> None:
    items = first_distinct(
        [[("a", 5.0), ("b", 4.0)], [("b", 0.3), ("c", 0.2), ("d", 0.1)]], frozenset({"a"}), k=3
    )
    assert items == [("b", 4.0), ("c", 0.2), ("d", 0.1)]


def test_message_matches_the_schema() -> None:
    reasons = Reasons(code="personalized")
    answer = Answer((ExplainedItem(item_id="a", score=0.5, reasons=reasons, explanation="a: because of b"),))
    event = ClickEvent("e1", "u1", "a", "view", 1.0)
    body = json.loads(recommendation_message(event, "v1", answer_content(answer), datetime.now(UTC), 1.25))
    jsonschema.validate(body, load_schema("recommendation"))
    assert (body["event_id"], body["model_version"], body["bundles"]) == ("e1", "v1", [])


def test_later_answers_reflect_earlier_events(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings(top_k=10))
    states: dict[str, UserState] = {}
    items = recommender.vocab.item_ids
    first = admit_all(pipeline, states, [message(1, "u1", items[0])])
    later = admit_all(pipeline, states, [message(2, "u1", items[1]), message(3, "u1", items[2], "purchase")])
    assert later[-1].state.history == (items[0], items[1], items[2])
    before = recommender.encode([first[0].state.history])
    after = recommender.encode([later[-1].state.history], [later[-1].state.history_types])
    assert not np.allclose(before.vectors, after.vectors)

    answers = [
        answers_of(pipeline, recommender, [admitted], now=100.0)[0] for admitted in (first[0], later[-1])
    ]
    assert [len(a.items) for a in answers] == [10, 10]
    assert answers[0].items != answers[1].items
    assert items[2] not in {i.item_id for i in answers[1].items}  # purchased: never recommended again
    assert all(i.reasons.code in ("personalized", "repeat", "cold_start") for a in answers for i in a.items)


def test_a_users_events_in_one_batch_are_answered_from_their_latest_state(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings(top_k=10))
    states: dict[str, UserState] = {}
    items = recommender.vocab.item_ids
    batch = admit_all(
        pipeline,
        states,
        [message(1, "u1", items[0]), message(2, "u2", items[3]), message(3, "u1", items[1], "purchase")],
    )
    answers = answers_of(pipeline, recommender, batch, now=100.0)
    latest_u1 = answers_of(pipeline, recommender, batch[2:], now=100.0)[0]
    alone_u2 = answers_of(pipeline, recommender, batch[1:2], now=100.0)[0]
    assert answers[0] is answers[2]  # computed once for u1

    def picks(answer: Answer) -> tuple[list[str], list[tuple[str, ...]]]:  # batch padding moves scores ~1e-6
        return [i.item_id for i in answer.items], [b.items for b in answer.bundles]

    assert [picks(a) for a in answers[:2]] == [picks(latest_u1), picks(alone_u2)]
    assert items[1] not in {i.item_id for i in answers[0].items}  # bought later in the batch: excluded


def test_purchased_items_are_excluded_even_when_the_model_ranks_them_first(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings(top_k=5))
    item = recommender.vocab.item_ids[3]
    unrestricted = recommender.recommend([item], k=5)
    favourite = unrestricted[0][0]
    admitted = admit_all(pipeline, {}, [message(1, "u1", item), message(2, "u1", favourite, "purchase")])
    answer = answers_of(pipeline, recommender, admitted[-1:], now=100.0)[0]
    assert favourite not in {i.item_id for i in answer.items} and len(answer.items) == 5


def test_cold_users_get_stream_popularity_then_training_popularity(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings(top_k=5))
    states: dict[str, UserState] = {}
    trending = recommender.vocab.item_ids[-1]  # rare in training, hot in the stream
    admit_all(pipeline, states, [message(n, f"warm{n}", trending, "purchase") for n in range(3)])
    cold = admit_all(pipeline, states, [message(10, "newcomer", "never-seen-item")])
    answer = answers_of(pipeline, recommender, cold, now=100.0)[0]
    assert answer.items[0].item_id == trending
    assert len(answer.items) == 5
    assert {i.item_id for i in answer.items[1:]} <= {item for item, _ in recommender.popular(6)}
    assert all(i.reasons.code == "popular" and not i.reasons.drivers for i in answer.items)
    assert answer.bundles == ()


def test_only_users_with_a_known_item_are_searched_and_mixing_in_cold_ones_changes_no_answer(
    recommender: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = recommender.vocab.item_ids
    warm = [message(1, "w1", items[0]), message(2, "w2", items[1])]
    cold = [message(3, "c1", "never-seen-1"), message(4, "c2", "never-seen-2")]
    alone = answers_of(
        Pipeline(StreamSettings(top_k=5)), recommender, admit_all(Pipeline(StreamSettings()), {}, warm), 100.0
    )
    searched: list[int] = []
    search = recommender.search
    monkeypatch.setattr(
        recommender,
        "search",
        lambda sessions, *args: searched.append(len(sessions)) or search(sessions, *args),
    )
    pipeline = Pipeline(StreamSettings(top_k=5))
    mixed = answers_of(
        pipeline, recommender, admit_all(pipeline, {}, [cold[0], warm[0], cold[1], warm[1]]), 100.0
    )
    assert searched == [2]
    assert [mixed[1], mixed[3]] == alone
    assert all(i.reasons.code == "popular" for answer in (mixed[0], mixed[2]) for i in answer.items)


def test_redelivered_event_is_answered_again_without_changing_state(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings())
    states: dict[str, UserState] = {}
    item = recommender.vocab.item_ids[0]
    first = admit_all(pipeline, states, [message(1, "u1", item)])[0]
    again = admit_all(pipeline, states, [message(1, "u1", item)])[0]
    assert again.event.event_id == first.event.event_id and again.state == first.state


def test_warm_answers_carry_explained_bundles_and_cold_answers_none(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings(top_k=10, bundles_per_answer=3, bundle_size=3))
    states: dict[str, UserState] = {}
    items = recommender.vocab.item_ids
    bought = items[5]
    warm = admit_all(
        pipeline,
        states,
        [
            message(1, "u1", items[0]),
            message(2, "u1", items[1], "add_to_cart"),
            message(3, "u1", bought, "purchase"),
            message(4, "u2", items[7]),
        ],
    )
    cold = admit_all(pipeline, states, [message(5, "newcomer", "never-seen-item")])
    batch = [warm[2], warm[3], cold[0]]
    answers = answers_of(pipeline, recommender, batch, now=100.0)

    schema = load_schema("recommendation")
    for admitted, answer in zip(batch, answers, strict=True):
        body = recommendation_message(admitted.event, "v1", answer_content(answer), datetime.now(UTC), 1.0)
        jsonschema.validate(json.loads(body), schema)
    u1, u2, newcomer = answers
    for answer, history in ((u1, {items[0], items[1], bought}), (u2, {items[7]})):
        assert 1 <= len(answer.bundles) <= 3
        assert all(len(b.items) == 3 and len(set(b.items)) == 3 for b in answer.bundles)
        assert all(b.explanation and b.reasons.code in ("complement", "cold_start") for b in answer.bundles)
        # Items are explained by this user's own events.
        drivers = {d.item_id for i in answer.items for d in i.reasons.drivers}
        assert drivers and drivers <= history
    assert all(bought not in b.items for b in u1.bundles)  # purchased: never offered again
    assert not {items[1], bought} & {i.item_id for i in u1.items}  # in the cart or bought: not an item pick
    assert u1.bundles[0].anchor == items[1]  # the cart anchors the first bundle
    assert newcomer.bundles == () and {i.reasons.code for i in newcomer.items} == {"popular"}
    assert all(i.explanation for a in answers for i in a.items)


def test_no_bundles_when_turned_off(recommender: Recommender) -> None:
    pipeline = Pipeline(StreamSettings(bundles_per_answer=0))
    admitted = admit_all(pipeline, {}, [message(1, "u1", recommender.vocab.item_ids[0])])
    assert answers_of(pipeline, recommender, admitted, now=100.0)[0].bundles == ()
