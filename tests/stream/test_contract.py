"""One event contract (`model.contract`): the stream and the offline reader accept and reject the same
events, read their timestamps alike, and the published JSON Schema says the same."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from model.contract import EPOCH_MS_FROM, EVENT_TYPES, TS_MAX_S
from model.data import read_events
from stream.events import FORGET, ClickEvent, Limits, Rejection, parse_event
from stream.schemas import load_schema

BASE = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "ts": 1_300_000_000}

CASES = [  # (fields changed from BASE, epoch seconds when valid, else None)
    ({}, 1_300_000_000.0),
    ({"ts": 1_300_000_000_500}, 1_300_000_000.5),  # milliseconds
    ({"ts": 1_300_000_000.25}, 1_300_000_000.25),
    ({"ts": "1300000000"}, 1_300_000_000.0),  # digits in text, as a CSV cell holds them
    ({"ts": "2011-03-13T07:06:40Z"}, 1_300_000_000.0),
    ({"ts": "2011-03-13T09:06:40+02:00"}, 1_300_000_000.0),
    ({"ts": "2011-03-13T07:06:40"}, 1_300_000_000.0),  # naive means UTC
    ({"ts": 0}, 0.0),
    ({"ts": TS_MAX_S}, TS_MAX_S),
    ({"ts": TS_MAX_S + 1}, None),
    ({"ts": EPOCH_MS_FROM - 1}, None),  # too late for seconds, too early for milliseconds
    ({"ts": -1}, None),
    ({"ts": 5_000_000_000_000}, None),
    ({"ts": "yesterday"}, None),
    ({"type": "View"}, None),
    ({"type": "click"}, None),
    ({"price": 0, "quantity": 0}, 1_300_000_000.0),
    ({"price": -0.5}, None),
    ({"quantity": -1}, None),
]


def offline(fields: dict[str, object], tmp_path: Path) -> float | None:
    log = tmp_path / "events.jsonl"
    log.write_text(json.dumps(BASE | fields) + "\n")
    events = read_events(log).events
    return None if events.empty else events["ts"].iloc[0].timestamp()


@pytest.mark.parametrize(("fields", "seconds"), CASES, ids=[json.dumps(f) for f, _ in CASES])
def test_the_stream_and_training_agree_on_every_event(
    fields: dict[str, object], seconds: float | None, tmp_path: Path
) -> None:
    body = BASE | fields
    parsed = parse_event(b"u1", json.dumps(body).encode(), Limits())
    online = parsed.ts if isinstance(parsed, ClickEvent) else None
    assert isinstance(parsed, ClickEvent | Rejection)
    assert online == pytest.approx(seconds) if seconds is not None else online is None
    assert offline(fields, tmp_path) == (pytest.approx(seconds, abs=1e-6) if seconds is not None else None)


def test_the_published_schema_states_the_contract() -> None:
    schema = load_schema("clickstream-event")
    properties = schema["properties"]
    assert properties["type"]["enum"] == [*EVENT_TYPES, FORGET]
    numbers = [b for b in properties["ts"]["oneOf"] if b["type"] == "number"]
    assert [(b["minimum"], b["maximum"]) for b in numbers] == [
        (0, TS_MAX_S),
        (EPOCH_MS_FROM, TS_MAX_S * 1000),
    ]
    assert properties["price"]["minimum"] == properties["quantity"]["minimum"] == 0
    for fields, seconds in CASES:
        body = BASE | fields
        if seconds is not None and not isinstance(body["ts"], str):
            jsonschema.validate(body, schema)
