"""The search for the event that fails a batch alone (shards/isolation.py)."""

from __future__ import annotations

import pytest

from consumer.shards.isolation import find_culprit


@pytest.mark.parametrize("bad", [0, 1, 7, 15, 16])
def test_the_event_that_fails_alone_is_found_whatever_its_place(bad):
    events = list(range(17))
    tried: list[list[int]] = []

    def fails(some):
        tried.append(list(some))
        return bad in some

    assert find_culprit(events, fails) == bad
    # Halving: about log2(n) tries, each a contiguous run in order (offsets stay in order).
    assert len(tried) <= 6
    assert all(t == list(range(t[0], t[0] + len(t))) for t in tried)


def test_a_failure_no_single_event_causes_finds_none():
    # Fails only when events 3 and 12 are together: no one event is at the root.
    assert find_culprit(list(range(16)), lambda some: {3, 12} <= set(some)) is None
    assert find_culprit([], lambda some: True) is None
