"""A corpus of malformed messages, each with the dead-letter reason it must get."""

from __future__ import annotations

# (topic kind, raw message value, expected reason)
MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("interactions", b"", "not_json"),
    ("interactions", None, "not_json"),
    ("interactions", b"not json at all", "not_json"),
    ("interactions", b'{"user": "1", "item": "2"', "not_json"),
    ("interactions", b"\xff\xfe{}", "not_utf8"),
    ("interactions", b'["user", "item"]', "not_object"),
    ("interactions", b'"just a string"', "not_object"),
    ("interactions", b"42", "not_object"),
    ("interactions", b'{"item": "2"}', "missing_id"),
    ("interactions", b'{"user": "1"}', "missing_id"),
    ("interactions", b'{"user": null, "item": "2"}', "missing_id"),
    ("interactions", b'{"user": ["1"], "item": "2"}', "bad_id"),
    ("interactions", b'{"user": 1.5, "item": "2"}', "bad_id"),
    ("interactions", b'{"user": true, "item": "2"}', "bad_id"),
    ("interactions", b'{"user": "", "item": "2"}', "bad_id"),
    ("interactions", b'{"user": "*", "item": "2"}', "bad_id"),
    ("interactions", b'{"user": "' + b"u" * 300 + b'", "item": "2"}', "bad_id"),
    ("interactions", b'{"user": "\\ud800", "item": "2"}', "bad_id"),
    ("interactions", b'{"user": "1", "item": "2", "weight": "4"}', "bad_weight"),
    ("interactions", b'{"user": "1", "item": "2", "weight": -1}', "bad_weight"),
    ("interactions", b'{"user": "1", "item": "2", "weight": NaN}', "not_json"),
    ("interactions", b'{"user": "1", "item": "2", "weight": Infinity}', "not_json"),
    ("interactions", b'{"user": "1", "item": "2", "weight": 1e400}', "bad_weight"),
    ("interactions", b'{"user": "1", "item": "2", "weight": ' + b"9" * 400 + b"}", "bad_weight"),
    ("interactions", b'{"user": "1", "item": "2", "weight": null}', "bad_weight"),
    ("interactions", b'{"user": "1", "item": "2", "ts": "yesterday"}', "bad_ts"),
    ("interactions", b'{"user": "1", "item": "2", "user": "3"}', "duplicate_key"),
    ("interactions", b"[" * 100_000 + b"]" * 100_000, "oversized"),
    ("interactions", b'{"user": "1", "item": "2", "pad": "' + b"x" * 5000 + b'"}', "oversized"),
    ("interactions", b"[" * 1500 + b"]" * 1500, "not_json"),
    ("deletions", b"{}", "missing_id"),
    ("deletions", b'{"ts": 5}', "missing_id"),
    ("interactions", b'{"user": "1", "item": "2", "weight": 1e39}', "bad_weight"),
    ("interactions", b'{"user": "1", "item": "2", "ts": true}', "bad_ts"),
    ("deletions", b'{"user": "1", "request_id": ""}', "bad_request_id"),
    ("deletions", b'{"user": "1", "request_id": "\\ud800"}', "bad_request_id"),
    ("deletions", b'{"user": "1", "request_id": true}', "bad_request_id"),
    ("deletions", b'{"user": "1", "request_id": {"id": 1}}', "bad_request_id"),
    ("deletions", b'{"user": {"id": "1"}}', "bad_id"),
    # An explicit null is ambiguous: never read as "every user" or "every item".
    ("deletions", b'{"user": null, "item": "100"}', "null_id"),
    ("deletions", b'{"user": "7", "item": null}', "null_id"),
]

# Reasons only the engine gives (a valid message its batch could not process alone).
ENGINE_REASONS = {"unprocessable"}

# Deletions in forms a producer may well write: each is applied, never dead-lettered.
# (raw value, scope, request id, what the time rule says of its ts)
HARMLESS_DELETIONS: list[tuple[bytes, str, str | None, str | None]] = [
    (b'{"user": "1", "request_id": 17}', "user", "17", "missing"),
    (b'{"user": "1", "request_id": 17.0}', "user", "17", "missing"),
    (b'{"user": "1", "ts": null}', "user", None, "missing"),
    (b'{"user": "1", "ts": true}', "user", None, "unreadable"),
    (b'{"user": "1", "ts": "next tuesday"}', "user", None, "unreadable"),
    (b'{"user": "1", "item": "2", "ts": "2026-11-30T10:00:00Z"}', "pair", None, None),
    (b'{"item": "2", "ts": "2026-11-30T10:00:00+01:00"}', "item", None, None),
    (b'{"user": "1", "ts": 1796157731295}', "user", None, "milliseconds"),
    (b'{"user": "1", "ts": 1e300}', "user", None, "future"),
    (b'{"user": "1", "ts": -5}', "user", None, "negative"),
]
