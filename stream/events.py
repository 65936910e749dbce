"""Validation of raw clickstream messages: a `ClickEvent`, a `ForgetRequest`, or a `Rejection` for the DLQ.

Every check runs on the raw bytes a producer wrote, before anything is decoded further than needed,
so no input can crash the worker: it is either a request or a dead letter with one of `DLQ_REASONS`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from model.contract import EVENT_TYPES, NON_NEGATIVE_FIELDS, timestamp_seconds

DlqReason = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "too_deep",
    "number_out_of_range",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_type",
    "id_too_long",
    "bad_timestamp",
    "missing_key",
    "key_mismatch",
    "processing_error",  # a valid event the worker failed to answer (a bug, not bad input)
]
DLQ_REASONS: tuple[DlqReason, ...] = get_args(DlqReason)

FORGET = "forget"  # the input type that erases a user (GDPR art. 17); answered with no recommendation
ID_FIELDS = ("event_id", "user_id", "item_id", "session_id")

# A dead letter's detail is for people; an exception's text can be as long as the payload it quotes.
_MAX_DETAIL_CHARS = 1000


@dataclass(frozen=True)
class ClickEvent:
    """A valid clickstream event; `ts` is epoch seconds (UTC)."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    session_id: str | None = None
    price: float | None = None
    quantity: float | None = None


@dataclass(frozen=True)
class ForgetRequest:
    """Erase everything the worker keeps about `user_id`: its session state and changelog entries."""

    event_id: str
    user_id: str


@dataclass(frozen=True)
class Rejection:
    """Why a message cannot be processed; `detail` is for people, `reason` for machines and metrics."""

    reason: DlqReason
    detail: str


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 64 * 1024
    max_id_chars: int = 256


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a bool). Raises OverflowError for integers beyond a float's range."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _decode(value: bytes | None, limits: Limits) -> dict[str, Any] | Rejection:
    """The message's top-level JSON object, or why there is none."""
    if value is not None and len(value) > limits.max_payload_bytes:
        return Rejection("too_large", f"{len(value)} bytes > limit {limits.max_payload_bytes}")
    try:
        text = (value or b"").decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("not_utf8", str(error))
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return Rejection("too_deep", "JSON nested deeper than the parser's recursion limit")
    except ValueError as error:  # JSONDecodeError, the NaN/Infinity constants, integers of 4,300+ digits
        reason: DlqReason = "number_out_of_range" if "digits" in str(error) else "not_json"
        return Rejection(reason, str(error)[:_MAX_DETAIL_CHARS])
    if not isinstance(body, dict):
        return Rejection("not_an_object", f"top-level JSON is {type(body).__name__}, expected an object")
    return body


def _check_fields(body: dict[str, Any], limits: Limits) -> Rejection | None:
    """The first rule of the contract `body` breaks (README.md, "Streaming contract"), if any."""
    required = ["event_id", "user_id", "type"]
    if body.get("type") != FORGET:  # erasure needs no item and no time
        required += ["item_id", "ts"]
    for name in required:
        if body.get(name) is None or body.get(name) == "":
            return Rejection("missing_field", f"{name} is missing or empty")
    for name in (*ID_FIELDS, "type"):
        field = body.get(name)
        if field is None:
            continue
        if not isinstance(field, str):
            return Rejection("wrong_type", f"{name} must be a string, got {type(field).__name__}")
        if len(field) > limits.max_id_chars:
            return Rejection("id_too_long", f"{name} is longer than {limits.max_id_chars} characters")
        try:
            field.encode("utf-8")
        except UnicodeEncodeError:  # an escaped lone surrogate ("\ud800"): valid JSON, not encodable text
            return Rejection("not_utf8", f"{name} holds a lone surrogate, which no UTF-8 text can carry")
    for name in NON_NEGATIVE_FIELDS:
        field = body.get(name)
        if field is not None and not (_is_number(field) and field >= 0):
            return Rejection("wrong_type", f"{name} must be a non-negative number")
    if body["type"] != FORGET and body["type"] not in EVENT_TYPES:
        types = ", ".join((*EVENT_TYPES, FORGET))
        return Rejection("unknown_type", f"type {body['type'][:64]!r} is not one of {types}")
    if body.get("ts") is not None and timestamp_seconds(body["ts"]) is None:
        return Rejection(
            "bad_timestamp", "ts must be epoch seconds or milliseconds, or ISO-8601, between 1970 and 2100"
        )
    return None


Parsed = ClickEvent | ForgetRequest | Rejection


def parse_event(key: bytes | None, value: bytes | None, limits: Limits) -> Parsed:
    """Validate one input message against the contract in README.md ("Streaming contract")."""
    body = _decode(value, limits)
    if isinstance(body, Rejection):
        return body
    try:
        broken = _check_fields(body, limits)
    except OverflowError:  # an integer beyond a float's range, in a number field
        return Rejection("number_out_of_range", "a number is beyond the range of a 64-bit float")
    if broken is not None:
        return broken
    # The key decides the partition, and so which worker holds the user's state.
    if key is None:
        return Rejection("missing_key", "the message key must be the user_id (UTF-8); it has none")
    if key != body["user_id"].encode("utf-8"):
        return Rejection("key_mismatch", "the message key must be the user_id")
    if body["type"] == FORGET:
        return ForgetRequest(event_id=body["event_id"], user_id=body["user_id"])
    return ClickEvent(
        event_id=body["event_id"],
        user_id=body["user_id"],
        item_id=body["item_id"],
        type=body["type"],
        ts=float(timestamp_seconds(body["ts"])),  # type: ignore[arg-type]
        session_id=body.get("session_id"),
        price=None if body.get("price") is None else float(body["price"]),
        quantity=None if body.get("quantity") is None else float(body["quantity"]),
    )


def _kept(data: bytes | None, keep_bytes: int) -> str | None:
    return None if data is None else base64.b64encode(data[:keep_bytes]).decode("ascii")


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    rejection: Rejection,
    source: tuple[str, int, int],
    received_at: datetime,
    keep_bytes: int,
) -> tuple[bytes | None, bytes]:
    """The DLQ record (key, value). Its value: the first `keep_bytes` of the original key and value
    (base64: any bytes survive JSON), the value's size and SHA-256, the reason, and where the original is.

    Bounded whatever the input: a letter carrying a whole oversized payload would exceed the Kafka
    client's request limit, fail to send, and stop the worker on the same record after every restart.
    The topic, partition and offset find the whole record for as long as the input topic keeps it, so
    the DLQ needs to keep no more of a user's payload than what makes the letter readable. The record's
    key is the original key, cut the same way.
    """
    topic, partition, offset = source
    letter = json.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail[:_MAX_DETAIL_CHARS],
            "original_key_base64": _kept(key, keep_bytes),
            "original_value_base64": _kept(value, keep_bytes),
            "original_value_bytes": None if value is None else len(value),
            "original_value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
            "truncated": any(data is not None and len(data) > keep_bytes for data in (key, value)),
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": received_at.isoformat(),
        }
    ).encode("utf-8")
    return (None if key is None else key[:keep_bytes]), letter
