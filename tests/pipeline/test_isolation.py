"""Poison isolation against a fake engine: the culprit is found, everything else applied,
offsets recorded in order."""

from __future__ import annotations

import pytest

from consumer.engine import BatchFailed, BatchOutcome, Unprocessable
from consumer.events import Deletion, Interaction, Source
from consumer.pipeline.isolation import Work, apply_isolating


def interaction(partition: int, offset: int, weight: float = 1.0) -> Interaction:
    return Interaction("u", "i", weight, 0.0, Source("t", partition, offset))


class FakeEngine:
    """Fails a batch holding a poisoned event, as a solve that overflows would."""

    def __init__(self, poisoned: set[Source], pinpointed: set[Source] = frozenset()) -> None:
        self.poisoned, self.pinpointed = poisoned, pinpointed
        self.applied: list[Work] = []

    def __call__(self, work: Work) -> BatchOutcome:
        sources = {e.source for e in work.events()}
        if sources & self.pinpointed:
            raise Unprocessable(sorted(sources & self.pinpointed, key=str), "sum beyond float32")
        if sources & self.poisoned:
            raise BatchFailed("SingularSystemError")
        self.applied.append(work)
        return BatchOutcome(interactions_applied=len(work.interactions))


@pytest.mark.parametrize("bad", [0, 7, 15])
def test_the_event_that_fails_alone_is_dead_lettered_and_the_rest_applied(bad):
    events = [interaction(n % 2, n // 2) for n in range(16)]
    engine = FakeEngine({events[bad].source})
    rejected: list = []
    outcomes = apply_isolating(
        Work(events, [], [Source("t", 0, 99)]), engine, lambda e, why: rejected.extend(e)
    )
    assert rejected == [events[bad]]
    applied = [e for work in engine.applied for e in work.events()]
    assert sorted(e.source.offset * 2 + e.source.partition for e in applied) == [
        n for n in range(16) if n != bad
    ]
    assert sum(o.interactions_applied for o in outcomes) == 15
    # Per partition, no call records an offset below one an earlier call recorded (the
    # state's applied offset only moves forward, so nothing is skipped as a "replay").
    seen: dict[int, int] = {}
    for work in engine.applied:
        for source in (e.source for e in work.events()):
            assert source.offset > seen.get(source.partition, -1)
        for source in [*(e.source for e in work.events()), *work.skipped]:
            seen[source.partition] = max(seen.get(source.partition, -1), source.offset)
    # The dead letters of the batch (and the culprit) are recorded as done, with the last.
    recorded = {s for work in engine.applied for s in work.skipped}
    assert {Source("t", 0, 99), events[bad].source} <= recorded


def test_named_culprits_are_dead_lettered_without_splitting():
    events = [interaction(0, n) for n in range(6)]
    engine = FakeEngine(set(), pinpointed={events[2].source, events[4].source})
    rejected: list = []
    apply_isolating(Work(events, [], []), engine, lambda e, why: rejected.extend(e))
    assert rejected == [events[2], events[4]] and len(engine.applied) == 1
    assert set(engine.applied[0].skipped) == {events[2].source, events[4].source}


def test_a_deletion_can_be_the_culprit_too():
    deletion = Deletion("u", None, 0.0, "r", Source("d", 0, 3))
    engine = FakeEngine({deletion.source})
    rejected: list = []
    apply_isolating(
        Work([interaction(0, 1)], [deletion], []), engine, lambda e, why: rejected.extend(e)
    )
    assert rejected == [deletion]
