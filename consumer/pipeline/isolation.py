"""Poison isolation: one message must never stop the service.

Validation rejects what it can see; some messages are only found out by processing (a
pair whose valid weights sum beyond what the state holds, a solve that overflows). When
a batch fails that way, its effect is undone (engine.BatchFailed) and it is split in two,
in offset order per partition, until the message that fails alone is found. That message
is dead-lettered as `unprocessable` and everything else is applied: never a crash loop
that stalls every partition behind one message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consumer.engine import BatchFailed, BatchOutcome, Unprocessable
from consumer.events import Deletion, Interaction, Source


@dataclass
class Work:
    """Events for one engine call, and the sources of dead-lettered messages to record."""

    interactions: list[Interaction] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    skipped: list[Source] = field(default_factory=list)

    def events(self) -> list[Interaction | Deletion]:
        return sorted(
            [*self.interactions, *self.deletions],
            key=lambda e: (e.source.partition_key, e.source.offset),
        )

    def without(self, sources: set[Source]) -> Work:
        return Work(
            [e for e in self.interactions if e.source not in sources],
            [e for e in self.deletions if e.source not in sources],
            [*self.skipped, *sources],
        )

    @classmethod
    def of(cls, events: list[Interaction | Deletion], skipped: list[Source]) -> Work:
        return cls(
            [e for e in events if isinstance(e, Interaction)],
            [e for e in events if isinstance(e, Deletion)],
            skipped,
        )


Apply = Callable[[Work], BatchOutcome]
Reject = Callable[[list[Interaction | Deletion], str], None]  # dead-letter, durably


def apply_isolating(work: Work, apply: Apply, reject: Reject) -> list[BatchOutcome]:
    """Apply the work, isolating what cannot be processed; the outcomes in order.

    `reject` must make its dead letters durable before returning: the retry that follows
    records their offsets as done.
    """
    outcomes: list[BatchOutcome] = []
    queue = [work]
    while queue:
        current = queue.pop(0)
        try:
            outcomes.append(apply(current))
        except Unprocessable as exc:
            culprits = set(exc.sources)
            reject([e for e in current.events() if e.source in culprits], exc.detail)
            queue.insert(0, current.without(culprits))
        except BatchFailed as exc:
            events = current.events()
            if len(events) <= 1:
                reject(events, str(exc))
                queue.insert(0, Work(skipped=[*current.skipped, *(e.source for e in events)]))
                continue
            half = len(events) // 2
            # Per partition the first half's offsets precede the second's, so each half
            # commits offsets in order; the batch's dead letters go with the last.
            queue[:0] = [Work.of(events[:half], []), Work.of(events[half:], current.skipped)]
    return outcomes
