"""Input validation: every malformed message gets its DLQ reason, valid ones parse exactly."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import jsonschema
import pytest

from stream.events import DLQ_REASONS, ClickEvent, Limits, Rejection, dead_letter, parse_event
from stream.schemas import load_schema

LIMITS = Limits(max_payload_bytes=1024, max_id_chars=16)
VALID = {"event_id": "e1", "user_id": "u1", "item_id": "85123A", "type": "view", "ts": 1_700_000_000}


def encode(body: object) -> bytes:
    return json.dumps(body).encode()


def test_valid_event_parses_with_optional_fields() -> None:
    body = VALID | {"session_id": "s1", "price": 2.55, "quantity": 6, "ts": "2011-05-01T10:00:00"}
    event = parse_event(b"u1", encode(body), LIMITS)
    assert event == ClickEvent("e1", "u1", "85123A", "view", 1304244000.0, "s1", 2.55, 6.0)
    jsonschema.validate(body, load_schema("clickstream-event"))


def test_iso_timestamp_with_offset_and_missing_key_are_accepted() -> None:
    event = parse_event(None, encode(VALID | {"ts": "2011-05-01T12:00:00+02:00"}), LIMITS)
    assert isinstance(event, ClickEvent) and event.ts == 1304244000.0


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"u1", b"x" * 1025, "too_large"),
        (b"u1", b"\xff\xfe{}", "not_utf8"),
        (b"u1", b"{not json", "not_json"),
        (b"u1", b'{"ts": NaN}', "not_json"),
        (b"u1", None, "not_json"),
        (b"u1", b"[1, 2]", "not_an_object"),
        (b"u1", encode({k: v for k, v in VALID.items() if k != "item_id"}), "missing_field"),
        (b"u1", encode(VALID | {"event_id": ""}), "missing_field"),
        (b"u1", encode(VALID | {"item_id": 85123}), "wrong_type"),
        (b"u1", encode(VALID | {"price": "2.55"}), "wrong_type"),
        (b"u1", encode(VALID | {"quantity": True}), "wrong_type"),
        (b"u1", encode(VALID | {"type": "click"}), "unknown_type"),
        (b"u1", encode(VALID | {"item_id": "i" * 17}), "id_too_long"),
        (b"u1", encode(VALID | {"ts": "yesterday"}), "bad_timestamp"),
        (b"u1", encode(VALID | {"ts": 1_700_000_000_000}), "bad_timestamp"),
        (b"u2", encode(VALID), "key_mismatch"),
    ],
)
def test_malformed_input_is_rejected_with_its_reason(key: bytes, value: bytes | None, reason: str) -> None:
    rejection = parse_event(key, value, LIMITS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason and rejection.detail
    assert rejection.reason in DLQ_REASONS


def test_dead_letter_keeps_the_original_bytes_and_validates() -> None:
    raw = b"\xff\x00 not json"
    letter = json.loads(
        dead_letter(b"k", raw, Rejection("not_utf8", "bad byte"), ("clickstream", 3, 42), datetime.now(UTC))
    )
    jsonschema.validate(letter, load_schema("dlq"))
    assert base64.b64decode(letter["original_value_base64"]) == raw
    assert (letter["reason"], letter["partition"], letter["offset"]) == ("not_utf8", 3, 42)


def test_schemas_are_valid_draft_2020_12() -> None:
    for name in ("clickstream-event", "recommendation", "dlq"):
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
    assert load_schema("dlq")["properties"]["reason"]["enum"] == list(DLQ_REASONS)
