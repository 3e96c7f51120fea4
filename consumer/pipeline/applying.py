"""Applying: the engine's two durable steps (events routed to their shards' inboxes, and
the owned shards' inboxes applied), with Redis outages waited out on a rebuilt engine;
and the consolidation slices, which go to the same engine under the same rules. What a
single message breaks is isolated by the engine itself (it holds the messages)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from consumer.engine import BatchOutcome, Engine, IngestOutcome, Reject
from consumer.events import Deletion, Interaction, Source
from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry
from consumer.shards.messages import Raw

log = logging.getLogger("unlearn.applying")

# Met by a batch, it is retried on a rebuilt engine.
TRANSIENT = TRANSIENT_REDIS


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
        self.stale = False  # the replica may hold what Redis does not (a failed slice)

    def ingest(
        self,
        interactions: Sequence[Interaction],
        deletions: Sequence[Deletion],
        acknowledged: Mapping[str, tuple[int, int]],
        skipped: Sequence[Source],
        raw: Mapping[Source, Raw],
    ) -> IngestOutcome:
        """The events in their shards' inboxes, their offsets recorded, when this returns."""
        return self._retrying(
            lambda: self.engine.ingest(interactions, deletions, acknowledged, skipped, raw),
            "ingest",
        )

    def step(self, max_events: int, reject: Reject) -> BatchOutcome:
        """One batch of the owned shards' inboxes, durable when this returns."""
        return self._retrying(lambda: self.engine.step(max_events, reject), "batch")

    def own(self, shards: Iterable[int]) -> None:
        wanted = set(shards)
        self._retrying(lambda: self.engine.own(wanted), "ownership")

    def rebuild(self, keep_committed: bool) -> None:
        """A fresh engine from Redis, owning what the old one owned. It remembers what the
        old one committed (unless the state's loss was just dealt with), so a Redis
        restored from an older snapshot while it was away is still noticed."""
        old = self.engine
        engine = Engine(
            old.state, clock=old.clock, solve_threads=old.solve_threads, holder=old.holder,
            owned=(), part_retry_s=old.part_retry_s,
        )  # fmt: skip
        engine.own(old.owned)
        if keep_committed:
            engine.committed = dict(old.committed)
            engine.generations = dict(old.generations)
        self.engine = engine
        self.stale = False

    def _retrying(self, call: Callable, operation: str):
        first = True

        def attempt():
            nonlocal first
            if not first or self.stale:
                self.rebuild(keep_committed=True)
            first = False
            return call()

        try:
            return retry(
                attempt, TRANSIENT, self.budget_s, lambda exc, n: self.on_retry(operation),
                what=f"Redis {self.engine.state.server}, {operation}",
            )  # fmt: skip
        except RetriesExhausted as exc:
            raise Unavailable(
                f"Redis {self.engine.state.server} unavailable for longer than "
                f"redis_retry_budget_s ({self.budget_s:g} s): {exc}"
            ) from exc
