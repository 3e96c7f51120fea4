"""The input in time order: the partitions of both topics merged by message timestamp.

A replay (a state restored from a backup, a fresh namespace fed from offset 0) reads both
topics from far behind, and which partition's messages the consumer fetches first is a
matter of timing. A deletion taken before the interactions that preceded it would find
nothing to remove: they would come next as late copies, never learned, and its receipt
would say `removed: 0` where the first run said 106. So while partitions are behind, the
merge holds each message until every partition that still has messages to give has shown
one at least as late (Kafka Streams does the same across a task's partitions); then it
takes the earliest. A partition with nothing more to give (its position at the broker's
high watermark, as the last fetch told) never holds the others, nor does a paused one,
nor one that has given nothing for `wait_s` (the broker said there was more; it is waited
for that long, then passed over and counted). At rest nothing is behind and a message is
taken as soon as it is read.

Messages are taken in (timestamp, interactions before deletions, topic, partition,
offset) order between partitions, offset order within one: every replay of the same input
takes the same messages in the same order. Pure: what a partition has left to give is
asked of the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from consumer.events import Partition, order_key

Read = tuple[Message, float]  # a message and when it was read


@dataclass
class TimeOrder:
    """Read messages, buffered per partition, taken in merged order."""

    deletions_topic: str
    wait_s: float = 1.0
    held: dict[Partition, deque[Read]] = field(default_factory=dict)
    # The partition that holds the merge back, and since when (the wait is bounded).
    _waiting_on: Partition | None = None
    _waiting_since: float = 0.0
    passed_over: int = 0  # partitions given up on after wait_s (counted as a metric)
    # Given up on: not waited for again until they give a message.
    _given_up: set[Partition] = field(default_factory=set)

    def add(self, messages: Iterable[Read]) -> None:
        for read in messages:
            message = read[0]
            partition = (message.topic(), message.partition())
            self.held.setdefault(partition, deque()).append(read)
            self._given_up.discard(partition)

    def __len__(self) -> int:
        return sum(len(q) for q in self.held.values())

    def ready(self, held_back: Collection[Partition] = ()) -> bool:
        """Whether messages of a partition not held back are waiting to be taken."""
        return any(q for p, q in self.held.items() if p not in held_back)

    def drop(self, partitions: Iterable[Partition]) -> None:
        """Forget what was read of these partitions (revoked, or read again from a seek)."""
        for partition in partitions:
            self.held.pop(partition, None)
            self._given_up.discard(partition)
            if self._waiting_on == partition:
                self._waiting_on = None

    def take(
        self,
        limit: int,
        assigned: Iterable[Partition],
        has_more: Callable[[Partition], bool],
        now: float,
        held_back: Collection[Partition] = (),
    ) -> list[Read]:
        """Up to `limit` messages in merged order. `has_more(p)`: the broker holds messages
        of partition p beyond what was read (p assigned and not paused). What was read of a
        partition in `held_back` (paused by a surge of bad input, or held at a gap) stays
        here until it is released: a pause stops what was already read, too."""
        out: list[Read] = []
        others = [p for p in assigned if p not in self._given_up]
        while len(out) < limit:
            heads = {p: q[0] for p, q in self.held.items() if q and p not in held_back}
            if not heads:
                break
            first = min(heads, key=lambda p: self._key(heads[p][0]))
            blocking = next(
                (p for p in others if p not in heads and p != first and has_more(p)), None
            )
            if blocking is not None:
                if self._waiting_on != blocking:
                    self._waiting_on, self._waiting_since = blocking, now
                if now - self._waiting_since < self.wait_s:
                    break
                self.passed_over += 1  # it gave nothing for wait_s: go on without it
                self._given_up.add(blocking)
                others.remove(blocking)
                self._waiting_on = None
                continue
            self._waiting_on = None
            out.append(self.held[first].popleft())
        for partition in [p for p, q in self.held.items() if not q]:
            del self.held[partition]
        return out

    def waiting_for(self, now: float) -> float | None:
        """How long the merge may still hold for a partition behind (None: it holds none)."""
        if self._waiting_on is None or not len(self):
            return None
        return max(self.wait_s - (now - self._waiting_since), 0.0)

    def _key(self, message: Message):
        kind, stamp = message.timestamp()
        stamp = stamp if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else -1
        topic = message.topic()
        return order_key(
            stamp, topic == self.deletions_topic, topic, message.partition(), message.offset()
        )
