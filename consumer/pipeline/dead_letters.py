"""The dead-letter policy: what a dead letter carries, and when a surge pauses input.

Every rejected message goes to the dead-letter topic with its original key, bytes and
headers, plus the reason (bounded: events.REASONS), a detail and where it came from. A
bad producer deploy should page someone, not quietly send a whole stream to the DLQ, so
a partition whose recent messages are mostly dead-lettered is paused. Only that
partition: garbage on the interactions topic must never hold erasure back.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from consumer.events import Partition

REASON_HEADER = "unlearn.reason"
DETAIL_HEADER = "unlearn.detail"
SOURCE_HEADER = "unlearn.source"
# Set on a message the `unlearn redrive` command sends back to its topic: the dead letter
# it came from, so its second outcome is counted apart.
REDRIVEN_HEADER = "unlearn.redriven-from"
_OWN = (REASON_HEADER, DETAIL_HEADER, SOURCE_HEADER)


def dead_letter_headers(
    original: list[tuple[str, bytes | None]] | None, reason: str, detail: str, source: str
) -> list[tuple[str, bytes]]:
    """The original headers (a trace id survives), then ours; an earlier dead letter's
    reason headers (a message re-driven and rejected again) are replaced, not repeated."""
    kept = [(k, v or b"") for k, v in (original or []) if k not in _OWN]
    return [
        *kept,
        (REASON_HEADER, reason.encode()),
        (DETAIL_HEADER, detail.encode("utf-8", "replace")[:1024]),
        (SOURCE_HEADER, source.encode()),
    ]


@dataclass
class _Window:
    recent: collections.deque[bool]
    paused_until: float | None = None


class SurgePolicy:
    """Per partition: pause it when more than `max_ratio` of its last `window` messages
    (at least `min_messages` seen) were dead-lettered; resume after `pause_s` (0: never,
    until restarted)."""

    def __init__(
        self,
        max_ratio: float,
        window: int,
        min_messages: int,
        pause_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_ratio = max_ratio
        self.window = window
        self.min_messages = min_messages
        self.pause_s = pause_s
        self.clock = clock
        self._partitions: dict[Partition, _Window] = {}

    def record(self, partition: Partition, messages: int, dead: int) -> float | None:
        """Note a batch's messages from a partition; the dead-lettered ratio when this
        pauses the partition (None otherwise)."""
        window = self._partitions.setdefault(
            partition, _Window(collections.deque(maxlen=self.window))
        )
        window.recent.extend([True] * dead + [False] * (messages - dead))
        seen = len(window.recent)
        if seen < self.min_messages or window.paused_until is not None:
            return None
        ratio = sum(window.recent) / seen
        if ratio <= self.max_ratio:
            return None
        window.paused_until = self.clock() + self.pause_s if self.pause_s else float("inf")
        return ratio

    def due(self) -> list[Partition]:
        """Paused partitions whose pause is over: they resume with a fresh window."""
        now = self.clock()
        out = []
        for partition, window in self._partitions.items():
            if window.paused_until is not None and now >= window.paused_until:
                window.paused_until = None
                window.recent.clear()
                out.append(partition)
        return out

    def paused(self) -> list[Partition]:
        return sorted(p for p, w in self._partitions.items() if w.paused_until is not None)

    def forget(self, partition: Partition) -> None:
        """The partition moved to another instance: its window and pause go with it (the
        new owner judges it afresh)."""
        self._partitions.pop(partition, None)
