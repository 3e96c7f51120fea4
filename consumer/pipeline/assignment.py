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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.brokers.kafka import Clients, KafkaClients
from consumer.events import Partition, partition_key
from consumer.pipeline.answered import Answered, read_answered
from consumer.pipeline.positions import (
    CommitNote,
    Marks,
    decide,
    fingerprint,
    offsets_to_probe,
    read_before_it_showed,
    same_log,
)
from consumer.state.store import ModelState

log = logging.getLogger("unlearn.assignment")

_NO_TOPIC_ID = base64.b64encode(bytes(16)).decode().rstrip("=")
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
    reapply_from: int = -1  # ... from this one on (-1: from wherever reading starts)
    missing: tuple[int, int] | None = None  # the state needs these; the broker lost them
    began: int | None = None  # where this load of the model began reading this life


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
        clients: Clients | None = None,
    ) -> None:
        self.consumer = consumer
        self.clients = clients or KafkaClients()
        self.kafka_config = kafka_config
        self.state = state
        self.receipts_topic = receipts_topic  # read back after a kill or a rollback
        self.views: dict[Partition, PartitionView] = {}
        # Each partition's high watermark when its position was last decided (the input
        # merge's first answer to "has it more to give", before any fetch: ordering.py).
        self.highs: dict[Partition, int] = {}
        self._admin: AdminClient | None = None
        self._load: str | None = None
        self._topic_ids_seen: dict[str, str] = {}  # topic -> its id when last resolved
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="unlearn-topic-check")
        self._check: Future[list[Partition]] | None = None
        self.last_read: Answered | None = None  # the receipts topic, as last read back

    # ----- what the rest of the service asks ------------------------------------------

    def epoch(self, topic: str, partition: int) -> int:
        view = self.views.get((topic, partition))
        return view.epoch if view is not None else 0

    def key(self, topic: str, partition: int) -> str:
        return partition_key(topic, partition, self.epoch(topic, partition))

    def acknowledged(self) -> dict[str, tuple[int, int]]:
        """Partition key -> the offsets [first, last] acknowledged before the state lost
        them (or read again for another reason): their receipts say `reapplied`."""
        return {
            partition_key(t, p, v.epoch): (v.reapply_from, v.reapply_through)
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
                view.reapply_from = -1

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

    def recreated(self) -> list[Partition]:
        """Assigned partitions of topics deleted and created again under this consumer.
        Offsets need not run backwards for that (a new life can grow past the position
        before it is read), so now and then each partition's first recorded message is
        compared with the broker's (and each topic's id, where the broker has ids).
        Never waits: the check runs beside the loop; each call collects the previous
        check's answer and starts the next."""
        found: list[Partition] = []
        if self._check is not None:
            if not self._check.done():
                return []
            try:
                found = self._check.result()
            except Exception as exc:  # the broker or Redis away: the next check tries again
                log.info("could not check the topics' lives (%s): tried again", exc)
            self._check = None
        if self.views:
            keys = {p: partition_key(*p, v.epoch) for p, v in self.views.items()}
            self._check = self._checker.submit(self._find_recreated, keys)
        return [p for p in found if p in self.views]

    def _find_recreated(self, keys: dict[Partition, str]) -> list[Partition]:
        topics = {t for t, _ in keys}
        ids = self._topic_ids(topics)
        changed = {
            t for t in topics if ids.get(t) and self._topic_ids_seen.get(t, ids[t]) != ids[t]
        }
        marks = self.state.read_marks(list(keys.values()))
        firsts = {p: marks[k].first for p, k in keys.items() if k in marks and p[0] not in changed}
        found = self._probe({p: [m.offset] for p, m in firsts.items()})
        for partition, first in firsts.items():
            there = found.get(partition, {}).get(first.offset)
            if there is not None and there != first.fingerprint:  # None: proves nothing
                changed.add(partition[0])
        return sorted(p for p in keys if p[0] in changed)

    def close(self) -> None:
        self._checker.shutdown(wait=False, cancel_futures=True)

    def of_topics(self, partitions: Iterable[Partition]) -> list[Partition]:
        """Every assigned partition of the topics these belong to: a topic is re-created
        whole, so when one partition shows it, all are checked."""
        topics = {t for t, _ in partitions}
        return sorted(p for p in self.views if p[0] in topics)

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
        self._topic_ids_seen.update(topic_ids)
        watermarks = self._watermarks(partitions)
        # Each partition's key in the life the state knows, before any new one starts.
        prior = {
            p: partition_key(*p, epochs[n]["epoch"]) for p, n in zip(partitions, plain, strict=True)
        }
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
        marks = self.state.read_marks(sorted(set(keys.values()) | set(prior.values())))
        unsure = [p for p in partitions if keys[p] in marks]
        # A topic id that changed started a new life already; its old marks still tell
        # what of the new log was read under the old life's name.
        by_id = [p for p, _ in verdicts.new_epochs if prior[p] in marks]
        lows = {p: watermarks[p][0] for p in partitions}
        overlap: dict[Partition, tuple[int, int]] = {}
        checked = self._compare(
            {p: marks[keys[p]] for p in unsure} | {p: marks[prior[p]] for p in by_id}, lows
        )
        for partition, same, after, read_before in checked:
            if read_before is not None:
                overlap[partition] = read_before
            if same or partition in by_id:
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
        stored = {p: applied.get(keys[p]) for p in partitions}
        began = {
            p: self._began(epochs[partition_key(*p)], committed.get(p, (None, None))[1])
            for p in partitions
        }
        # What was answered and may be lost: wherever the state read, or began to.
        answered = self._answered(
            {keys[p] for p in partitions if stored[p] is not None or began[p] is not None}
        )
        out = []
        for partition in partitions:
            low, high = watermarks[partition]
            offset, note = committed.get(partition, (None, None))
            if not self._same_life(note, epochs[partition_key(*partition)]["epoch"]):
                offset = None  # committed in another life of the topic: it means nothing here
            lost = answered.get(keys[partition], -1)
            resume = decide(stored[partition], offset, low, high, lost, began[partition])
            reapply_from, reapply_through = -1, resume.reapply_through
            if partition in overlap:  # read under the old life's name before it showed
                first, last = overlap[partition]
                if reapply_through < 0:
                    reapply_from, reapply_through = first, last
                else:
                    reapply_through = max(reapply_through, last)
            if began[partition] is None and stored[partition] is None:
                began[partition] = resume.offset  # this load begins reading it here
            view = PartitionView(
                epoch=epochs[partition_key(*partition)]["epoch"],
                next_offset=resume.offset,
                reapply_through=reapply_through,
                reapply_from=reapply_from,
                missing=resume.missing,
                began=began[partition],
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

    def _began(self, record: dict[str, Any], note: CommitNote | None) -> int | None:
        """Where this load of the model began reading this life of the partition: a new
        life's start is recorded with the state; otherwise the group's commit note says
        it, when it was made for this load and this life (the state may have lost it)."""
        epoch = int(record["epoch"])
        if epoch > 0:
            return int(record.get("start") or 0)
        if note is not None and note.load == self.load() and self._same_life(note, epoch):
            return note.began
        return None

    @staticmethod
    def _same_life(note: CommitNote | None, epoch: int) -> bool:
        """Was a commit made in this life of the topic? One without a note of ours can
        only be trusted for the first life (commits before epochs existed)."""
        return note.epoch == epoch if note is not None else epoch == 0

    def load(self) -> str:
        if self._load is None:
            self._load = self.state.load_id()
        return self._load

    def _next_epoch(
        self, name: str, record: dict[str, Any], topic_id: str | None, start: int
    ) -> dict:
        return self.state.advance_epoch(name, int(record["epoch"]), topic_id, start)

    def _compare(
        self, marks: dict[Partition, Marks], lows: dict[Partition, int]
    ) -> list[tuple[Partition, bool, int | None, int]]:
        """For each partition with recorded marks: is the broker's log the same one (and
        where it resumes, and what of a new log was read before it showed)? The newest
        mark and the first one first; the others only where either does not match."""
        if not marks:
            return []
        newest = {p: (m.recent or (m.first,))[0] for p, m in marks.items()}
        found = self._probe(
            {p: sorted({o for o in (newest[p].offset, m.first.offset) if o >= lows[p]})
             for p, m in marks.items()}
        )  # fmt: skip
        changed = [
            p for p, m in marks.items()
            if any(found.get(p, {}).get(x.offset, x.fingerprint) != x.fingerprint
                   for x in (newest[p], m.first))
            or newest[p].offset not in found.get(p, {})
        ]  # fmt: skip
        more = self._probe(
            {p: [o for o in offsets_to_probe(marks[p], lows[p])
                 if o not in (newest[p].offset, marks[p].first.offset)]
             for p in changed}
        )  # fmt: skip
        for p in changed:
            found.setdefault(p, {}).update(more.get(p, {}))
        return [
            (p, *same_log(m, found.get(p, {}), lows[p]),
             read_before_it_showed(m, found.get(p, {}), lows[p]))
            for p, m in marks.items()
        ]  # fmt: skip

    # ----- asking the broker ----------------------------------------------------------

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = self.clients.admin(self.kafka_config)
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
        (a re-created topic's old commits must not be read as the new one's), the load of
        the model and where it began reading (positions.CommitNote)."""
        view = self.views.get((topic, partition))
        if view is None:
            return CommitNote(0, self.load()).encode()
        return CommitNote(view.epoch, self.load(), view.began).encode()

    def _answered(self, keys: set[str]) -> dict[str, int]:
        """Partition key -> the last offset a published receipt names, among receipts
        published since the state's last commit (what a rollback may have lost)."""
        if self.receipts_topic is None or not keys:
            return {}
        updated = self.state.read_status().get("updated_at")
        since = float(updated) if updated is not None else None
        self.last_read = read_answered(
            self.kafka_config, self.receipts_topic, since, clients=self.clients
        )
        return self.last_read.through_of(keys)

    def _committed(
        self, partitions: list[Partition]
    ) -> dict[Partition, tuple[int, CommitNote | None]]:
        """The group's committed offsets, with the note their commit carried (None: no
        note of ours: committed before there were notes, or a broker that drops commit
        metadata)."""
        if not partitions:
            return {}
        tps = [TopicPartition(t, p) for t, p in partitions]
        result = self.consumer.committed(tps, timeout=10)
        out = {}
        for tp in result:
            if tp.offset < 0:
                continue
            out[(tp.topic, tp.partition)] = (tp.offset, CommitNote.decode(tp.metadata))
        return out

    def _watermarks(self, partitions: list[Partition]) -> dict[Partition, tuple[int, int]]:
        out = {
            p: self.consumer.get_watermark_offsets(TopicPartition(*p), timeout=10)
            for p in partitions
        }
        self.highs.update({p: high for p, (_, high) in out.items()})
        return out

    def _probe(self, wanted: dict[Partition, list[int]]) -> dict[Partition, dict[int, str | None]]:
        """The fingerprints of the messages the broker holds at the given offsets (None:
        no message there any more). One short-lived consumer outside the group."""
        found: dict[Partition, dict[int, str | None]] = {p: {} for p in wanted}
        todo = {p: list(offsets) for p, offsets in wanted.items() if offsets}
        if not todo:
            return found
        probe = self.clients.consumer(
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
