"""Event validation: valid messages parse, every malformed kind gets its reason."""

from __future__ import annotations

import pytest

from consumer.events import (
    REASONS,
    Deletion,
    Interaction,
    Rejected,
    Source,
    parse_deletion,
    parse_interaction,
)
from tests.consumer.malformed import ENGINE_REASONS, HARMLESS_DELETIONS, MALFORMED

SRC = Source("t", 0, 7)
NOW = 1_796_157_800.0  # when the messages are read: 2026-12-01 20:43 UTC
ARRIVAL = NOW


def parse(topic: str, value: bytes | None, message_ts: float | None = NOW - 5):
    if topic == "interactions":
        return parse_interaction(value, SRC, message_ts, received=NOW)
    return parse_deletion(value, SRC, message_ts, received=NOW)


def test_a_full_interaction_parses():
    event = parse(
        "interactions", b'{"user": "42", "item": "1193", "weight": 4.0, "ts": 978300760.0}'
    )
    assert event == Interaction("42", "1193", 4.0, 978300760.0, SRC, NOW, None)


def test_interaction_defaults_and_integer_ids():
    event = parse("interactions", b'{"user": 42, "item": 7, "extra": {"ignored": true}}')
    assert event == Interaction("42", "7", 1.0, NOW - 5, SRC, NOW, None)  # the message's time


def test_an_interaction_without_any_time_counts_at_its_arrival():
    event = parse("interactions", b'{"user": "1", "item": "2", "ts": null}', message_ts=None)
    assert isinstance(event, Interaction)
    assert (event.ts, event.ts_adjusted) == (NOW, "missing")


@pytest.mark.parametrize(
    ("ts", "expected", "adjusted"),
    [
        (b"1796157731295", 1796157731.295, "milliseconds"),  # a producer writing ms
        (b"1796157731295123", 1796157731.295123, "microseconds"),
        (b'"2026-12-01T00:00:00Z"', 1796083200.0, None),
        (b'"2026-12-01T01:00:00+01:00"', 1796083200.0, None),
        (b"1e300", ARRIVAL, "future"),
        (b"1827000000", ARRIVAL, "future"),  # a year ahead
        (b"1796157900", ARRIVAL, None),  # 100 s ahead: within the clock skew, still capped
        (b"-3", ARRIVAL, "negative"),
    ],
)
def test_interaction_times_follow_the_rule_and_never_pass_their_arrival(ts, expected, adjusted):
    value = b'{"user": "1", "item": "2", "ts": ' + ts + b"}"
    event = parse_interaction(value, SRC, NOW, received=ARRIVAL)
    assert isinstance(event, Interaction)
    assert event.ts == pytest.approx(expected, abs=1e-3) and event.ts_adjusted == adjusted
    assert event.ts <= event.received


def test_unicode_ids_are_opaque():
    event = parse("interactions", '{"user": "Zoë 🎧", "item": "\\u00e9t\\u00e9"}'.encode())
    assert isinstance(event, Interaction) and event.user == "Zoë 🎧" and event.item == "été"


@pytest.mark.parametrize(
    ("value", "scope"),
    [
        (b'{"user": "42", "item": "1193", "ts": 5, "request_id": "r-17"}', "pair"),
        (b'{"user": "42"}', "user"),
        (b'{"item": "1193"}', "item"),
    ],
)
def test_deletion_scopes(value, scope):
    event = parse("deletions", value)
    assert isinstance(event, Deletion) and event.scope == scope


@pytest.mark.parametrize(("value", "scope", "request_id", "adjusted"), HARMLESS_DELETIONS)
def test_a_deletion_is_never_dead_lettered_for_a_harmless_form(value, scope, request_id, adjusted):
    event = parse("deletions", value)
    assert isinstance(event, Deletion), event
    assert (event.scope, event.request_id, event.ts_adjusted) == (scope, request_id, adjusted)
    assert event.ts <= event.received == NOW
    if adjusted in ("missing", "unreadable", "future", "negative"):
        # counts as its message's own timestamp: it covers everything sent before it
        assert event.ts == NOW - 5


def test_a_deletion_without_a_time_takes_its_messages_timestamp_on_every_replay():
    first = parse_deletion(b'{"user": "1"}', SRC, NOW - 60, received=NOW)
    replayed = parse_deletion(b'{"user": "1"}', SRC, NOW - 60, received=NOW + 600)
    assert isinstance(first, Deletion) and isinstance(replayed, Deletion)
    assert (first.ts, first.ts_adjusted, first.requested_at) == (NOW - 60, "missing", NOW - 60)
    assert replayed.ts == first.ts  # read ten minutes later: the same time, the same effect


def test_a_deletion_without_any_time_counts_at_its_arrival():
    event = parse_deletion(b'{"user": "1"}', SRC, None, received=NOW)
    assert isinstance(event, Deletion) and (event.ts, event.ts_adjusted) == (NOW, "missing")


def test_times_are_kept_to_the_millisecond_down():
    event = parse_deletion(b'{"user": "1", "ts": 1796157000.12345}', SRC, NOW, received=NOW)
    assert isinstance(event, Deletion) and event.ts == 1796157000.123


def test_explicit_ratings_must_be_non_zero():
    assert isinstance(
        parse_interaction(b'{"user":"1","item":"2","weight":0}', SRC, NOW, "explicit"), Rejected
    )
    assert isinstance(
        parse_interaction(b'{"user":"1","item":"2","weight":-2}', SRC, NOW, "explicit"),
        Interaction,
    )


def test_the_corpus_covers_every_reason_parsing_gives():
    assert len(MALFORMED) >= 20
    assert {reason for _, _, reason in MALFORMED} == set(REASONS) - ENGINE_REASONS


@pytest.mark.parametrize(
    ("topic", "value", "reason"),
    MALFORMED,
    ids=[f"{n}-{reason}" for n, (_, _, reason) in enumerate(MALFORMED)],
)
def test_malformed_message_is_rejected_with_its_reason(topic, value, reason):
    result = parse(topic, value)
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result.detail
    assert result.source == SRC and result.detail
