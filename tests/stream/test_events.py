"""Input validation: every malformed message gets its DLQ reason, valid ones parse exactly."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import subprocess
import sys
from datetime import UTC, datetime

import jsonschema
import pytest

from stream.events import (
    DLQ_REASONS,
    ClickEvent,
    ForgetRequest,
    Limits,
    Rejection,
    dead_letter,
    parse_event,
)
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


def test_iso_timestamp_with_offset_is_accepted() -> None:
    event = parse_event(b"u1", encode(VALID | {"ts": "2011-05-01T12:00:00+02:00"}), LIMITS)
    assert isinstance(event, ClickEvent) and event.ts == 1304244000.0


def test_a_forget_request_needs_no_item_nor_time() -> None:
    body = {"event_id": "f1", "user_id": "u1", "type": "forget"}
    assert parse_event(b"u1", encode(body), LIMITS) == ForgetRequest("f1", "u1")
    jsonschema.validate(body, load_schema("clickstream-event"))
    missing_user = parse_event(b"u1", encode({"event_id": "f1", "type": "forget"}), LIMITS)
    assert isinstance(missing_user, Rejection) and missing_user.reason == "missing_field"
    with pytest.raises(jsonschema.ValidationError):  # a click event still needs its item and time
        click = {"event_id": "e", "user_id": "u", "type": "view"}
        jsonschema.validate(click, load_schema("clickstream-event"))


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
        (b"u1", encode(VALID | {"price": -0.01}), "wrong_type"),
        (b"u1", encode(VALID | {"quantity": -1}), "wrong_type"),
        (b"u1", encode(VALID | {"type": "click"}), "unknown_type"),
        (b"u1", encode(VALID | {"item_id": "i" * 17}), "id_too_long"),
        (b"u1", encode(VALID | {"ts": "yesterday"}), "bad_timestamp"),
        (b"u1", encode(VALID | {"ts": 5_000_000_000}), "bad_timestamp"),  # seconds after 2100
        (b"u1", encode(VALID | {"ts": 5_000_000_000_000}), "bad_timestamp"),  # milliseconds after 2100
        (b"u1", encode(VALID | {"type": "View"}), "unknown_type"),
        (b"u2", encode(VALID), "key_mismatch"),
        (None, encode(VALID), "missing_key"),
        (b"u1", encode(VALID | {"event_id": "x\ud800"}), "not_utf8"),  # an escaped lone surrogate
        (b"u1", encode(VALID | {"item_id": "\udfff"}), "not_utf8"),
        (b"u1", encode(VALID | {"ts": 10**400}), "number_out_of_range"),
        (b"u1", encode(VALID | {"price": 10**400}), "number_out_of_range"),
    ],
)
def test_malformed_input_is_rejected_with_its_reason(key: bytes, value: bytes | None, reason: str) -> None:
    rejection = parse_event(key, value, LIMITS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == reason and rejection.detail
    assert rejection.reason in DLQ_REASONS


@pytest.mark.parametrize("bound", [{"price": 0}, {"quantity": 0}, {"price": 0.0, "quantity": 1e6}])
def test_zero_and_large_prices_and_quantities_are_valid(bound: dict[str, float]) -> None:
    event = parse_event(b"u1", encode(VALID | bound), LIMITS)
    assert isinstance(event, ClickEvent)
    assert (event.price, event.quantity) == (bound.get("price"), bound.get("quantity"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "too_deep"),
        (b'{"ts": ' + b"9" * 5000 + b"}", "number_out_of_range"),  # past Python's 4,300-digit limit
    ],
)
def test_input_within_the_size_limit_that_would_exhaust_the_parser_gets_its_own_reason(
    value: bytes, reason: str
) -> None:
    rejection = parse_event(b"u1", value, Limits())
    assert isinstance(rejection, Rejection) and rejection.reason == reason


def test_dead_letter_keeps_the_original_bytes_and_validates() -> None:
    raw = b"\xff\x00 not json"
    key, value = dead_letter(
        b"k", raw, Rejection("not_utf8", "bad byte"), ("clickstream", 3, 42), datetime.now(UTC), 1024
    )
    letter = json.loads(value)
    jsonschema.validate(letter, load_schema("dlq"))
    assert key == b"k" and base64.b64decode(letter["original_value_base64"]) == raw
    assert (letter["reason"], letter["partition"], letter["offset"]) == ("not_utf8", 3, 42)
    assert letter["truncated"] is False and letter["original_value_bytes"] == len(raw)


def test_a_dead_letter_stays_small_whatever_it_carries_and_still_identifies_the_record() -> None:
    """A letter carrying a whole 1 MB payload would exceed the Kafka client's request limit."""
    raw, huge_key = bytes(range(256)) * 4096, b"k" * 100_000
    rejection = Rejection("too_large", "x" * 50_000)
    key, value = dead_letter(huge_key, raw, rejection, ("clickstream", 0, 7), datetime.now(UTC), 512)
    letter = json.loads(value)
    jsonschema.validate(letter, load_schema("dlq"))
    assert len(value) < 4096 and key == huge_key[:512]
    assert base64.b64decode(letter["original_value_base64"]) == raw[:512]
    assert letter["original_value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letter["original_value_bytes"] == len(raw) and letter["truncated"] is True
    assert len(letter["detail"]) == 1000


def mutations(rng: random.Random, seed: bytes) -> bytes:
    """A random edit of a valid message: bytes flipped, cut, repeated, or a field set to an odd value."""
    odd = [None, True, -1, 1e308, 10**30, "", "\ud800", [], {}, "x" * 300, [[[[1]]]], "9" * 40, 1.5]
    kind = rng.randrange(4)
    if kind == 0:
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:
        return seed[: rng.randrange(len(seed))]
    if kind == 2:
        return seed * rng.randint(2, 50)
    body = json.loads(seed)
    body[rng.choice([*body, "extra"])] = rng.choice(odd)
    return json.dumps(body).encode()


def test_no_mutation_of_a_valid_message_makes_validation_raise() -> None:
    """Fuzzed input: every outcome is an event or a rejection with a known reason, and its dead letter
    is valid JSON under the schema; nothing raises."""
    rng = random.Random(20261203)
    seeds = [encode(VALID), encode(VALID | {"price": 2.5, "quantity": 3, "session_id": "s"})]
    schema = load_schema("dlq")
    outcomes: set[str] = set()
    for _ in range(3000):
        key = rng.choice([b"u1", None, b"\xff", b"u2"])
        value = mutations(rng, rng.choice(seeds))
        outcome = parse_event(key, value, LIMITS)
        if isinstance(outcome, Rejection):
            assert outcome.reason in DLQ_REASONS
            _, letter = dead_letter(key, value, outcome, ("t", 0, 0), datetime.now(UTC), 64)
            jsonschema.validate(json.loads(letter), schema)
            outcomes.add(outcome.reason)
        else:
            assert isinstance(outcome, ClickEvent)
            outcomes.add("valid")
    assert {"valid", "not_json", "missing_key", "wrong_type"} <= outcomes  # the fuzzing reached far


def test_schemas_are_valid_draft_2020_12() -> None:
    for name in ("clickstream-event", "recommendation", "dlq"):
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
    assert load_schema("dlq")["properties"]["reason"]["enum"] == list(DLQ_REASONS)


def test_validating_events_loads_neither_torch_nor_faiss() -> None:
    """A producer or a tool that checks events against the contract should not pay for the model."""
    code = "import sys, stream.events; print(sorted({'torch', 'faiss'} & set(sys.modules)))"
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
