"""Event schemas and validation: every Kafka message becomes one event or one rejection.

interactions topic: {"user": "42", "item": "1193", "weight": 4.0, "ts": 978300760.0}
    weight defaults to 1, ts to the message timestamp.
deletions topic:    {"user": "42", "item": "1193", "ts": 978400000.0, "request_id": "r-17"}
    without "item": the user's whole history; without "user": the item's. An explicit
    null for either is ambiguous (a bug upstream, not a wider request): dead-lettered.
    ts defaults to the message timestamp (every replay reads the same); a numeric
    request_id is read as its decimal string.

Times go through the time rule (event_time.py): numbers in any unit, ISO-8601 strings, and
never later than the message's own timestamp or the event's arrival, to the millisecond.
A deletion is never dead-lettered for its time: an unreadable one counts as its message's
timestamp, and the receipt says so.

A rejection carries a reason from a fixed set (it becomes the dead-letter header and a
metric label, so the set must stay bounded) and a human-readable detail.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from consumer.event_time import DEFAULT_CLOCK_SKEW_S, EventTime, UnreadableTime, event_time
from consumer.event_time import parse_time_value as _time_value

MAX_ID_BYTES = 256
MAX_REQUEST_ID_BYTES = 256
DEFAULT_MAX_MESSAGE_BYTES = 4096
RESERVED_ID = "*"  # the wildcard of the deletions file format
# The largest weight the state holds: rows store float32 (sums are checked in the engine).
MAX_WEIGHT = float(np.finfo(np.float32).max)

Scope = Literal["pair", "user", "item"]

# The reasons a message is dead-lettered; bounded on purpose (metric label, header value).
REASONS = (
    "oversized",
    "not_utf8",
    "not_json",
    "duplicate_key",
    "not_object",
    "missing_id",
    "bad_id",
    "bad_weight",
    "bad_ts",
    "bad_request_id",
    "null_id",  # a deletion with "user": null or "item": null: ambiguous, never widened
    "unprocessable",  # valid, but its batch failed with it alone: isolated, not retried
)


# The source of the deletions a retention window makes (consumer/pipeline/retention.py):
# partition = the shard, offset = the shard's retention counter. Never a Kafka topic.
RETENTION_TOPIC = "unlearn.retention"


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event came from: what offsets and replays are keyed by.

    `epoch` counts the lives of the topic: a topic deleted and created again starts its
    offsets over, so its messages are told apart from the old ones by the epoch (0 for
    the first life, which keeps the plain "topic:partition" keys).
    """

    topic: str
    partition: int
    offset: int
    epoch: int = 0
    # The message's fingerprint (positions.fingerprint): recorded with the offsets, so a
    # re-created topic's messages are never taken for the ones applied before.
    fingerprint: str = field(default="", compare=False, repr=False)
    # The message's timestamp (ms; -1: none): where it stands in the input merged in time
    # order (pipeline/ordering.py), which a batch keeps (Engine routes in that order).
    stamp: int = field(default=-1, compare=False, repr=False)

    @property
    def partition_key(self) -> str:
        """ "topic:partition" (":applied" field), "topic#N:partition" in a later life."""
        return partition_key(self.topic, self.partition, self.epoch)

    @property
    def key(self) -> str:
        """ "topic:partition:offset": names the message in receipts and the audit trail."""
        return f"{self.partition_key}:{self.offset}"


Partition = tuple[str, int]  # (topic, partition number)


def order_key(
    stamp_ms: int, is_deletion: bool, topic: str, partition: int, offset: int
) -> tuple[int, bool, str, int, int]:
    """Where a message stands in the input merged in time order (pipeline/ordering.py):
    its timestamp first; at the same millisecond an interaction before a deletion (a
    deletion at T covers what came at T)."""
    return (stamp_ms, is_deletion, topic, partition, offset)


def partition_key(topic: str, partition: int, epoch: int = 0) -> str:
    return f"{topic}:{partition}" if epoch == 0 else f"{topic}#{epoch}:{partition}"


@dataclass(frozen=True, slots=True)
class Interaction:
    user: str
    item: str
    weight: float
    ts: float  # under the time rule: never after `received`
    source: Source
    received: float = 0.0  # when the service read it (seconds)
    ts_adjusted: str | None = None  # what the time rule did (event_time.ADJUSTMENTS)


@dataclass(frozen=True, slots=True)
class Deletion:
    user: str | None
    item: str | None
    ts: float  # the effective time T: covers its scope's interactions at or before T
    request_id: str | None
    source: Source
    received: float = 0.0
    ts_adjusted: str | None = None
    requested_at: float | None = None  # the message's own time (latency starts there)

    @property
    def scope(self) -> Scope:
        if self.user is not None and self.item is not None:
            return "pair"
        return "user" if self.user is not None else "item"


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # one of REASONS
    detail: str
    source: Source


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason


def parse_interaction(
    value: bytes | None,
    source: Source,
    message_ts: float | None,
    kind: str = "implicit",
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    received: float | None = None,
    skew_s: float = DEFAULT_CLOCK_SKEW_S,
) -> Interaction | Rejected:
    """`message_ts`: the Kafka message timestamp in seconds (None: the message has none);
    `received`: when the service read the message (defaults to `message_ts`, for tests)."""
    arrival = _arrival(received, message_ts)
    try:
        obj = _json_object(value, max_bytes)
        user = _id(obj, "user", required=True)
        item = _id(obj, "item", required=True)
        weight = _number(obj, "weight", default=1.0, reason="bad_weight")
        if abs(weight) > MAX_WEIGHT:
            raise _Invalid("bad_weight", f"weight {weight:g} is beyond float32 (the state's)")
        if kind == "implicit" and weight < 0:
            raise _Invalid("bad_weight", f"weight must be >= 0 for implicit feedback: {weight}")
        if kind == "explicit" and weight == 0:
            raise _Invalid("bad_weight", "an explicit rating must be non-zero")
        try:
            time = event_time(
                _raw_time(obj), arrival, skew_s, fallback=message_ts, reference=message_ts
            )
        except UnreadableTime as exc:  # an interaction is not learned at a guessed time
            raise _Invalid("bad_ts", f'"ts": {exc}') from None
    except _Invalid as exc:
        return Rejected(exc.reason, str(exc), source)
    return Interaction(
        user,  # type: ignore[arg-type]
        item,  # type: ignore[arg-type]
        weight,
        time.seconds,
        source,
        arrival,
        time.adjustment,
    )


def parse_deletion(
    value: bytes | None,
    source: Source,
    message_ts: float | None,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    received: float | None = None,
    skew_s: float = DEFAULT_CLOCK_SKEW_S,
) -> Deletion | Rejected:
    """A deletion that names its scope is never lost for its form: a missing, null or
    unreadable time counts as its arrival, a numeric request id as its decimal string."""
    arrival = _arrival(received, message_ts)
    try:
        obj = _json_object(value, max_bytes)
        for key in ("user", "item"):
            if key in obj and obj[key] is None:
                raise _Invalid("null_id", f'"{key}": null is ambiguous (leave the key out)')
        user = _id(obj, "user", required=False)
        item = _id(obj, "item", required=False)
        if user is None and item is None:
            raise _Invalid("missing_id", "a deletion needs a user, an item, or both")
        request_id = _request_id(obj.get("request_id"))
    except _Invalid as exc:
        return Rejected(exc.reason, str(exc), source)
    try:
        raw = _raw_time(obj)
        time = event_time(raw, arrival, skew_s, fallback=message_ts, reference=message_ts)
        if raw is None:  # the receipt says the request gave none: its message's time counts
            time = EventTime(time.seconds, "missing")
    except UnreadableTime:
        time = event_time(float("nan"), arrival, skew_s, reference=message_ts)
    requested = (
        event_time(message_ts, arrival, skew_s).seconds if message_ts is not None else arrival
    )
    return Deletion(
        user, item, time.seconds, request_id, source, arrival, time.adjustment, requested
    )


def _arrival(received: float | None, message_ts: float | None) -> float:
    if received is not None:
        return received
    if message_ts is not None:
        return message_ts
    raise ValueError("the arrival time of a message is needed")


def _raw_time(obj: dict[str, Any]) -> float | None:
    """The message's "ts" as a raw number (any unit), None when absent or null."""
    value = obj.get("ts")
    return None if value is None else _time_value(value)


def _request_id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Invalid("bad_request_id", "request_id must be a string or a number")
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("bad_request_id", "request_id must be finite")
        value = str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise _Invalid("bad_request_id", "request_id must be a string or a number")
    if _has_surrogate(value):
        raise _Invalid("bad_request_id", "request_id holds a lone surrogate (not encodable)")
    if not 0 < len(value.encode("utf-8")) <= MAX_REQUEST_ID_BYTES:
        raise _Invalid("bad_request_id", "request_id must be 1-256 bytes")
    return value


def _has_surrogate(value: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def _json_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    if value is None:
        raise _Invalid("not_json", "empty message (a tombstone?)")
    if len(value) > max_bytes:
        raise _Invalid("oversized", f"{len(value)} bytes > limit {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid("not_utf8", f"not UTF-8 at byte {exc.start}") from None
    try:
        obj = _DECODER.decode(text)
    except _Invalid:
        raise
    except RecursionError:
        raise _Invalid("not_json", "nested too deeply") from None
    except ValueError as exc:
        raise _Invalid("not_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Invalid("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Invalid("duplicate_key", f"key {key!r} appears twice")
        obj[key] = value
    return obj


def _no_constant(name: str) -> float:
    # Python's json accepts NaN and Infinity literals by default; JSON does not.
    raise _Invalid("not_json", f"{name} is not valid JSON")


# One decoder for every message: json.loads with hooks builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _id(obj: dict[str, Any], key: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Invalid("missing_id", f'"{key}" is missing')
        return None
    # Integer ids are accepted and read as their decimal string; nothing else converts.
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Invalid("bad_id", f'"{key}" must be a string, got {type(value).__name__}')
    if value == "" or value == RESERVED_ID:
        raise _Invalid("bad_id", f'"{key}" must not be empty or "*"')
    if len(value.encode("utf-8", errors="surrogatepass")) > MAX_ID_BYTES:
        raise _Invalid("bad_id", f'"{key}" is longer than {MAX_ID_BYTES} bytes')
    if _has_surrogate(value):
        raise _Invalid("bad_id", f'"{key}" holds a lone surrogate')
    return value


def _number(obj: dict[str, Any], key: str, default: float, reason: str) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(reason, f'"{key}" must be a number, got {type(value).__name__}')
    try:
        number = float(value)
    except OverflowError:
        raise _Invalid(reason, f'"{key}" is too large') from None
    if not math.isfinite(number):
        raise _Invalid(reason, f'"{key}" must be finite')
    return number
