"""The time rule: what time an event counts at, whatever its producer wrote.

An event's time decides which deletions cover it, so no input may be able to move it
where a deletion cannot reach it (a stored time far in the future escapes every later
deletion) or move a deletion where it suppresses learning for good (a tombstone far in the
future drops every later interaction). The rule:

1. The time is read from the message: a JSON number (seconds since the epoch), or an
   ISO-8601 string; missing or null falls back to the Kafka message timestamp, which
   every read of the message (a replay too) sees alike; to the time the message was
   received only where it has none.
2. A number is read in the unit its magnitude allows: below 1e11 seconds (up to the year
   5138), then milliseconds, microseconds, nanoseconds. A producer that writes
   milliseconds (the most common mistake) is read correctly.
3. A time is never later than the message's own timestamp nor than the moment the
   service received it. One further ahead of the message's timestamp than the allowed
   clock skew, negative, or unreadable counts as that timestamp. Times are kept to the
   millisecond.

So a stored interaction's time is at most its arrival, and a later deletion (whose time
is at most *its* arrival) can always reach it; and a deletion's effective time is at most
the moment it was processed, so it never suppresses what happens after. Every adjustment
is counted by a metric and logged with a hash of the scope, never the id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_CLOCK_SKEW_S = 300.0

# Magnitude bounds of each unit, in order: a number below the bound is read in that unit.
_UNITS = ((1e11, 1.0, None), (1e14, 1e-3, "milliseconds"), (1e17, 1e-6, "microseconds"),
          (1e20, 1e-9, "nanoseconds"))  # fmt: skip

# What the rule did to a time; bounded on purpose (a metric label).
ADJUSTMENTS = (
    "milliseconds",  # read as milliseconds
    "microseconds",
    "nanoseconds",
    "future",  # further ahead than the clock skew: counted at arrival
    "negative",  # before 1970: counted at arrival
    "unreadable",  # neither a number nor an ISO-8601 time: counted at arrival
    "missing",  # absent or null, nothing to fall back on: counted at arrival
)


class UnreadableTime(ValueError):
    """The value is neither a number nor an ISO-8601 time."""


@dataclass(frozen=True, slots=True)
class EventTime:
    seconds: float  # the event's time under the rule: never after `received`
    adjustment: str | None  # one of ADJUSTMENTS, or None when taken as written


def parse_time_value(value: object) -> float:
    """A JSON value as seconds (raw magnitude, before the unit rule). UnreadableTime else."""
    if isinstance(value, bool):
        raise UnreadableTime(f"a boolean is not a time: {value!r}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return math.inf
        if math.isnan(number):
            raise UnreadableTime("NaN is not a time")
        return number
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise UnreadableTime(f"not an ISO-8601 time: {value[:40]!r}") from None
        if moment.tzinfo is None:  # a time without an offset is read as UTC
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise UnreadableTime(f"a {type(value).__name__} is not a time")


def event_time(
    raw: float | None,
    received: float,
    skew_s: float = DEFAULT_CLOCK_SKEW_S,
    fallback: float | None = None,
    reference: float | None = None,
) -> EventTime:
    """Apply the rule to a raw time (seconds-or-other-unit, None when missing).

    `fallback` (seconds) stands in for a missing time: the Kafka message timestamp.
    `reference` (seconds): the message's own timestamp, which every read of the message
    sees alike. A time is judged against it rather than the moment of reading, so a replay
    read minutes later gives the event the same time; and it is never later than either.
    Times are kept to the millisecond.
    """
    limit = received if reference is None else min(reference, received)
    horizon = (received if reference is None else reference) + skew_s
    if raw is None:
        if fallback is None:
            return EventTime(_ms(limit), "missing")
        return _bounded(fallback, limit, horizon, None)
    if math.isnan(raw):
        return EventTime(_ms(limit), "unreadable")
    if raw < 0:
        return EventTime(_ms(limit), "negative")
    for bound, scale, unit in _UNITS:
        if raw < bound:
            return _bounded(raw * scale, limit, horizon, unit)
    return EventTime(_ms(limit), "future")


def _bounded(seconds: float, limit: float, horizon: float, unit: str | None) -> EventTime:
    if seconds > horizon:
        return EventTime(_ms(limit), "future")
    # Within the skew a clock that runs ahead is not an error, but the time still may
    # not pass the message's own (or its arrival): that is what keeps it inside a later
    # deletion's reach.
    return EventTime(_ms(min(seconds, limit)), unit)


def _ms(seconds: float) -> float:
    """Down to the millisecond, as the state keeps times (never later than `seconds`)."""
    kept = math.floor(seconds * 1000.0) / 1000.0
    return kept if kept <= seconds else math.nextafter(kept, -math.inf)
