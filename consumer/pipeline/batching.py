"""When a micro-batch closes.

A batch closes as soon as nothing more is waiting: a lone deletion is processed at once,
not after a timer, and under load the batch grows by itself (what arrives while one batch
is processed is waiting when the next is taken). It also closes at `max_events` (bounded
work per batch, so a deletion waits at most one batch), and a positive `linger_ms` holds a
batch open that long for more input to join it (fewer, larger batches at a latency cost).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_events: int = 500
    linger_ms: float = 0.0

    def room(self, pending: int) -> int:
        """How many more messages the open batch takes."""
        return max(self.max_events - pending, 0)

    def closes(self, pending: int, age_ms: float, more_waiting: bool) -> bool:
        """Whether the open batch (`pending` messages, open `age_ms`) is processed now.

        `more_waiting`: the last read filled what was asked, so more may be queued.
        """
        if pending == 0:
            return False
        if pending >= self.max_events:
            return True
        if more_waiting:
            return False
        return age_ms >= self.linger_ms
