"""Step 2 of the commit order (pipeline/checkpoint.py): a receipt leaves only once the
factors topic has the factors it names.

The owned shards' commits go to the factors topic (publishing.py) when a batch answered a
request or forgot something, when a forgetting cycle ends, when shards are taken; what
batches only learned waits up to LEARNING_PUBLISH_S, so that a row learned and then
forgotten goes out once. A batch's receipts wait here for their factors (a few ms on a
healthy broker, up to FACTORS_WAIT_S, so they leave with their batch); those not covered
by then are held and released as the acknowledgements come. With the factors topic off,
every receipt is ready at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from consumer.pipeline.applying import TRANSIENT
from consumer.pipeline.publishing import FactorPublisher
from consumer.receipts import Receipt

log = logging.getLogger("unlearn.releasing")

FACTORS_WAIT_S = 0.05  # how long a batch's receipts wait for its factors' acknowledgement
# What batches learned (no deletion among them) waits this long for the factors topic,
# so that a deletion or a cycle's end soon after publishes those rows once, with its own.
LEARNING_PUBLISH_S = 0.5

Commits = Callable[[], dict]  # the owned shards' commits (Engine.commits)


class Release:
    def __init__(
        self,
        publisher: FactorPublisher | None,
        commits: Commits,
        on_published: Callable[[int, float], None],
        on_held: Callable[[int], None],
        on_redis_error: Callable[[], None],
    ) -> None:
        self.publisher = publisher
        self._commits = commits
        self._on_published = on_published  # records produced, seconds
        self._on_held = on_held  # receipts held now
        self._on_redis_error = on_redis_error
        self._held: list[Receipt] = []  # receipts waiting for their factors
        self._learned_since: float | None = None  # since when learning waits

    @property
    def holding(self) -> bool:
        return bool(self._held)

    # ----- the factors topic ------------------------------------------------------------

    def publish(self) -> None:
        """The owned shards' commits not on the factors topic yet: to the producer."""
        self._learned_since = None
        if self.publisher is None:
            return
        started = time.perf_counter()
        try:
            produced = self.publisher.publish(self._commits())
        except TRANSIENT as exc:  # Redis away: the shards' marks say where to go on from
            log.info("factors not published yet: %s", type(exc).__name__)
            self._on_redis_error()
            return
        if produced:
            self._on_published(produced, time.perf_counter() - started)

    def learned(self) -> None:
        """A batch only learned: its rows go out within LEARNING_PUBLISH_S."""
        if self._learned_since is None:
            self._learned_since = time.monotonic()

    def publish_learning(self) -> None:
        """What batches learned, on the factors topic once it waited long enough (a
        deletion's batch or a cycle's end meanwhile publishes it with its own rows)."""
        since = self._learned_since
        if since is not None and time.monotonic() - since >= LEARNING_PUBLISH_S:
            self.publish()

    # ----- receipts ---------------------------------------------------------------------

    def ready(self, receipts: list[Receipt]) -> list[Receipt]:
        """Of a batch's receipts (and those held before), the ones whose factors the
        factors topic has, after waiting up to FACTORS_WAIT_S for them; the others are
        held."""
        if self.publisher is None:
            return receipts
        if receipts:
            try:
                self.publisher.drain(FACTORS_WAIT_S)
            except TRANSIENT as exc:  # Redis away: the receipts are held below
                log.info("factors' marks not recorded yet: %s", type(exc).__name__)
        return self._covered(receipts)

    def release(self) -> list[Receipt]:
        """Held receipts whose factors are published now."""
        if self.publisher is None or not (self._held or self.publisher.pending()):
            return []
        return self._covered([])

    def finish(self, budget_s: float) -> list[Receipt]:
        """Before the shards go (a revoke, a shutdown): every commit handed over and
        acknowledged, and the receipts that releases. What stays held is still in its
        shard's unsent set: the next owner sends it."""
        if self.publisher is None:
            return []
        self.publish()
        try:
            if not self.publisher.drain(budget_s):
                log.warning("factors not yet acknowledged: the next owner publishes them again")
        except TRANSIENT as exc:
            log.warning("factors' marks not recorded (%s): the next owner publishes them again",
                        type(exc).__name__)  # fmt: skip
        return self.release()

    def keep_only(self, mine: Callable[[Receipt], bool]) -> None:
        """Shards went: their held receipts are sent by their next owner."""
        self._held = [r for r in self._held if mine(r)]

    def forget(self) -> None:
        """The state was restored: held receipts are sent again with the rebuilt ones, and
        the published marks are read again as the state has them now."""
        self._held = []
        if self.publisher is not None:
            self.publisher.forget()

    def _covered(self, receipts: list[Receipt]) -> list[Receipt]:
        waiting = [*self._held, *receipts]
        try:
            self.publisher.poll()
            covered = [self.publisher.covers(r) for r in waiting]
        except TRANSIENT as exc:  # Redis away: they wait, durable and unsent meanwhile
            log.info("receipts held while Redis is away: %s", type(exc).__name__)
            self._on_redis_error()
            covered = [False] * len(waiting)
        ready = [r for r, yes in zip(waiting, covered, strict=True) if yes]
        self._held = [r for r, yes in zip(waiting, covered, strict=True) if not yes]
        self._on_held(len(self._held))
        return ready
