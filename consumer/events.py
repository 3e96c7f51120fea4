"""Event schemas and validation: every Kafka message becomes one event or one rejection.

interactions topic: {"user": "42", "item": "1193", "weight": 4.0, "ts": 978300760.0}
    weight defaults to 1, ts to the message timestamp.
deletions topic:    {"user": "42", "item": "1193", "ts": 978400000.0, "request_id": "r-17"}
    without "item": the user's whole history; without "user": the item's.

A rejection carries a reason from a fixed set (it becomes the dead-letter header and a
metric label, so the set must stay bounded) and a human-readable detail.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

MAX_ID_BYTES = 256
MAX_REQUEST_ID_BYTES = 256
DEFAULT_MAX_MESSAGE_BYTES = 4096
RESERVED_ID = "*"  # the wildcard of the deletions file format

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
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event came from: what offsets and replays are keyed by."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Interaction:
    user: str
    item: str
    weight: float
    ts: float
    source: Source


@dataclass(frozen=True, slots=True)
class Deletion:
    user: str | None
    item: str | None
    ts: float
    request_id: str | None
    source: Source

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
    message_ts: float,
    kind: str = "implicit",
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Interaction | Rejected:
    try:
        obj = _json_object(value, max_bytes)
        user = _id(obj, "user", required=True)
        item = _id(obj, "item", required=True)
        weight = _number(obj, "weight", default=1.0, reason="bad_weight")
        if kind == "implicit" and weight < 0:
            raise _Invalid("bad_weight", f"weight must be >= 0 for implicit feedback: {weight}")
        if kind == "explicit" and weight == 0:
            raise _Invalid("bad_weight", "an explicit rating must be non-zero")
        ts = _number(obj, "ts", default=message_ts, reason="bad_ts")
    except _Invalid as exc:
        return Rejected(exc.reason, str(exc), source)
    return Interaction(user, item, weight, ts, source)  # type: ignore[arg-type]


def parse_deletion(
    value: bytes | None,
    source: Source,
    message_ts: float,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Deletion | Rejected:
    try:
        obj = _json_object(value, max_bytes)
        user = _id(obj, "user", required=False)
        item = _id(obj, "item", required=False)
        if user is None and item is None:
            raise _Invalid("missing_id", "a deletion needs a user, an item, or both")
        ts = _number(obj, "ts", default=message_ts, reason="bad_ts")
        request_id = obj.get("request_id")
        if request_id is not None and not (
            isinstance(request_id, str)
            and 0 < len(request_id.encode("utf-8")) <= MAX_REQUEST_ID_BYTES
        ):
            raise _Invalid("bad_request_id", "request_id must be a string of 1-256 bytes")
    except _Invalid as exc:
        return Rejected(exc.reason, str(exc), source)
    return Deletion(user, item, ts, request_id, source)


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
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
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
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
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
