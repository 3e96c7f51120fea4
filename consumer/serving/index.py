"""An in-memory index kept current from the factors topic: the smallest serving layer.

It reads the topic from the beginning (compaction leaves each row's newest value) and
then follows it; `top_n` scores a user against every item it holds. The receipt tells a
reader when a deletion reached it: receipts are published only after the factors they
depend on are acknowledged, so once a receipt is read, reading the factors topic to its
end (`catch_up`) brings in every row the deletion changed; `shows` checks it through the
generations the receipt names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumer.receipts import Receipt
from consumer.serving.records import FactorRecord, parse_key, tombstone_source


class FactorIndex:
    def __init__(self, kafka: Mapping[str, Any], topic: str, namespace: str) -> None:
        self.topic = topic
        self.namespace = namespace
        self.vectors: dict[str, dict[str, np.ndarray]] = {"user": {}, "item": {}}
        self.generations: dict[int, int] = {}  # shard -> the newest commit seen of it
        self.records = 0
        group = f"factor-index-{uuid.uuid4().hex[:8]}"  # reads alone, commits nothing
        self._consumer = Consumer({**kafka, "group.id": group, "enable.auto.commit": False})
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._partitions = sorted(partitions)
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        self._items: tuple[list[str], np.ndarray] | None = None  # the item matrix, built lazily

    def close(self) -> None:
        self._consumer.close()

    def poll(self, timeout_s: float = 0.1) -> int:
        """Apply what the topic has now. Returns records applied."""
        applied = 0
        for message in self._consumer.consume(num_messages=10_000, timeout=timeout_s):
            if message.error() is not None:
                continue
            if message.value() is None:  # a tombstone: the subject was erased whole
                source = tombstone_source(message.headers())
                if source is None or source[0] != self.namespace:
                    continue
                side, id_ = parse_key(message.key())
                self.vectors[side].pop(id_, None)
                shard, generation = source[1], source[2]
            else:
                record = FactorRecord.from_json(message.value())
                if record.namespace != self.namespace:
                    continue
                side, shard, generation = record.side, record.shard, record.generation
                self.vectors[side][record.id] = record.factor
            self.generations[shard] = max(self.generations.get(shard, 0), generation)
            if side == "item":
                self._items = None
            applied += 1
        self.records += applied
        return applied

    def catch_up(self, timeout_s: float = 30.0) -> None:
        """Read to the end the topic has now (every record produced before this call):
        each partition read to its high watermark, then until a read finds nothing more
        (a broker whose watermark lags its last batch still hands that batch over)."""
        ends = {}
        for p in self._partitions:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=10
            )
            if high > low:
                ends[p] = high
        deadline = time.monotonic() + timeout_s
        while True:
            applied = self.poll(0.05)
            positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
            if applied == 0 and all(tp.offset >= ends[tp.partition] for tp in positions):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the factors topic was not read to its end in {timeout_s} s")

    def shows(self, receipt: Receipt) -> bool:
        """Has this index read every shard the receipt's parts changed up to their commit?"""
        return all(
            self.generations.get(shard, 0) >= generation
            for shard, generation in receipt.shard_generations().items()
        )

    def top_n(self, user: str, n: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The user's n best items by score x_u . y_i (items in `exclude` left out)."""
        if self._items is None:
            ids = sorted(self.vectors["item"])
            matrix = np.stack([self.vectors["item"][i] for i in ids]) if ids else np.zeros((0, 0))
            self._items = (ids, matrix)
        ids, matrix = self._items
        if not ids or user not in self.vectors["user"]:
            return []
        scores = matrix @ self.vectors["user"][user]
        skip = set(exclude)
        order = np.argsort(-scores, kind="stable")
        out = [(ids[j], float(scores[j])) for j in order[: n + len(skip)] if ids[j] not in skip]
        return out[:n]
