"""Which shards this instance applies: those that go with the deletions partitions it holds
(layout.owned_shards), taken when the group assigns them, given up when it revokes them,
and taken back once a model swap that borrowed them releases them (docs/lifecycle.md).

A shard taken is read as its previous owner left it (Engine.own draws a new fence token);
what the receipts topic answered since the shard last committed is read back, so that a
request the state lost (a restore) and this owner answers again says `reapplied`.
"""

from __future__ import annotations

import logging
import time

from consumer.brokers.kafka import Clients
from consumer.engine import Engine
from consumer.pipeline.answered import read_answered
from consumer.pipeline.applying import TRANSIENT, Applier
from consumer.pipeline.consolidating import Consolidating
from consumer.pipeline.observation import Observer
from consumer.pipeline.source import Source
from consumer.settings import Settings
from consumer.state.layout import owned_shards
from consumer.state.swap import released

log = logging.getLogger("unlearn.ownership")

RECLAIM_CHECK_S = 0.25  # how often shards a swap took are looked for, while any is missing
# The receipts read back on assignment serve the shards taken over in the same rebalance
# (the previous owners finished before it): within this long, it is not read again.
READ_BACK_REUSE_S = 10.0


class Ownership:
    def __init__(
        self,
        settings: Settings,
        source: Source,
        applier: Applier,
        consolidating: Consolidating,
        observer: Observer,
        clients: Clients,
    ) -> None:
        self.settings = settings
        self.source = source
        self.applier = applier
        self.consolidating = consolidating
        self.observer = observer
        self.clients = clients
        self._deletion_partitions: int | None = None
        self._reclaim_checked = float("-inf")

    @property
    def engine(self) -> Engine:
        return self.applier.engine

    def own(self, held: set[int]) -> set[int]:
        """Apply the shards of these deletions partitions from now on. Returns the shards
        taken (their inboxes may hold work; the factors topic may lack their commits)."""
        topic = self.settings.topic_deletions
        if self._deletion_partitions is None or held - set(range(self._deletion_partitions)):
            self._deletion_partitions = self.source.partition_count(topic)
        shards = owned_shards(self.engine.shards, self._deletion_partitions, held)
        before = set(self.engine.owned)
        self.consolidating.lost(before - shards)
        self.applier.own(shards)
        self.observer.shards_owned(len(self.engine.owned))
        self.observer.consolidation_owner(bool(self.engine.owned))
        taken = set(self.engine.owned) - before
        self.read_back(taken)
        return taken

    def reclaim(self) -> set[int]:
        """Shards of this instance's partitions that it no longer holds (a swap took them
        to promote a new model): taken back once released or once the swap's hold ran
        out, never from another instance (a rebalance moves those). Returns those taken."""
        if self._deletion_partitions is None or len(self.engine.owned) == self.engine.shards:
            return set()
        now = time.monotonic()
        if now - self._reclaim_checked < RECLAIM_CHECK_S:
            return set()
        self._reclaim_checked = now
        held = self.source.held(self.settings.topic_deletions)
        missing = owned_shards(self.engine.shards, self._deletion_partitions, held)
        missing -= set(self.engine.owned)
        if not missing:
            return set()
        try:
            owners = self.engine.state.log.read_owners(self.engine.shards)
        except TRANSIENT as exc:  # Redis away: the next check waits it out
            log.info("reclaim check skipped: %s", type(exc).__name__)
            return set()
        free = {s for s in missing if released(owners.get(s), time.time())}
        if free:
            log.info("taking back shards %s (released by a model swap)", sorted(free))
            self.applier.own(set(self.engine.owned) | free)
            self.observer.shards_owned(len(self.engine.owned))
            self.read_back(free)
        return free

    def read_back(self, shards: set[int]) -> None:
        """Shards taken over: what the receipts topic answered since they last committed.
        A request they still have to answer that is there was answered before the state
        lost it (a restore): its new receipt says `reapplied`."""
        if not shards:
            return
        since = self.engine.last_commit_time(shards)
        found = self.source.assignments.last_read  # this rebalance's read, if it reaches
        if found is None or not found.covers(since, READ_BACK_REUSE_S):
            found = read_answered(
                self.settings.kafka_common(), self.settings.topic_receipts, since,
                clients=self.clients,
            )  # fmt: skip
        self.engine.answered(found.sources)
