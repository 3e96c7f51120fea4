"""An in-memory Kafka broker: the whole service runs against it in one Python process, and
a test can kill a service process at any point of its commit order (arroyo's
`LocalBroker` serves the same purpose for its processing steps).

It keeps what the service relies on from Kafka, and nothing it must not rely on:
- topics of numbered partitions; a record gets its offset (and a create time) when it is
  appended, and is appended only when its producer delivers it (`poll`, `flush`): a record
  produced and never delivered is lost with its process;
- consumer groups whose committed offsets carry their metadata; membership changes are an
  eager rebalance that a member sees in its next `consume` (every partition revoked,
  then its share assigned, partition p of a topic to the member p mod n in join order);
- a partition end reported as a message whose error is `_PARTITION_EOF`, where asked for.

`LocalBroker.process()` gives the clients of one process; `Process.kill_when(test)` kills
the process at the first operation `test` accepts, before that operation takes effect:
its producers' undelivered records are dropped, its consumers leave their groups without
committing, and every later call of any of its clients raises `Killed`. A record is
delivered at the producer's next `poll` or `flush`, or no sooner than a topic's `delay`
after it was produced: a slow broker, so that what must wait for an acknowledgement is
seen to wait.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    OFFSET_STORED,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    TopicPartition,
)

Partition = tuple[str, int]
Headers = list[tuple[str, bytes]] | None


class Killed(BaseException):
    """The process this client belongs to was killed. A BaseException: nothing of the
    service mistakes it for an error it could handle, as nothing runs after a kill."""


@dataclass(frozen=True)
class Operation:
    """What a client of a process is about to do: "produce" (a record to `topic`, handed
    to the producer), "delivered" (that record appended, its callback not yet called),
    "commit" (`offsets` of `group`), or another call ("consume", "poll", "flush", ...)."""

    kind: str
    topic: str | None = None
    key: bytes | None = None
    value: bytes | None = None
    headers: Headers = None
    group: str | None = None
    offsets: tuple[tuple[str, int, int], ...] = ()


class LocalMessage:
    """A record as confluent-kafka's `Message` shows it."""

    __slots__ = ("_error", "_headers", "_key", "_offset", "_partition", "_topic", "_ts", "_value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        timestamp_ms: int,
        error: KafkaError | None = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._ts, self._error = timestamp_ms, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers:
        return list(self._headers) if self._headers else None

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._ts)

    def error(self) -> KafkaError | None:
        return self._error

    def __len__(self) -> int:
        return len(self._value or b"")


@dataclass
class _Topic:
    partitions: list[list[LocalMessage]]
    topic_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class _Group:
    members: list[LocalConsumer] = field(default_factory=list)
    generation: int = 0
    committed: dict[Partition, tuple[int, str | None]] = field(default_factory=dict)


class LocalBroker:
    def __init__(self) -> None:
        self._lock = threading.Condition(threading.RLock())
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._spread = itertools.count()  # round robin for records without a key
        self._delays: dict[str, float] = {}  # topic -> how long acknowledging it takes

    def delay(self, topic: str, seconds: float) -> None:
        """Records to `topic` are delivered no sooner than `seconds` after they were
        produced: a slow broker, so that what must wait for an acknowledgement is tested."""
        self._delays[topic] = seconds

    # ----- what a test sets up and inspects ----------------------------------------------

    def create_topic(self, name: str, partitions: int = 1) -> None:
        with self._lock:
            if name in self._topics:
                raise ValueError(f"topic {name} exists")
            self._topics[name] = _Topic([[] for _ in range(partitions)])

    def process(self) -> Process:
        """The clients of one (new) process."""
        return Process(self)

    def records(self, topic: str) -> list[LocalMessage]:
        """Every record `topic` holds, partition by partition, in offset order."""
        with self._lock:
            return [m for log in self._topics[topic].partitions for m in log]

    def committed(self, group: str) -> dict[Partition, int]:
        """The offsets `group` committed."""
        with self._lock:
            found = self._groups.get(group)
            return {p: o for p, (o, _) in found.committed.items()} if found else {}

    # ----- what the clients do -------------------------------------------------------------

    def _topic(self, name: str) -> _Topic | None:
        return self._topics.get(name)

    def _append(
        self, topic: str, partition: int, key, value, headers: Headers, timestamp_ms: int
    ) -> LocalMessage | KafkaError:
        with self._lock:
            found = self._topics.get(topic)
            if found is None:
                return KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"no topic {topic}")
            if partition < 0:
                count = len(found.partitions)
                spread = zlib.crc32(key) if key is not None else next(self._spread)
                partition = spread % count
            if partition >= len(found.partitions):
                return KafkaError(KafkaError._UNKNOWN_PARTITION, f"{topic}:{partition}")
            log = found.partitions[partition]
            message = LocalMessage(topic, partition, len(log), key, value, headers,
                                   timestamp_ms or int(time.time() * 1000))  # fmt: skip
            log.append(message)
            self._lock.notify_all()
            return message

    def _group(self, name: str) -> _Group:
        return self._groups.setdefault(name, _Group())

    def _join(self, member: LocalConsumer) -> None:
        with self._lock:
            group = self._group(member.group)
            if member not in group.members:
                group.members.append(member)
            group.generation += 1

    def _leave(self, member: LocalConsumer) -> None:
        with self._lock:
            group = self._groups.get(member.group)
            if group is not None and member in group.members:
                group.members.remove(member)
                group.generation += 1

    def _share(self, member: LocalConsumer) -> tuple[int, list[Partition]]:
        """The group's generation and `member`'s partitions in it."""
        with self._lock:
            group = self._group(member.group)
            share = []
            for topic in sorted(member.topics):
                found = self._topics.get(topic)
                if found is None:
                    continue
                takers = [m for m in group.members if topic in m.topics]
                for number in range(len(found.partitions)):
                    if takers[number % len(takers)] is member:
                        share.append((topic, number))
            return group.generation, share


class Process:
    """The clients of one process, killed together."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self.alive = True
        self._traps: list[Callable[[Operation], bool]] = []
        self._consumers: list[LocalConsumer] = []
        self._producers: list[LocalProducer] = []
        self.killed_at: Operation | None = None

    def kill_when(self, test: Callable[[Operation], bool]) -> None:
        """Kill this process at the first operation `test` accepts, before it happens."""
        self._traps.append(test)

    def kill(self) -> None:
        self.alive = False
        for producer in self._producers:
            producer._queue.clear()  # produced, never delivered: lost
        for consumer in self._consumers:
            self.broker._leave(consumer)

    def _check(self, operation: Operation) -> None:
        if not self.alive:
            raise Killed("the process was killed")
        if any(test(operation) for test in self._traps):
            self.killed_at = operation
            self.kill()
            raise Killed(f"killed before {operation.kind} {operation.topic or ''}".strip())

    # ----- the Clients interface (brokers.kafka) ------------------------------------------

    def consumer(self, config: dict[str, Any]) -> LocalConsumer:
        made = LocalConsumer(self, config)
        self._consumers.append(made)
        return made

    def producer(self, config: dict[str, Any]) -> LocalProducer:
        made = LocalProducer(self)
        self._producers.append(made)
        return made

    def admin(self, config: dict[str, Any]) -> LocalAdmin:
        return LocalAdmin(self)


# ----- clients -------------------------------------------------------------------------


@dataclass
class _PartitionMeta:
    id: int


@dataclass
class _TopicMeta:
    topic: str
    partitions: dict[int, _PartitionMeta]
    error: KafkaError | None = None


@dataclass
class _ClusterMeta:
    topics: dict[str, _TopicMeta]


def _metadata(broker: LocalBroker, topic: str | None) -> _ClusterMeta:
    with broker._lock:
        names = [topic] if topic is not None else sorted(broker._topics)
        out = {}
        for name in names:
            found = broker._topic(name)
            if found is None:
                error = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"no topic {name}")
                out[name] = _TopicMeta(name, {}, error)
            else:
                parts = {n: _PartitionMeta(n) for n in range(len(found.partitions))}
                out[name] = _TopicMeta(name, parts)
        return _ClusterMeta(out)


class LocalProducer:
    def __init__(self, process: Process) -> None:
        self.process = process
        # (topic, partition, key, value, headers, timestamp, callback, produced at)
        self._queue: list[tuple[str, int, Any, Any, Headers, int, Callable | None, float]] = []

    def produce(
        self,
        topic: str,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        partition: int = -1,
        on_delivery: Callable | None = None,
        callback: Callable | None = None,
        timestamp: int = 0,
        headers: Headers = None,
    ) -> None:
        key, value = _bytes(key), _bytes(value)
        headers = [(k, _bytes(v)) for k, v in headers] if headers else None
        self.process._check(Operation("produce", topic, key, value, headers))
        callback = on_delivery or callback
        self._queue.append(
            (topic, partition, key, value, headers, timestamp, callback, time.monotonic())
        )

    def poll(self, timeout: float | None = 0) -> int:
        """Deliver what is due (each record appended, its callback called), waiting up to
        `timeout` for something to be."""
        self.process._check(Operation("poll"))
        deadline = time.monotonic() + (timeout or 0)
        while True:
            delivered = self._deliver()
            if delivered or time.monotonic() >= deadline:
                return delivered
            time.sleep(min(0.002, max(deadline - time.monotonic(), 0)))

    def flush(self, timeout: float | None = None) -> int:
        """Deliver everything, waiting up to `timeout`; how many records are left."""
        self.process._check(Operation("flush"))
        deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
        while True:
            self._deliver()
            if not self._queue or time.monotonic() >= deadline:
                return len(self._queue)
            time.sleep(0.002)

    def __len__(self) -> int:
        return len(self._queue)

    def _deliver(self) -> int:
        now = time.monotonic()
        delays = self.process.broker._delays
        due = [r for r in self._queue if now - r[-1] >= delays.get(r[0], 0.0)]
        if not due:
            return 0
        self._queue = [r for r in self._queue if now - r[-1] < delays.get(r[0], 0.0)]
        for topic, partition, key, value, headers, timestamp, on_delivery, _ in due:
            result = self.process.broker._append(topic, partition, key, value, headers, timestamp)
            # Appended, its acknowledgement not yet seen by the process: a kill here leaves
            # the record on the topic and the process unaware of it.
            self.process._check(Operation("delivered", topic, key, value, headers))
            if on_delivery is not None:
                if isinstance(result, KafkaError):
                    on_delivery(result, None)
                else:
                    on_delivery(None, result)
        return len(due)


class LocalConsumer:
    def __init__(self, process: Process, config: dict[str, Any]) -> None:
        self.process = process
        self.broker = process.broker
        self.group = str(config.get("group.id", ""))
        self.reset = str(config.get("auto.offset.reset", "latest"))
        self.eof = str(config.get("enable.partition.eof", "false")).lower() == "true"
        self.topics: set[str] = set()
        self._on_assign: Callable | None = None
        self._on_revoke: Callable | None = None
        self._generation = -1  # the group's generation this member's partitions are of
        self._positions: dict[Partition, int] = {}
        self._paused: set[Partition] = set()
        self._at_end: set[Partition] = set()  # partition ends already reported

    # ----- membership ----------------------------------------------------------------------

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable | None = None,
        on_revoke: Callable | None = None,
        on_lost: Callable | None = None,
    ) -> None:
        self.process._check(Operation("subscribe"))
        self.topics = set(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self.broker._join(self)

    def _rebalance(self) -> None:
        if not self.topics:
            return
        generation, share = self.broker._share(self)
        if generation == self._generation:
            return
        self._generation = generation
        held = [TopicPartition(t, p) for t, p in sorted(self._positions)]
        if held and self._on_revoke is not None:
            self._on_revoke(self, held)
        self._positions.clear()
        self._paused.clear()
        given = [TopicPartition(t, p) for t, p in share]
        if self._on_assign is not None:
            self._on_assign(self, given)
        else:
            self.assign(given)

    def close(self) -> None:
        self.process._check(Operation("close"))
        self.broker._leave(self)
        self._positions.clear()

    # ----- positions ------------------------------------------------------------------------

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.process._check(Operation("assign"))
        for tp in partitions:
            self._seek_to(tp.topic, tp.partition, tp.offset)

    def seek(self, tp: TopicPartition) -> None:
        self.process._check(Operation("seek"))
        self._seek_to(tp.topic, tp.partition, tp.offset)

    def _seek_to(self, topic: str, number: int, offset: int) -> None:
        low, high = self._bounds((topic, number))
        if offset in (OFFSET_INVALID, OFFSET_STORED):
            stored = self.broker._group(self.group).committed.get((topic, number))
            offset = stored[0] if stored is not None else OFFSET_END
            if stored is None and self.reset == "earliest":
                offset = OFFSET_BEGINNING
        if offset == OFFSET_BEGINNING:
            offset = low
        elif offset == OFFSET_END:
            offset = high
        self._positions[(topic, number)] = offset
        self._at_end.discard((topic, number))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._paused -= {(tp.topic, tp.partition) for tp in partitions}

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self._positions)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition,
                           self._positions.get((tp.topic, tp.partition), OFFSET_INVALID))
            for tp in partitions
        ]  # fmt: skip

    # ----- reading ------------------------------------------------------------------------

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[LocalMessage]:
        self.process._check(Operation("consume"))
        self._rebalance()
        deadline = time.monotonic() + (timeout if timeout >= 0 else 3600.0)
        with self.broker._lock:
            while True:
                taken = self._take(num_messages)
                remaining = deadline - time.monotonic()
                if taken or remaining <= 0:
                    return taken
                self.broker._lock.wait(remaining)
                if not self.process.alive:
                    raise Killed("the process was killed")

    def poll(self, timeout: float = -1) -> LocalMessage | None:
        found = self.consume(1, timeout)
        return found[0] if found else None

    def _take(self, count: int) -> list[LocalMessage]:
        out: list[LocalMessage] = []
        for partition in sorted(self._positions):
            if partition in self._paused:
                continue
            found = self.broker._topic(partition[0])
            if found is None:
                continue
            log = found.partitions[partition[1]]
            position = self._positions[partition]
            while len(out) < count and position < len(log):
                out.append(log[position])
                position += 1
            self._positions[partition] = position
            if position >= len(log) and self.eof and partition not in self._at_end:
                if len(out) < count:
                    self._at_end.add(partition)
                    error = KafkaError(KafkaError._PARTITION_EOF, "end of partition")
                    out.append(LocalMessage(*partition, position, None, None, None, 0, error))
            elif position < len(log):
                self._at_end.discard(partition)
            if len(out) >= count:
                break
        return out

    # ----- offsets ------------------------------------------------------------------------

    def commit(
        self,
        message: LocalMessage | None = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> None:
        given = offsets or []
        spec = tuple((tp.topic, tp.partition, tp.offset) for tp in given)
        self.process._check(Operation("commit", group=self.group, offsets=spec))
        with self.broker._lock:
            stored = self.broker._group(self.group).committed
            for tp in given:
                stored[(tp.topic, tp.partition)] = (tp.offset, tp.metadata)

    def committed(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        self.process._check(Operation("committed"))
        with self.broker._lock:
            stored = self.broker._group(self.group).committed
            out = []
            for tp in partitions:
                offset, note = stored.get((tp.topic, tp.partition), (OFFSET_INVALID, None))
                found = TopicPartition(tp.topic, tp.partition, offset)
                if note is not None:
                    found = TopicPartition(tp.topic, tp.partition, offset, metadata=note)
                out.append(found)
            return out

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return self._bounds((partition.topic, partition.partition))

    def _bounds(self, partition: Partition) -> tuple[int, int]:
        with self.broker._lock:
            found = self.broker._topic(partition[0])
            if found is None or partition[1] >= len(found.partitions):
                return (-1, -1)
            return (0, len(found.partitions[partition[1]]))

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        out = []
        with self.broker._lock:
            for tp in partitions:
                found = self.broker._topic(tp.topic)
                log = found.partitions[tp.partition] if found is not None else []
                at = next((m.offset() for m in log if m._ts >= tp.offset), -1)
                out.append(TopicPartition(tp.topic, tp.partition, at))
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> _ClusterMeta:
        self.process._check(Operation("metadata"))
        return _metadata(self.broker, topic)


@dataclass
class _Description:
    name: str
    topic_id: str


class LocalAdmin:
    def __init__(self, process: Process) -> None:
        self.process = process

    def describe_topics(self, topics: Any, **_: Any) -> dict[str, Future]:
        """Each topic's description (its id, new for each life of the topic)."""
        self.process._check(Operation("describe"))
        out: dict[str, Future] = {}
        for name in _names(topics):
            future: Future = Future()
            found = self.process.broker._topic(name)
            if found is None:
                future.set_exception(_unknown(name))
            else:
                future.set_result(_Description(name, found.topic_id))
            out[name] = future
        return out

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> _ClusterMeta:
        return _metadata(self.process.broker, topic)


def _names(topics: Any) -> Iterable[str]:
    names = getattr(topics, "topic_names", topics)
    return list(names)


def _unknown(name: str) -> Exception:
    from confluent_kafka import KafkaException

    return KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"no topic {name}"))


def _bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
