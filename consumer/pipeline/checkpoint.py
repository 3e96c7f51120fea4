"""The checkpoint: the commit order, stated once, and its last two steps enforced here.

A batch is either read from the input (its events go to their shards' inboxes) or a step
of the owned shards (the inboxes' work applied). For every batch, in this order and never
otherwise (where each step is kept):

1. its effect is durable in Redis: an input batch's events each in its shard's inbox
   (`Engine.ingest`: a request is answered from there, whoever owns the shard); a step's
   fenced, redo-logged shard commits (`Engine.step`, `ModelState.commit`), which store
   each receipt in its shard, marked unsent;
2. the factors a step changed are acknowledged on the factors topic: a receipt waits
   until the publisher covers every part it names (`Application._await_factors`,
   `_ready`, `FactorPublisher.covers`); the factors topic off, this step is empty;
3. its receipts and dead letters are acknowledged by the broker (`Checkpoint.submit`,
   below);
4. what was acknowledged is recorded: an input batch's offsets committed, the group's
   record of what the state holds (below, once 3 is done for this batch and every batch
   before it); a step's receipts marked sent in their shards (`Engine.sent`, the
   `on_done` of their submit), so that no later owner sends them again.

tests/service/test_commit_order.py kills the whole service between each two of these
steps (against the in-memory broker, brokers/local.py) and restarts it.

A crash anywhere replays from the last committed offsets; the state recognises what it
already holds and only re-sends receipts. The steps overlap across batches: once batch N
is durable and its receipts are on their way, batch N+1 is read and solved while the
broker acknowledges N; N's offsets are committed when its last record is acknowledged and
every batch before it is committed (per partition, offsets only move forward).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from consumer.events import Partition

log = logging.getLogger("unlearn.checkpoint")

# topic, key, value (None: a tombstone, as a dead letter of one keeps it), headers
Record = tuple[str, bytes | str | None, bytes | str | None, list[tuple[str, bytes]] | None]
# (topic, key, value, headers)


class AcknowledgementFailed(RuntimeError):
    """The broker did not take a receipt or dead letter: the service must stop without
    committing the batch's offsets (a restart replays it and sends them again)."""


@dataclass
class _InFlight:
    offsets: dict[Partition, int]  # partition -> the next offset to read
    waiting: int  # records not yet acknowledged
    on_done: Callable[[], None] | None = None  # once acknowledged and committed
    submitted: float = field(default_factory=time.perf_counter)


Commit = Callable[[list[TopicPartition], bool], None]  # (offsets, asynchronous)
Note = Callable[[str, int], str]  # offset commit metadata for a partition


class Checkpoint:
    def __init__(
        self,
        producer: Producer,
        commit: Commit,
        note: Note,
        max_in_flight: int = 16,
        on_acknowledged: Callable[[float], None] | None = None,
    ) -> None:
        self.producer = producer
        self._commit = commit
        self._note = note
        self.max_in_flight = max_in_flight
        self._on_acknowledged = on_acknowledged  # seconds from submit to the last ack
        self._batches: collections.deque[_InFlight] = collections.deque()
        self._failure: str | None = None

    @property
    def in_flight(self) -> int:
        return len(self._batches)

    def submit(
        self,
        offsets: dict[Partition, int],
        records: list[Record],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """A batch whose effect is durable: send its records, commit its offsets once the
        broker has them all. Waits first if too many batches are still unacknowledged."""
        self._raise_failure()
        while len(self._batches) >= self.max_in_flight:
            self.producer.poll(0.005)
            self._advance()
        batch = _InFlight(dict(offsets), len(records), on_done)
        self._batches.append(batch)
        for topic, key, value, headers in records:
            self._produce(batch, topic, key, value, headers)
        self.producer.poll(0)
        self._advance()

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve the broker's acknowledgements (waiting up to `timeout_s` for the first);
        commit what they complete."""
        self.producer.poll(timeout_s)
        self._advance()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted batch is acknowledged and committed (synchronously:
        a rebalance or a shutdown follows). False when the time ran out."""
        deadline = time.monotonic() + timeout_s
        while self._batches:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.producer.poll(min(remaining, 0.05))
            self._advance(asynchronous=False)
        return True

    # ----- internals --------------------------------------------------------------------

    def _produce(self, batch: _InFlight, topic, key, value, headers) -> None:
        def delivered(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                self._failure = f"{topic}: {error}"
                return
            batch.waiting -= 1

        while True:
            try:
                self.producer.produce(topic, key=key, value=value, headers=headers,
                                      on_delivery=delivered)  # fmt: skip
                return
            except BufferError:  # the local queue is full: let the broker catch up
                self.producer.poll(0.01)

    def _advance(self, asynchronous: bool = True) -> None:
        self._raise_failure()
        done: dict[Partition, int] = {}
        finished: list[_InFlight] = []
        while self._batches and self._batches[0].waiting == 0:
            batch = self._batches.popleft()
            finished.append(batch)
            if self._on_acknowledged is not None:
                self._on_acknowledged(time.perf_counter() - batch.submitted)
            for partition, offset in batch.offsets.items():
                done[partition] = max(done.get(partition, -1), offset)
        if done:
            offsets = [
                TopicPartition(t, p, o, metadata=self._note(t, p)) for (t, p), o in done.items()
            ]
            try:
                self._commit(offsets, asynchronous)
            except KafkaException as exc:
                # The state is durable and knows what it applied: a lost commit only means
                # these events are read again and their receipts re-sent.
                log.warning("offset commit failed (%s); those events will be read again", exc)
        for batch in finished:
            if batch.on_done is not None:
                batch.on_done()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise AcknowledgementFailed(f"not acknowledged by the broker: {self._failure}")
