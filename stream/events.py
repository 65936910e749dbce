"""Validation of raw clickstream messages: a `ClickEvent`, or a `Rejection` with a reason for the DLQ.

Every check runs on the raw bytes a producer wrote, before anything is decoded further than needed,
so no input can crash the worker: it is either an event or a dead letter with one of `DLQ_REASONS`.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from model.data import EVENT_TYPES

DlqReason = Literal[
    "too_large",
    "not_utf8",
    "not_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_type",
    "id_too_long",
    "bad_timestamp",
    "key_mismatch",
    "processing_error",  # a valid event the worker failed to answer (a bug, not bad input)
]
DLQ_REASONS: tuple[DlqReason, ...] = get_args(DlqReason)

# Epoch seconds beyond this (year 2100) are almost surely milliseconds or garbage, not seconds.
_MAX_EPOCH_S = 4_102_444_800.0


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
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from epoch seconds (number) or ISO-8601 (naive means UTC); None when neither."""
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        return None
    return seconds if 0 <= seconds <= _MAX_EPOCH_S else None


def parse_event(key: bytes | None, value: bytes | None, limits: Limits) -> ClickEvent | Rejection:
    """Validate one input message against the contract in README.md ("Streaming contract")."""
    if value is not None and len(value) > limits.max_payload_bytes:
        return Rejection("too_large", f"{len(value)} bytes > limit {limits.max_payload_bytes}")
    try:
        text = (value or b"").decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("not_utf8", str(error))
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:  # JSONDecodeError and the NaN/Infinity constants
        return Rejection("not_json", str(error))
    if not isinstance(body, dict):
        return Rejection("not_an_object", f"top-level JSON is {type(body).__name__}, expected an object")

    for name in ("event_id", "user_id", "item_id", "type", "ts"):
        if body.get(name) is None or body.get(name) == "":
            return Rejection("missing_field", f"{name} is missing or empty")
    for name in ("event_id", "user_id", "item_id", "type", "session_id"):
        field = body.get(name)
        if field is not None and not isinstance(field, str):
            return Rejection("wrong_type", f"{name} must be a string, got {type(field).__name__}")
    for name in ("event_id", "user_id", "item_id", "session_id"):
        if len(body.get(name) or "") > limits.max_id_chars:
            return Rejection("id_too_long", f"{name} is longer than {limits.max_id_chars} characters")
    for name in ("price", "quantity"):
        field = body.get(name)
        if field is not None and not (_is_number(field) and field >= 0):
            return Rejection("wrong_type", f"{name} must be a non-negative number")
    if body["type"] not in EVENT_TYPES:
        return Rejection("unknown_type", f"type {body['type'][:64]!r} is not one of {', '.join(EVENT_TYPES)}")
    ts = parse_timestamp(body["ts"])
    if ts is None:
        return Rejection("bad_timestamp", "ts must be ISO-8601 or epoch seconds between 1970 and 2100")
    if key is not None and key != body["user_id"].encode("utf-8"):
        # The key decides the partition and so which worker holds the user's state.
        return Rejection("key_mismatch", "the message key must be the user_id")
    return ClickEvent(
        event_id=body["event_id"],
        user_id=body["user_id"],
        item_id=body["item_id"],
        type=body["type"],
        ts=ts,
        session_id=body.get("session_id"),
        price=None if body.get("price") is None else float(body["price"]),
        quantity=None if body.get("quantity") is None else float(body["quantity"]),
    )


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    rejection: Rejection,
    source: tuple[str, int, int],
    received_at: datetime,
) -> bytes:
    """The DLQ message: original key and value as base64 (any bytes survive JSON), reason, and origin."""
    topic, partition, offset = source
    return json.dumps(
        {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "original_key_base64": None if key is None else base64.b64encode(key).decode("ascii"),
            "original_value_base64": None if value is None else base64.b64encode(value).decode("ascii"),
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": received_at.isoformat(),
        }
    ).encode("utf-8")
