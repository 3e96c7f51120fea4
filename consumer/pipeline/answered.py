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
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

log = logging.getLogger("unlearn.answered")

# Receipts carry their producer's clock; the state's commit time is the committing
# instance's. Instances' clocks may differ by this much (NTP keeps them far closer).
CLOCK_SKEW_S = 30.0
READ_BUDGET_S = 30.0


def answered_through(
    kafka_config: dict[str, Any],
    topic: str,
    partition_keys: set[str],
    since: float | None,
    budget_s: float = READ_BUDGET_S,
    skew_s: float = CLOCK_SKEW_S,
) -> dict[str, int]:
    """Partition key -> the last offset of it a receipt was published for, among receipts
    published from `since` (seconds, less `skew_s`; None: the whole topic).

    Best effort within `budget_s`: what could not be read is logged, and the answer is
    what was found (the group's committed offsets still count as answered)."""
    if not partition_keys:
        return {}
    reader = Consumer(
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
        return _read(reader, topic, partition_keys, start, budget_s)
    except KafkaException as exc:
        log.warning("the receipts topic could not be read back (%s): counting on the "
                    "group's offsets alone", exc)  # fmt: skip
        return {}
    finally:
        reader.close()


def _read(
    reader: Consumer, topic: str, wanted: set[str], since: float | None, budget_s: float
) -> dict[str, int]:
    deadline = time.monotonic() + budget_s
    metadata = reader.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return {}
    numbers = sorted(metadata.partitions)
    at_ms = int(since * 1000) if since is not None else -1
    if since is None:
        starts = [TopicPartition(topic, n, -2) for n in numbers]  # the log start
    else:
        found = reader.offsets_for_times([TopicPartition(topic, n, at_ms) for n in numbers], 10)
        starts = [tp for tp in found if tp.offset >= 0]  # -1: nothing published since
    out: dict[str, int] = {}
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
                _note(out, message.value(), wanted)
    if open_partitions:
        log.warning("the receipts topic was not read to its end within %.0f s (partitions "
                    "%s): reapplied receipts there may not be marked", budget_s,
                    sorted(open_partitions))  # fmt: skip
    log.info("read %d receipts back: %d partitions answered beyond", read, len(out))
    return out


def _note(out: dict[str, int], value: bytes | None, wanted: set[str]) -> None:
    try:
        source = json.loads(value or b"{}").get("source")
        key, _, offset = str(source).rpartition(":")
        number = int(offset)
    except (ValueError, AttributeError):
        return  # not a receipt of ours: nothing it could say
    if key in wanted and number > out.get(key, -1):
        out[key] = number
