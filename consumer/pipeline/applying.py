"""Applying a batch: the engine's durable commit, with Redis outages waited out and what a
single message breaks isolated (isolation.py). Also the consolidation slices, which go to
the same engine under the same rules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from consumer.engine import BatchOutcome, Engine, SliceOutcome
from consumer.pipeline.isolation import Reject, Work, apply_isolating
from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry
from consumer.state.lease import LeaseBusy, LeaseLost

log = logging.getLogger("unlearn.applying")

# Met by a batch, it is retried on a rebuilt engine: Redis outages, and another instance
# holding or having taken the namespace's write lease.
TRANSIENT = (*TRANSIENT_REDIS, LeaseLost, LeaseBusy)


class Unavailable(RuntimeError):
    """Redis stayed away for longer than the retry budget: the service stops without
    committing, and the batch is replayed by whoever reads its partitions next."""


class Applier:
    def __init__(
        self,
        engine: Engine,
        budget_s: float,
        on_retry: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.budget_s = budget_s
        self.on_retry = on_retry  # the operation that is being retried: metrics, liveness
        self.stale = False  # the replica may be ahead of Redis (a failed slice)

    def apply(
        self, work: Work, acknowledged: Mapping[str, tuple[int, int]], reject: Reject
    ) -> list[BatchOutcome]:
        """The batch, durable in Redis when this returns, with its poison dead-lettered.

        After a failure the engine is rebuilt from Redis (finishing an interrupted commit
        and reloading its replica), so a retry starts from what is really stored.
        """

        def attempt(part: Work) -> BatchOutcome:
            return self._retrying(
                lambda: self.engine.process(
                    part.interactions, part.deletions, acknowledged, part.skipped
                ),
                "batch",
            )

        return apply_isolating(work, attempt, reject)

    def slice(self, side: str, start: int, rows: int) -> SliceOutcome | None:
        """One consolidation slice; None when Redis is away (the next batch waits it out)."""
        try:
            return self.engine.consolidate_slice(side, start, rows)
        except TRANSIENT as exc:
            log.warning("consolidation slice failed (%s); later", type(exc).__name__)
            self.stale = True
            return None

    def rebuild(self, keep_committed: bool) -> None:
        """A fresh engine from Redis. It remembers what the old one committed (unless the
        state's loss was just dealt with), so a Redis restored from an older snapshot
        while it was away is still noticed."""
        old = self.engine
        engine = Engine(old.state, clock=old.clock, solve_threads=old.solve_threads)
        if keep_committed:
            engine.committed = dict(old.committed)
        self.engine = engine
        self.stale = False

    def _retrying(self, call: Callable[[], BatchOutcome], operation: str) -> BatchOutcome:
        first = True

        def attempt() -> BatchOutcome:
            nonlocal first
            if not first or self.stale:
                self.rebuild(keep_committed=True)
            first = False
            return call()

        try:
            return retry(attempt, TRANSIENT, self.budget_s, lambda exc, n: self.on_retry(operation))
        except RetriesExhausted as exc:
            raise Unavailable(f"Redis unavailable for too long: {exc}") from exc
