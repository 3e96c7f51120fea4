"""Publishing: every committed factor change goes to the factors topic, and a receipt only
after the factors its effect changed.

Each owned shard's commits are followed through the shard's change log (the rows each
commit changed); their factors, read back from Redis, are handed to the producer tagged
with the commit's generation. When the broker has acknowledged every record of a commit,
the shard's `published` mark moves to it (fenced like any owner write). A receipt is
released when, for every part, the part's shard is published up to the part's
generation, whichever instance owns that shard; until then it waits here (it is in its
shard's `unsent` set meanwhile, so a crash only delays it). A new owner starts from the
mark: what its predecessor committed and never published is published first; a change
log that no longer reaches back (or a state restored from an older snapshot) means the
shard's every row is published again, which a compacted topic absorbs.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import KafkaError, Producer

from consumer.receipts import Receipt
from consumer.serving.records import FactorRecord
from consumer.state.layout import rows_of_shard
from consumer.state.store import SIDES, ModelState

log = logging.getLogger("unlearn.publishing")

Known = tuple[int, str | None]  # a shard's commits so far, and the newest one's id
OTHERS_READ_S = 0.01  # other owners' marks are read again at most this often


class PublishFailed(RuntimeError):
    """The broker did not take a factor record: the service stops (what is not published
    is published by the next owner, from the mark)."""


@dataclass
class _Flight:
    known: Known
    waiting: int


@dataclass
class _Shard:
    token: int
    published: Known  # acknowledged by the broker and marked in Redis
    target: Known  # handed to the producer
    flights: collections.deque[_Flight] = field(default_factory=collections.deque)


class FactorPublisher:
    def __init__(self, producer: Producer, topic: str, state: ModelState) -> None:
        self.producer = producer
        self.topic = topic
        self.state = state
        self.records = 0  # records handed to the producer so far
        self._shards: dict[int, _Shard] = {}
        self._others: dict[int, int] = {}  # other owners' shards: published generation
        self._others_read = float("-inf")
        self._failure: str | None = None
        # An index keeps its id for the namespace's life (ids are only ever appended, and a
        # swap keeps them): each is read from Redis once.
        self._ids: dict[str, dict[int, str]] = {side: {} for side in SIDES}
        self._shape: tuple[int, int] | None = None  # shards and factors: fixed per namespace

    def publish(self, owned: Mapping[int, tuple[int, Known]]) -> int:
        """The owned shards (shard -> (fence token, commit reached)): hand the producer
        the factors of every commit since what the topic has. Returns records produced."""
        for shard in set(self._shards) - set(owned):
            del self._shards[shard]
        fresh = [s for s, (token, _) in owned.items()
                 if s not in self._shards or self._shards[s].token != token]  # fmt: skip
        if fresh:
            for shard, mark in self.state.log.read_published(fresh).items():
                self._shards[shard] = _Shard(owned[shard][0], mark, mark)
        produced = 0
        for shard, (_, known) in owned.items():
            entry = self._shards[shard]
            if known == entry.target or known[0] == 0:
                continue
            rows = None
            if known[0] > entry.target[0]:
                rows = self.state.log.read_changes(shard, *entry.target)
            if rows is None:  # the log does not reach back, or another history: every row
                rows = self._all_rows(shard)
            produced += self._produce(shard, known, rows)
            entry.target = known
        self.records += produced
        if produced:
            self.producer.poll(0)
        return produced

    def poll(self) -> None:
        """Mark in Redis the commits whose every record the broker acknowledged."""
        if self._failure is not None:
            raise PublishFailed(f"factor record not acknowledged: {self._failure}")
        marks: dict[int, Known] = {}
        for shard, entry in self._shards.items():
            while entry.flights and entry.flights[0].waiting == 0:
                marks[shard] = entry.flights.popleft().known
        if not marks:
            return
        tokens = {s: self._shards[s].token for s in marks}
        refused = self.state.log.mark_published(marks, tokens)
        for shard, known in marks.items():
            if shard not in refused:
                self._shards[shard].published = known

    def forget(self) -> None:
        """Read every mark again at the next publish (the state was restored)."""
        self._shards.clear()
        self._others.clear()

    def pending(self) -> bool:
        return any(entry.flights for entry in self._shards.values())

    def drain(self, timeout_s: float) -> bool:
        """Wait until every record handed over is acknowledged and marked."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.producer.poll(0.01)
            self.poll()
            if not self.pending():
                return True
            if time.monotonic() >= deadline:
                return False

    def covers(self, receipt: Receipt) -> bool:
        """Is every part's effect on the factors topic (its shard published up to the
        part's generation)? Other owners' marks are read when needed, a few times a
        second at most."""
        needed = receipt.shard_generations()
        unknown = [s for s, g in needed.items()
                   if s not in self._shards and self._others.get(s, -1) < g]  # fmt: skip
        if unknown and time.monotonic() - self._others_read >= OTHERS_READ_S:
            self._others_read = time.monotonic()
            for shard, (generation, _) in self.state.log.read_published(unknown).items():
                self._others[shard] = generation
        for shard, generation in needed.items():
            entry = self._shards.get(shard)
            have = entry.published[0] if entry is not None else self._others.get(shard, -1)
            if have < generation:
                return False
        return True

    # ----- internals --------------------------------------------------------------------

    def _all_rows(self, shard: int) -> tuple[set[int], set[int]]:
        meta = self.state.meta()
        return tuple(  # type: ignore[return-value]
            set(rows_of_shard(shard, meta.shards, meta.count(side)).tolist()) for side in SIDES
        )

    def _ids_of(self, side: str, indices: np.ndarray) -> list[str]:
        known = self._ids[side]
        missing = [n for n in indices.tolist() if n not in known]
        if missing:
            known.update(zip(missing, self.state.ids_of(side, missing), strict=True))
        return [known[n] for n in indices.tolist()]

    def _produce(self, shard: int, known: Known, rows: tuple[set[int], set[int]]) -> int:
        """Read every record first (Redis may fail: then nothing was handed over), then
        hand them to the producer as one flight."""
        if self._shape is None:
            meta = self.state.meta()
            self._shape = (meta.shards, meta.params.factors)
        records = []
        for side, wanted in zip(SIDES, rows, strict=True):
            indices = np.array(sorted(wanted), dtype=np.int64)
            if not len(indices):
                continue
            factors = self.state.read_factors(side, indices, *self._shape)
            for id_, factor in zip(self._ids_of(side, indices), factors, strict=True):
                records.append(FactorRecord(self.state.layout.namespace, side, id_, factor,
                                            shard, known[0]))  # fmt: skip
        flight = _Flight(known, len(records))
        self._shards[shard].flights.append(flight)

        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                self._failure = f"{self.topic}: {error}"
                return
            flight.waiting -= 1

        for record in records:
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=record.key, value=record.value(),
                        headers=record.headers(), on_delivery=delivered,
                    )  # fmt: skip
                    break
                except BufferError:  # the local queue is full: let the broker catch up
                    self.producer.poll(0.01)
        return len(records)
