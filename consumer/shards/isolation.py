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

from collections.abc import Callable, Sequence
from typing import TypeVar

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
