"""The input: the Kafka consumer, its partitions, and what holds a partition back.

Reads return at once what is waiting (a lone deletion is processed at once); only with
nothing waiting does a read wait for the first message. Partitions resume where the state
says (assignment.py), a partition whose offsets run backwards is checked again, a surge of
dead letters pauses the partition it comes from (dead_letters.py), and a gap the broker
cannot fill holds its partition until an operator deals with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.brokers.kafka import Clients, KafkaClients
from consumer.events import Partition
from consumer.http import Health
from consumer.metrics import Metrics
from consumer.pipeline.assignment import Assignments, Verdicts
from consumer.pipeline.dead_letters import SurgePolicy
from consumer.pipeline.ordering import TimeOrder
from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry
from consumer.settings import Settings
from consumer.state.store import ModelState

log = logging.getLogger("unlearn.source")

GAP_RECHECK_S = 10.0  # how often a partition held back by a gap is looked at again
LAG_EVERY_S = 1.0  # lag is a broker round trip: at most this often

_NEW_EPOCH = {
    "topic_id": "the topic id changed (deleted and created again)",
    "recreated": "the broker holds another log (the topic was created again)",
    "offsets_reused": "the broker hands out offsets it had given other messages",
}


class InputFailed(RuntimeError):
    """The consumer cannot go on (a fatal Kafka error, or the partitions' positions could
    not be decided within the budget): exit non-zero, nothing of the open batch committed."""


@dataclass
class Read:
    messages: list[tuple[Message, float]] = field(default_factory=list)  # (message, read at)
    more_waiting: bool = False  # the read took all it could: more may be queued
    backwards: list[Partition] = field(default_factory=list)  # offsets ran back: re-check


class Source:
    def __init__(
        self,
        settings: Settings,
        state: ModelState,
        metrics: Metrics,
        health: Health,
        clients: Clients | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self.budget_s = settings.redis_retry_budget_s
        self.clients = clients or KafkaClients()
        self.consumer = self.clients.consumer(
            {
                # How long the broker may hold a fetch that has nothing to return: a broker
                # answers a waiting fetch as soon as data arrives; this bounds the others.
                "fetch.wait.max.ms": settings.fetch_wait_max_ms,
                **settings.kafka_common(),
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": max(settings.session_timeout_ms // 10, 100),
                "max.poll.interval.ms": max(
                    settings.max_poll_interval_ms, settings.session_timeout_ms
                ),
            }
        )
        self.assignments = Assignments(
            self.consumer, settings.kafka_common(), state, settings.topic_receipts, self.clients
        )
        self.surge = SurgePolicy(
            settings.dlq_max_ratio, settings.dlq_window, settings.dlq_min_messages,
            settings.dlq_pause_s,
        )  # fmt: skip
        self.kinds = {
            settings.topic_interactions: "interactions",
            settings.topic_deletions: "deletions",
        }
        # The input in time order while partitions are behind (ordering.py); where each
        # assigned partition's next message is, to tell whether it has more to give.
        self.order = TimeOrder(settings.topic_deletions, settings.input_order_wait_ms / 1000)
        self._next: dict[Partition, int] = {}
        self._passed_over = 0
        self._gaps_checked = 0.0
        self._lag_checked = 0.0
        self._lag_partitions: set[Partition] = set()

    # ----- subscribing, reading -------------------------------------------------------

    def subscribe(
        self,
        revoking: Callable[[list[Partition]], None],
        assigned: Callable[[list[Partition]], None] | None = None,
    ) -> None:
        """Subscribe to both input topics. `revoking` runs first when partitions are taken
        away (the open batch is finished and acknowledged while they are still ours);
        `assigned` after partitions are given (the shards that go with them are taken)."""

        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("assigned %s", [f"{p.topic}:{p.partition}" for p in partitions])
            starts, verdicts = self._resolve([(p.topic, p.partition) for p in partitions])
            consumer.assign(starts)
            self._positioned(starts)
            self._report(verdicts)
            self.health.assigned += len(partitions)
            if assigned is not None:
                assigned([(p.topic, p.partition) for p in partitions])

        def on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            log.info("revoked %s", [f"{p.topic}:{p.partition}" for p in partitions])
            gone = [(p.topic, p.partition) for p in partitions]
            revoking(gone)
            self.order.drop(gone)
            for partition in gone:
                self._next.pop(partition, None)
            self.health.assigned = max(self.health.assigned - len(partitions), 0)
            self.assignments.forget(gone)
            for partition in gone:  # its next owner judges it afresh
                self.surge.forget(partition)
                self._lag_partitions.discard(partition)
                for gauge in (self.metrics.lag, self.metrics.offset_gap):
                    with contextlib.suppress(KeyError):
                        gauge.remove(partition[0], str(partition[1]))
            self.show_paused()

        s = self.settings
        self.consumer.subscribe(
            [s.topic_interactions, s.topic_deletions], on_assign=on_assign, on_revoke=on_revoke
        )

    def read(self, room: int, wait_s: float) -> Read:
        """What is waiting, up to `room` messages, in time order (ordering.py); with
        nothing waiting, the first message to arrive within `wait_s` and whatever came
        with it. While the merge holds messages for a partition behind, a read waits at
        most until it gives up on that partition."""
        held_back = set(self.assignments.gaps()) | set(self.surge.paused())
        holding = self.order.waiting_for(time.monotonic())
        if holding is not None:
            wait_s = min(wait_s, holding)
        elif self.order.ready(held_back):
            wait_s = 0.0  # messages ready to take
        messages = self.consumer.consume(num_messages=max(room, 1), timeout=0)
        if not messages and wait_s > 0:
            messages = self.consumer.consume(num_messages=1, timeout=wait_s)
            if messages and room > 1:
                messages += self.consumer.consume(num_messages=room - 1, timeout=0)
        received = time.time()
        backwards: set[Partition] = set()
        fresh = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    if error.fatal():
                        raise InputFailed(f"fatal Kafka error: {error}")
                    log.warning("Kafka error (retried by the client): %s", error)
                continue
            partition = (message.topic(), message.partition())
            if partition in backwards or self.assignments.ran_backwards(
                *partition, message.offset()
            ):
                backwards.add(partition)  # read again once the partition is checked
                continue
            self._next[partition] = message.offset() + 1
            fresh.append((message, received))
        self.order.add(fresh)
        held_back |= set(self.assignments.gaps()) | set(self.surge.paused())
        taken = self.order.take(
            max(room, 1),
            [p for p in self.assignments.views if p not in held_back],
            self._has_more,
            time.monotonic(),
            held_back,
        )
        if self.order.passed_over > self._passed_over:
            self.metrics.input_passed_over.inc(self.order.passed_over - self._passed_over)
            self._passed_over = self.order.passed_over
        out = Read(taken, more_waiting=len(messages) >= room or len(taken) >= room)
        out.backwards = sorted(backwards)
        return out

    def _has_more(self, partition: Partition) -> bool:
        """Whether the broker holds messages of the partition past those read, as its last
        fetch (or the assignment) told: a cached high watermark, no round trip."""
        _, high = self.consumer.get_watermark_offsets(TopicPartition(*partition), cached=True)
        if high < 0:
            high = self.assignments.highs.get(partition, -1)
        position = self._next.get(partition, -1)
        if high < 0 or position < 0:
            return True  # not known yet: waited for, within the merge's bound
        return position < high

    def _positioned(self, starts: list[TopicPartition]) -> None:
        """Partitions (re)positioned: what was read of them is read again from there."""
        self.order.drop([(tp.topic, tp.partition) for tp in starts])
        for tp in starts:
            self._next[(tp.topic, tp.partition)] = tp.offset

    def owns(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self.assignments.views

    def held(self, topic: str) -> set[int]:
        """The partitions of `topic` this instance holds now."""
        return {p for t, p in self.assignments.views if t == topic}

    def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has (the broker's metadata)."""
        metadata = self.consumer.list_topics(topic, timeout=10)
        return len(metadata.topics[topic].partitions)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.consumer.commit(offsets=offsets, asynchronous=asynchronous)

    def close(self) -> None:
        self.assignments.close()
        self.consumer.close()

    # ----- where partitions resume -----------------------------------------------------

    def seek(self, partitions: list[Partition], rollback_counted: bool = False) -> None:
        """Decide again where these (assigned) partitions resume, and go there."""
        starts, verdicts = self._resolve(partitions)
        for start in starts:
            self.consumer.seek(start)
        self._positioned(starts)
        self._report(verdicts, rollback_counted)

    def _resolve(self, partitions: list[Partition]) -> tuple[list[TopicPartition], Verdicts]:
        """Where the partitions resume; a Redis or broker outage meanwhile is waited out
        (this runs inside poll, in a rebalance: an error here would stop the service)."""

        def note(exc: BaseException, failures: int) -> None:
            self.metrics.redis_errors.labels("assignment").inc()
            self.health.tick()

        try:
            return retry(
                lambda: self.assignments.resolve(partitions),
                (*TRANSIENT_REDIS, KafkaException),
                self.budget_s,
                note,
            )
        except RetriesExhausted as exc:
            raise InputFailed(f"cannot tell where the partitions resume: {exc}") from exc

    def _report(self, verdicts: Verdicts, rollback_counted: bool = False) -> None:
        m = self.metrics
        for (topic, number), why in verdicts.new_epochs:
            m.new_epochs.labels(why).inc()
            log.error(
                "%s:%d: %s; its messages are a new epoch (%d), none taken for a replay",
                topic, number, _NEW_EPOCH[why], self.assignments.epoch(topic, number),
            )  # fmt: skip
        if verdicts.rolled_back:
            lost = sum(n for _, n in verdicts.rolled_back)
            m.reapplied.inc(lost)
            if not rollback_counted:
                m.state_rollbacks.inc()
            log.error(
                "the state lost %d acknowledged messages (%s): applying them again",
                lost, ", ".join(f"{t}:{p}" for (t, p), _ in verdicts.rolled_back),
            )  # fmt: skip
        for (topic, number), (start, end) in verdicts.gaps:
            m.offset_gap.labels(topic, str(number)).set(end - start)
            log.critical(
                "%s:%d: the state needs offsets %d to %d, which the broker no longer holds: "
                "the partition is not read (restore Redis from a newer backup, or accept the "
                "loss with `unlearn skip-gap %s:%d`)",
                topic, number, start, end - 1, topic, number,
            )  # fmt: skip
        gaps = self.assignments.gaps()
        for topic, number in gaps:
            self.consumer.pause([TopicPartition(topic, number)])
        for partition in self.assignments.views:
            if partition not in gaps:
                with contextlib.suppress(KeyError):
                    m.offset_gap.remove(partition[0], str(partition[1]))
        self.health.gaps = [f"{t}:{p} offsets {a}-{b - 1}" for (t, p), (a, b) in gaps.items()]

    # ----- what holds partitions back --------------------------------------------------

    def recheck_gaps(self) -> None:
        """A partition held back by a gap is looked at again now and then: an operator may
        have accepted the loss, or restored the state."""
        now = time.monotonic()
        gaps = self.assignments.gaps()
        if not gaps or now - self._gaps_checked < GAP_RECHECK_S:
            return
        self._gaps_checked = now
        self.seek(sorted(gaps))
        still = self.assignments.gaps()
        resumed = [TopicPartition(t, p) for t, p in gaps if (t, p) not in still]
        if resumed:
            self.consumer.resume(resumed)
            log.warning("resumed %s after their gap was dealt with", resumed)

    def record_dead_letters(self, total: dict[Partition, int], dead: dict[Partition, int]) -> None:
        """A batch's messages and dead letters per partition: a surge pauses its partition."""
        for partition, count in total.items():
            ratio = self.surge.record(partition, count, dead.get(partition, 0))
            if ratio is None:
                continue
            self.consumer.pause([TopicPartition(*partition)])
            s = self.settings
            log.error(
                "%.0f%% of the last messages on %s:%d were dead-lettered: that partition "
                "is paused for %s (the others go on)",
                100 * ratio, *partition,
                f"{s.dlq_pause_s:.0f} s" if s.dlq_pause_s else "good (restart)",
            )  # fmt: skip
            self.show_paused()

    def resume_surged(self) -> None:
        held = self.assignments.gaps()  # a gap holds a partition until it is dealt with
        due = [p for p in self.surge.due() if p in self.assignments.views and p not in held]
        if not due:
            return
        self.consumer.resume([TopicPartition(t, p) for t, p in due])
        log.warning("input resumed after a dead-letter pause: %s", due)
        self.show_paused()

    def show_paused(self) -> None:
        paused = self.surge.paused()
        for kind in ("interactions", "deletions"):
            count = sum(self.kinds.get(t) == kind for t, _ in paused)
            self.metrics.dlq_paused.labels(kind).set(count)
        self.health.paused = [f"{t}:{p} (dead-letter surge)" for t, p in paused]

    # ----- lag --------------------------------------------------------------------------

    def sample_lag(self, partitions: set[Partition]) -> None:
        """Lag per partition from the committed offsets, at most once a second."""
        self._lag_partitions |= partitions
        now = time.monotonic()
        if now - self._lag_checked < LAG_EVERY_S:
            return
        self._lag_checked = now
        tps = [TopicPartition(t, p) for t, p in self._lag_partitions]
        self._lag_partitions = set()
        try:
            committed = self.consumer.committed(tps, timeout=5)
        except KafkaException:
            return
        for tp in committed:
            _, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=True)
            done = tp.offset if tp.offset >= 0 else 0
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - done, 0))
