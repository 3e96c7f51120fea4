"""Partitions as the state sees them: their life (epoch), where they resume, what is
missing, and the check that a topic's offsets still mean what the state recorded.

The decisions are positions.py's; this module asks the broker and Redis what they need
(committed offsets, log start and end, topic ids, the messages at recorded offsets) and
seeks the consumer; it reads the receipts topic back for receipts published but never
committed (answered.py). It runs on assignment, when offsets run backwards (a topic
deleted and created again under a running consumer), and after the state was found
rolled back.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.events import partition_key
from consumer.pipeline.answered import answered_through
from consumer.pipeline.dead_letters import Partition
from consumer.pipeline.positions import (
    Marks,
    Resume,
    decide,
    fingerprint,
    offsets_to_probe,
    same_log,
)
from consumer.state.store import ModelState

log = logging.getLogger("unlearn.assignment")

_NO_TOPIC_ID = base64.b64encode(bytes(16)).decode().rstrip("=")
_EPOCH_NOTE = "unlearn-epoch="  # offset commit metadata: the partition's life
# Probe answers meaning "no message at that offset any more".
_NOTHING_THERE = (
    KafkaError._PARTITION_EOF,
    KafkaError.OFFSET_OUT_OF_RANGE,
    KafkaError._AUTO_OFFSET_RESET,
)


@dataclass
class PartitionView:
    """What this instance knows of one assigned partition."""

    epoch: int = 0
    next_offset: int = -1  # the next offset expected from the consumer (-1: unknown)
    reapply_through: int = -1  # offsets up to this were acknowledged, then lost by the state
    missing: tuple[int, int] | None = None  # the state needs these; the broker lost them


@dataclass
class Verdicts:
    """What one pass found, for metrics and logs."""

    # (partition, why): "topic_id" (its id changed), "recreated" (a new log), "offsets_reused"
    new_epochs: list[tuple[Partition, str]] = field(default_factory=list)
    rolled_back: list[tuple[Partition, int]] = field(default_factory=list)  # messages lost
    gaps: list[tuple[Partition, tuple[int, int]]] = field(default_factory=list)


class Assignments:
    def __init__(
        self,
        consumer: Consumer,
        kafka_config: dict[str, Any],
        state: ModelState,
        receipts_topic: str | None = None,
    ) -> None:
        self.consumer = consumer
        self.kafka_config = kafka_config
        self.state = state
        self.receipts_topic = receipts_topic  # read back after a kill or a rollback
        self.views: dict[Partition, PartitionView] = {}
        self._admin: AdminClient | None = None

    # ----- what the rest of the service asks ------------------------------------------

    def epoch(self, topic: str, partition: int) -> int:
        view = self.views.get((topic, partition))
        return view.epoch if view is not None else 0

    def key(self, topic: str, partition: int) -> str:
        return partition_key(topic, partition, self.epoch(topic, partition))

    def acknowledged(self) -> dict[str, int]:
        """Partition key -> the last offset acknowledged before the state lost it."""
        return {
            partition_key(t, p, v.epoch): v.reapply_through
            for (t, p), v in self.views.items()
            if v.reapply_through >= 0
        }

    def lost_through(self, committed: dict[str, int]) -> None:
        """After a rollback: partition key -> the last offset this process had made durable
        (and may have sent receipts for). Receipts are acknowledged before the group's
        offsets are committed, so those offsets alone understate what was answered: what
        this process made durable is re-applied as `reapplied` too."""
        for (topic, number), view in self.views.items():
            offset = committed.get(partition_key(topic, number, view.epoch))
            if offset is not None and offset >= view.next_offset:
                view.reapply_through = max(view.reapply_through, offset)

    def gaps(self) -> dict[Partition, tuple[int, int]]:
        return {p: v.missing for p, v in self.views.items() if v.missing is not None}

    def ran_backwards(self, topic: str, partition: int, offset: int) -> bool:
        """Note a consumed offset; True when it is before the one expected (a topic
        re-created, or a broker that hands out old offsets again) without our seeking."""
        view = self.views.get((topic, partition))
        if view is None:
            return False
        backwards = 0 <= offset < view.next_offset
        view.next_offset = offset + 1
        return backwards

    def forget(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self.views.pop(partition, None)

    # ----- deciding -------------------------------------------------------------------

    def resolve(self, partitions: list[Partition]) -> tuple[list[TopicPartition], Verdicts]:
        """Each partition's life and resume offset (TopicPartitions to assign or seek)."""
        verdicts = Verdicts()
        if not partitions:
            return [], verdicts
        plain = [partition_key(t, p) for t, p in partitions]
        epochs = self.state.read_epochs(plain)
        topic_ids = self._topic_ids({t for t, _ in partitions})
        watermarks = self._watermarks(partitions)
        for (topic, number), name in zip(partitions, plain, strict=True):
            record, current_id = epochs[name], topic_ids.get(topic)
            if current_id and record.get("topic_id") and record["topic_id"] != current_id:
                low = watermarks[(topic, number)][0]
                epochs[name] = self._next_epoch(name, record, current_id, low)
                verdicts.new_epochs.append(((topic, number), "topic_id"))
            elif current_id and not record.get("topic_id"):
                epochs[name] = self.state.identify_epoch(name, record["epoch"], current_id)
        keys = {
            p: partition_key(*p, epochs[n]["epoch"]) for p, n in zip(partitions, plain, strict=True)
        }
        marks = self.state.read_marks(list(keys.values()))
        unsure = [p for p in partitions if keys[p] in marks]
        lows = {p: watermarks[p][0] for p in unsure}
        for partition, same, after in self._compare({p: marks[keys[p]] for p in unsure}, lows):
            if same:
                continue
            name = partition_key(*partition)
            # A new log is read from its start; offsets reused after a message that is
            # still the same, from the message after it.
            begin = lows[partition] if after is None else max(after + 1, lows[partition])
            epochs[name] = self._next_epoch(name, epochs[name], topic_ids.get(partition[0]), begin)
            keys[partition] = partition_key(*partition, epochs[name]["epoch"])
            verdicts.new_epochs.append(
                (partition, "offsets_reused" if after is not None else "recreated")
            )
        applied = self.state.read_applied()
        renewed = {p for p, _ in verdicts.new_epochs}
        committed = self._committed([p for p in partitions if p not in renewed])
        # Partitions the state applied from, and new lives of re-created topics (the state
        # may have come back from before the new life's first batch).
        answered = self._answered(
            {
                keys[p]
                for p in partitions
                if keys[p] in applied or epochs[partition_key(*p)]["epoch"]
            }
        )
        out = []
        for partition in partitions:
            low, high = watermarks[partition]
            record = epochs[partition_key(*partition)]
            stored = applied.get(keys[partition])
            offset, life = committed.get(partition, (None, None))
            if life != record["epoch"] and not (life is None and record["epoch"] == 0):
                offset = None  # committed in another life of the topic: it means nothing here
            lost = answered.get(keys[partition], -1)
            if record["epoch"] > 0 and stored is None:
                # A life nothing was applied from yet starts where it was found to begin
                # (unless receipts say some of it was answered: the state lost that).
                begin = max(int(record.get("start") or 0), low)
                if offset is not None and offset > begin:  # acknowledged in this life
                    lost = max(lost, offset - 1)
                resume = Resume(begin, lost if lost >= begin else -1, None)
            else:
                resume = decide(stored, offset, low, high, lost)
            view = PartitionView(
                record["epoch"],
                resume.offset,
                resume.reapply_through,
                resume.missing,
            )
            self.views[partition] = view
            if resume.reapply_through >= 0:
                lost = resume.reapply_through - resume.offset + 1
                verdicts.rolled_back.append((partition, lost))
            if resume.missing is not None:
                verdicts.gaps.append((partition, resume.missing))
            out.append(TopicPartition(partition[0], partition[1], resume.offset))
        if renewed:  # the group's offsets name the old log: start the new one's afresh
            fresh = [
                TopicPartition(
                    tp.topic,
                    tp.partition,
                    tp.offset,
                    metadata=self.commit_note(tp.topic, tp.partition),
                )
                for tp in out
                if (tp.topic, tp.partition) in renewed
            ]
            try:
                self.consumer.commit(offsets=fresh, asynchronous=False)
            except KafkaException as exc:
                log.warning("could not reset the group's offsets of a new epoch: %s", exc)
        return out, verdicts

    def _next_epoch(
        self, name: str, record: dict[str, Any], topic_id: str | None, start: int
    ) -> dict:
        return self.state.advance_epoch(name, int(record["epoch"]), topic_id, start)

    def _compare(
        self, marks: dict[Partition, Marks], lows: dict[Partition, int]
    ) -> Iterable[tuple[Partition, bool, int | None]]:
        """For each partition with recorded marks: is the broker's log the same one?
        The newest mark first; the others only where it does not match."""
        if not marks:
            return []
        newest = {p: (m.recent or (m.first,))[0] for p, m in marks.items()}
        found = self._probe({p: [n.offset] for p, n in newest.items() if n.offset >= lows[p]})
        changed = [p for p, n in newest.items() if found.get(p, {}).get(n.offset) != n.fingerprint]
        more = self._probe(
            {p: [o for o in offsets_to_probe(marks[p], lows[p]) if o != newest[p].offset]
             for p in changed}
        )  # fmt: skip
        for p in changed:
            found.setdefault(p, {}).update(more.get(p, {}))
        return [(p, *same_log(m, found.get(p, {}), lows[p])) for p, m in marks.items()]

    # ----- asking the broker ----------------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.kafka_config)
        return self._admin

    def _topic_ids(self, topics: set[str]) -> dict[str, str]:
        """Topic -> id, for brokers that give topic ids (others: absent)."""
        try:
            futures = self._admin_client().describe_topics(TopicCollection(sorted(topics)))
            out = {}
            for topic, future in futures.items():
                topic_id = str(future.result(timeout=10).topic_id or "").rstrip("=")
                if topic_id and topic_id != _NO_TOPIC_ID:
                    out[topic] = topic_id
            return out
        except (KafkaException, ValueError, TypeError) as exc:
            log.info("topic ids not available (%s): fingerprints decide", exc)
            return {}

    def commit_note(self, topic: str, partition: int) -> str:
        """The metadata an offset commit carries: the life of the partition it belongs to
        (a re-created topic's old commits must not be read as the new one's)."""
        return f"{_EPOCH_NOTE}{self.epoch(topic, partition)}"

    def _answered(self, keys: set[str]) -> dict[str, int]:
        """Partition key -> the last offset a published receipt names, among receipts
        published since the state's last commit (what a rollback may have lost)."""
        if self.receipts_topic is None or not keys:
            return {}
        updated = self.state.read_status().get("updated_at")
        since = float(updated) if updated is not None else None
        return answered_through(self.kafka_config, self.receipts_topic, keys, since)

    def _committed(self, partitions: list[Partition]) -> dict[Partition, tuple[int, int | None]]:
        """The group's committed offsets, with the epoch their commit named (None: the
        commit carries no note: committed before there were epochs, or a broker that
        drops commit metadata)."""
        if not partitions:
            return {}
        tps = [TopicPartition(t, p) for t, p in partitions]
        result = self.consumer.committed(tps, timeout=10)
        out = {}
        for tp in result:
            if tp.offset < 0:
                continue
            note = tp.metadata or ""
            life = int(note[len(_EPOCH_NOTE) :]) if note.startswith(_EPOCH_NOTE) else None
            out[(tp.topic, tp.partition)] = (tp.offset, life)
        return out

    def _watermarks(self, partitions: list[Partition]) -> dict[Partition, tuple[int, int]]:
        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(*p), timeout=10)
            for p in partitions
        }

    def _probe(self, wanted: dict[Partition, list[int]]) -> dict[Partition, dict[int, str | None]]:
        """The fingerprints of the messages the broker holds at the given offsets (None:
        no message there any more). One short-lived consumer outside the group."""
        found: dict[Partition, dict[int, str | None]] = {p: {} for p in wanted}
        todo = {p: list(offsets) for p, offsets in wanted.items() if offsets}
        if not todo:
            return found
        probe = Consumer(
            {
                **self.kafka_config,
                "group.id": "unlearn-probe",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",
            }
        )
        try:
            while todo:
                current = {p: offsets.pop(0) for p, offsets in todo.items()}
                probe.assign([TopicPartition(t, n, o) for (t, n), o in current.items()])
                for partition, result in self._read_one_each(probe, current).items():
                    found[partition][current[partition]] = result
                todo = {p: o for p, o in todo.items() if o}
        finally:
            probe.close()
        return found

    @staticmethod
    def _read_one_each(probe: Consumer, current: dict[Partition, int]) -> dict:
        out: dict[Partition, str | None] = {}
        deadline = time.monotonic() + 10
        while len(out) < len(current) and time.monotonic() < deadline:
            for message in probe.consume(num_messages=len(current), timeout=0.5):
                partition = (message.topic(), message.partition())
                if partition not in current or partition in out:
                    continue
                error = message.error()
                if error is None:
                    at = message.offset() == current[partition]
                    out[partition] = fingerprint(message.key(), message.value()) if at else None
                elif error.code() in _NOTHING_THERE:
                    out[partition] = None
        for partition in current:
            out.setdefault(partition, None)
        return out
