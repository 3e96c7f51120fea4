"""What was answered, as the receipts topic remembers it.

Receipts are acknowledged by the broker before the group's offsets are committed (the
checkpoint's order), so a process killed between the two leaves receipts that neither
the group's offsets nor, after a rollback, the state know about. When Redis then comes
back from an older snapshot, those requests are applied a second time: their new
receipts must say `reapplied`, or a requester holds two "original" answers for one
request. The receipts topic is the one record of them that survives both the kill and
the rollback, so it is read back, from shortly before the state's last commit to its
end, and every receipt's `source` ("topic:partition:offset") names an answered message.

Only receipts published after the state's last commit can name messages the state does
not hold, so the read is short when nothing was lost (the receipts of the last batches).

The same read serves a shard's new owner: a request its shard still has to answer, whose
receipt is already in the topic, was answered before the state lost its effect (a
restore); its receipt says `reapplied`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from consumer.brokers.kafka import Clients, KafkaClients

log = logging.getLogger("unlearn.answered")

# Receipts carry their producer's clock; the state's commit time is the committing
# instance's. Instances' clocks may differ by this much (NTP keeps them far closer).
CLOCK_SKEW_S = 30.0
READ_BUDGET_S = 30.0
# A read from a few seconds later than asked still holds what the asked one would, but for
# receipts whose clock was more than CLOCK_SKEW_S - REUSE_SLACK_S behind.
REUSE_SLACK_S = 5.0


@dataclass
class Answered:
    """What the receipts published since some time name."""

    through: dict[str, int] = field(default_factory=dict)  # partition key -> last offset
    sources: set[str] = field(default_factory=set)  # every "topic:partition:offset"
    since: float | None = None  # the read covered receipts published from here (None: all)
    read_at: float = field(default_factory=time.monotonic)

    def through_of(self, partition_keys: set[str]) -> dict[str, int]:
        return {k: v for k, v in self.through.items() if k in partition_keys}

    def covers(self, since: float | None, max_age_s: float) -> bool:
        """Whether this read, done less than `max_age_s` ago, holds every receipt a read
        from `since` would, give or take REUSE_SLACK_S of the clock skew allowed (one read
        serves a rebalance's partitions and shards alike)."""
        if time.monotonic() - self.read_at >= max_age_s:
            return False
        return self.since is None or (since is not None and self.since <= since + REUSE_SLACK_S)


def answered_through(
    kafka_config: dict[str, Any],
    topic: str,
    partition_keys: set[str],
    since: float | None,
    budget_s: float = READ_BUDGET_S,
    skew_s: float = CLOCK_SKEW_S,
) -> dict[str, int]:
    """Partition key -> the last offset of it a receipt was published for, among receipts
    published from `since` (seconds, less `skew_s`; None: the whole topic)."""
    if not partition_keys:
        return {}
    found = read_answered(kafka_config, topic, since, budget_s, skew_s)
    return found.through_of(partition_keys)


def read_answered(
    kafka_config: dict[str, Any],
    topic: str,
    since: float | None,
    budget_s: float = READ_BUDGET_S,
    skew_s: float = CLOCK_SKEW_S,
    clients: Clients | None = None,
) -> Answered:
    """What the receipts published from `since` (seconds, less `skew_s`; None: the whole
    topic) answered.

    Best effort within `budget_s`: what could not be read is logged, and the answer is
    what was found (the group's committed offsets still count as answered)."""
    reader = (clients or KafkaClients()).consumer(
        {
            **kafka_config,
            "group.id": "unlearn-answered",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        start = since - skew_s if since is not None else None
        found = _read(reader, topic, start, budget_s)
        found.since = since
        return found
    except KafkaException as exc:
        log.warning("the receipts topic could not be read back (%s): counting on the "
                    "group's offsets alone", exc)  # fmt: skip
        return Answered(since=since)
    finally:
        reader.close()


def _read(reader: Consumer, topic: str, since: float | None, budget_s: float) -> Answered:
    deadline = time.monotonic() + budget_s
    metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return Answered()
    numbers = sorted(metadata.partitions)
    at_ms = int(since * 1000) if since is not None else -1
    if since is None:
        starts = [TopicPartition(topic, n, -2) for n in numbers]  # the log start
    else:
        found = reader.offsets_for_times([TopicPartition(topic, n, at_ms) for n in numbers], 10)
        starts = [tp for tp in found if tp.offset >= 0]  # -1: nothing published since
    out = Answered()
    open_partitions = {tp.partition for tp in starts}
    if not open_partitions:
        return out
    reader.assign(starts)
    read = 0
    while open_partitions and time.monotonic() < deadline:
        for message in reader.consume(num_messages=500, timeout=0.2):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                continue
            read += 1
            kind, timestamp = message.timestamp()
            # The broker's time lookup only saves reading; the times themselves decide
            # (some brokers answer a lookup past the end with an earlier offset).
            if kind == TIMESTAMP_NOT_AVAILABLE or timestamp >= at_ms:
                _note(out, message.value())
    if open_partitions:
        log.warning("the receipts topic was not read to its end within %.0f s (partitions "
                    "%s): reapplied receipts there may not be marked", budget_s,
                    sorted(open_partitions))  # fmt: skip
    log.info("read %d receipts back", read)
    return out


def _note(out: Answered, value: bytes | None) -> None:
    try:
        source = json.loads(value or b"{}").get("source")
        key, _, offset = str(source).rpartition(":")
        number = int(offset)
    except (ValueError, AttributeError):
        return  # not a receipt of ours: nothing it could say
    out.sources.add(str(source))
    if number > out.through.get(key, -1):
        out.through[key] = number
