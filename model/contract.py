"""The clickstream event contract, defined once.

The stream validates each message against these rules (`stream.events.parse_event`, published as
stream/schemas/clickstream-event.schema.json, which a test keeps equal to them) and the offline event-log
reader validates each row against the same ones (`model.data.read_events`): an event the stream answers
is an event training learns from, and one the stream dead-letters is a bad row offline.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")  # exact, lower case
NON_NEGATIVE_FIELDS = ("price", "quantity")  # optional; when given, a number >= 0

TS_MAX_S = 4_102_444_800.0  # 2100-01-01 UTC: timestamps run from the epoch up to here
# An epoch number at least this large is milliseconds: as seconds it would be after the year 5000.
EPOCH_MS_FROM = 1e11


def epoch_seconds(number: float) -> float | None:
    """Epoch seconds from epoch seconds or milliseconds; None when outside 1970..2100 (or not finite)."""
    if not math.isfinite(number):
        return None
    seconds = number / 1000.0 if number >= EPOCH_MS_FROM else number
    return seconds if 0.0 <= seconds <= TS_MAX_S else None


def iso_seconds(text: str) -> float | None:
    """Epoch seconds from ISO-8601 (with a zone, or naive meaning UTC); None when it is not ISO-8601 or
    outside 1970..2100."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return seconds if 0.0 <= seconds <= TS_MAX_S else None


def timestamp_seconds(value: object) -> float | None:
    """A `ts` as epoch seconds: a number (seconds or milliseconds), digits in text (what a CSV cell holds),
    or ISO-8601 text; None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return epoch_seconds(float(value))
    if isinstance(value, str):
        try:
            return epoch_seconds(float(value))
        except ValueError:
            return iso_seconds(value)
    return None
