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
from tests.consumer.malformed import MALFORMED

SRC = Source("t", 0, 7)


def parse(topic: str, value: bytes | None):
    if topic == "interactions":
        return parse_interaction(value, SRC, message_ts=123.0)
    return parse_deletion(value, SRC, message_ts=123.0)


def test_a_full_interaction_parses():
    event = parse(
        "interactions", b'{"user": "42", "item": "1193", "weight": 4.0, "ts": 978300760.0}'
    )
    assert event == Interaction("42", "1193", 4.0, 978300760.0, SRC)


def test_interaction_defaults_and_integer_ids():
    event = parse("interactions", b'{"user": 42, "item": 7, "extra": {"ignored": true}}')
    assert event == Interaction("42", "7", 1.0, 123.0, SRC)


def test_unicode_ids_are_opaque():
    event = parse("interactions", '{"user": "Zoë 🎧", "item": "\\u00e9t\\u00e9"}'.encode())
    assert isinstance(event, Interaction) and event.user == "Zoë 🎧" and event.item == "été"


@pytest.mark.parametrize(
    ("value", "scope"),
    [
        (b'{"user": "42", "item": "1193", "ts": 5, "request_id": "r-17"}', "pair"),
        (b'{"user": "42"}', "user"),
        (b'{"item": "1193", "user": null}', "item"),
    ],
)
def test_deletion_scopes(value, scope):
    event = parse("deletions", value)
    assert isinstance(event, Deletion) and event.scope == scope


def test_explicit_ratings_must_be_non_zero():
    assert isinstance(
        parse_interaction(b'{"user":"1","item":"2","weight":0}', SRC, 0.0, "explicit"), Rejected
    )
    assert isinstance(
        parse_interaction(b'{"user":"1","item":"2","weight":-2}', SRC, 0.0, "explicit"), Interaction
    )


def test_the_corpus_covers_at_least_twenty_kinds():
    assert len(MALFORMED) >= 20
    assert {reason for _, _, reason in MALFORMED} == set(REASONS)


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
