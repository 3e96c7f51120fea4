"""The batching policy on its own: when an open micro-batch is processed."""

from __future__ import annotations

import pytest

from consumer.pipeline.batching import BatchPolicy


def test_a_lone_message_closes_its_batch_at_once():
    policy = BatchPolicy(max_events=500, linger_ms=0)
    assert policy.closes(pending=1, age_ms=0.0, more_waiting=False)


def test_an_empty_batch_never_closes():
    assert not BatchPolicy().closes(pending=0, age_ms=10_000.0, more_waiting=False)


def test_a_batch_stays_open_while_more_input_waits_until_it_is_full():
    policy = BatchPolicy(max_events=100)
    assert not policy.closes(pending=60, age_ms=5.0, more_waiting=True)
    assert policy.closes(pending=100, age_ms=5.0, more_waiting=True)
    assert policy.room(60) == 40 and policy.room(100) == 0 and policy.room(130) == 0


@pytest.mark.parametrize(("age_ms", "closes"), [(0.0, False), (4.9, False), (5.0, True)])
def test_a_positive_linger_holds_the_batch_open_that_long(age_ms, closes):
    policy = BatchPolicy(max_events=100, linger_ms=5)
    assert policy.closes(pending=3, age_ms=age_ms, more_waiting=False) is closes
