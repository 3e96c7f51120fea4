"""Poison isolation: one message must never stop the service.

Validation rejects what it can see; some messages are only found out by processing. A
pair whose valid weights sum beyond what the state holds, or a solve whose factors no
float32 holds, is named by the batch itself (batch.Unprocessable). Anything else that
fails a batch is looked for here: the first half of its events is tried alone (nothing
written), then the half of that half that fails, ... until one event fails alone. That
event is dead-lettered as `unprocessable` and everything else is applied: never a crash
loop that stalls every partition behind one message.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import redis

from consumer.errors import StateRolledBack
from consumer.shards.batch import Batch, ShardWork
from consumer.shards.messages import Routed
from consumer.state.layout import shard_of

if TYPE_CHECKING:
    from consumer.engine import Engine

log = logging.getLogger("unlearn.isolation")

T = TypeVar("T")


def find_culprit(events: Sequence[T], fails: Callable[[Sequence[T]], bool]) -> T | None:
    """The event that fails alone, if the failure has one: halves are tried in order
    (the first half when it fails, else the second), and the last one standing is tried
    alone to be sure. None: no single event fails (the failure is not the events')."""
    events = list(events)
    while len(events) > 1:
        half = len(events) // 2
        events = events[:half] if fails(events[:half]) else events[half:]
    if events and fails(events):
        return events[0]
    return None


def isolate(engine: Engine, work: dict[int, ShardWork], exc: Exception) -> Routed | None:
    """The event of a failed step's work that fails alone (None: the failure is not one
    event's, as when Redis went away)."""
    events = [r for w in work.values() for r in w.events]
    log.warning("a batch failed in processing (%s: %s): isolating", type(exc).__name__, exc)
    return find_culprit(events, lambda some: fails_alone(engine, list(some)))


def fails_alone(engine: Engine, events: list[Routed]) -> bool:
    """Do these events fail as a step of their own? Tried in memory: nothing is written,
    and the engine's replica is put back as it was. An outage is not the events' failure:
    it is raised, not counted."""
    shards = defaultdict(list)
    for routed in events:
        subject = routed.user if routed.user >= 0 else routed.item
        shards[shard_of(subject, engine.shards)].append(routed)
    trial = Batch(engine, {s: ShardWork(s, events=e) for s, e in shards.items()})
    try:
        trial.plan_item_requests()
        trial.read()
        trial.edit()
        trial.plan_parts()
        trial.load_items()
        trial.solve()
    except (redis.RedisError, StateRolledBack):
        raise
    except Exception:
        return True
    finally:
        trial.undo()
    return False
