"""`unlearn run`: the Kafka consumer around the engine.

Checkpoint order, per batch, fixed: state durable in Redis (engine commit) -> receipts and
dead letters acknowledged by the broker (producer flush) -> offsets committed. A crash at
any point replays from the last committed offsets, and the engine turns a replay into
re-sent receipts instead of a second effect. Rebalance callbacks run inside poll: on revoke
the open batch is finished and committed first. SIGTERM and SIGINT only set a flag.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumer.engine import BatchOutcome, Engine
from consumer.events import (
    Deletion,
    Interaction,
    Rejected,
    Source,
    parse_deletion,
    parse_interaction,
)
from consumer.http import Health
from consumer.metrics import Metrics
from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry
from consumer.settings import Settings
from consumer.state.lease import LeaseBusy, LeaseLost

log = logging.getLogger("unlearn.service")

# A batch that meets these is retried on a rebuilt engine: Redis outages, and another
# instance holding or having taken the namespace's write lease.
TRANSIENT = (*TRANSIENT_REDIS, LeaseLost, LeaseBusy)


class FatalError(RuntimeError):
    """The service cannot go on (fatal Kafka error, lost producer acks): exit non-zero."""


@dataclass
class ServiceStats:
    batches: int = 0
    events: int = 0
    dead_lettered: int = 0
    receipts_sent: int = 0
    sweeps: int = 0
    last_residual: float | None = None
    last_batch: dict = field(default_factory=dict)


class Service:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.health = health or Health(60.0, lambda: bool(engine.state.client.ping()))
        self._redis_checked = -60.0  # sample at the first tick
        self.kind = engine.params.kind
        self.on_batch = on_batch
        self.stats = ServiceStats()
        self._stopping = False
        self._pending: list[Message] = []
        self._batch_started = 0.0
        self._last_event = time.monotonic()
        self._last_sweep = 0.0
        self._converged = True
        self._engine_stale = False
        self._recent_dead: collections.deque[bool] = collections.deque(maxlen=settings.dlq_window)
        self._paused_until: float | None = None
        self._lag_checked = 0.0
        self._lag_partitions: set[tuple[str, int]] = set()
        self.consumer = Consumer(
            {
                # A fetch waits at most one batch window for data: forget latency is the
                # product, and brokers differ in how early they answer a waiting fetch.
                "fetch.wait.max.ms": max(settings.batch_max_ms, 5),
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
        self.producer = Producer(
            {**settings.kafka_common(), "enable.idempotence": True, "acks": "all", "linger.ms": 2}
        )

    # ----- lifecycle ------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, max_seconds: float | None = None) -> None:
        s = self.settings
        self.consumer.subscribe(
            [s.topic_interactions, s.topic_deletions],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._stopping and (deadline is None or time.monotonic() < deadline):
                self._poll_once()
            self._flush_batch(wait_for_commit=True)
        finally:
            self.consumer.close()
            self.producer.flush(10)

    # ----- the loop -------------------------------------------------------------------

    def _poll_once(self) -> None:
        s = self.settings
        self.health.tick()
        self._sample_redis()
        self._maybe_resume()
        room = s.batch_max_events - len(self._pending)
        messages = self.consumer.consume(num_messages=max(room, 1), timeout=s.batch_max_ms / 1000)
        for message in messages:
            error = message.error()
            if error is None:
                if not self._pending:
                    self._batch_started = time.monotonic()
                self._pending.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                self._kafka_error(error)
        age_ms = (time.monotonic() - self._batch_started) * 1000
        if self._pending and (len(self._pending) >= s.batch_max_events or age_ms >= s.batch_max_ms):
            self._flush_batch()
        if not self._pending:
            self._maybe_consolidate()

    def _flush_batch(self, ack_timeout: float = 30.0, wait_for_commit: bool = False) -> None:
        """Process the open batch. The offset commit is asynchronous unless asked: the
        state is durable by then, and a commit lost in a crash only means a replay."""
        if not self._pending:
            return
        messages, self._pending = self._pending, []
        interactions, deletions, rejected = self._parse(messages)
        outcome = self._process_durably(interactions, deletions)
        for item in rejected:
            self._dead_letter(item)
        for receipt in (*outcome.receipts, *outcome.resent):
            self._send_receipt(receipt)
        committing = time.perf_counter()
        if self.producer.flush(ack_timeout) != 0:
            raise FatalError("receipts or dead letters not acknowledged by the broker")
        self._commit(messages, wait_for_commit)
        outcome.phases["commit"] = time.perf_counter() - committing
        self._observe(outcome, messages, interactions, deletions, rejected)
        self._dead_letter_policy(len(messages), len(rejected))
        self.stats.batches += 1
        self.stats.events += len(messages)
        self.stats.dead_lettered += len(rejected)
        self.stats.receipts_sent += len(outcome.receipts) + len(outcome.resent)
        self.stats.last_residual = outcome.residual
        self._last_event = time.monotonic()
        self._converged = False
        if self.on_batch is not None:
            self.on_batch(outcome)

    def _dead_letter_policy(self, messages: int, dead: int) -> None:
        """Pause input when most recent messages are dead-lettered: a bad producer deploy
        should page someone, not quietly send the whole stream to the DLQ."""
        s = self.settings
        self._recent_dead.extend([True] * dead + [False] * (messages - dead))
        seen = len(self._recent_dead)
        if seen < s.dlq_min_messages or self._paused_until is not None:
            return
        ratio = sum(self._recent_dead) / seen
        if ratio <= s.dlq_max_ratio:
            return
        self.consumer.pause(self.consumer.assignment())
        self._paused_until = time.monotonic() + s.dlq_pause_s if s.dlq_pause_s else float("inf")
        self.metrics.dlq_paused.set(1)
        log.error(
            "%.0f%% of the last %d messages were dead-lettered: input paused for %s",
            100 * ratio,
            seen,
            f"{s.dlq_pause_s:.0f} s" if s.dlq_pause_s else "good (restart)",
        )

    def _maybe_resume(self) -> None:
        if self._paused_until is None or time.monotonic() < self._paused_until:
            return
        self.consumer.resume(self.consumer.assignment())
        self._paused_until = None
        self._recent_dead.clear()
        self.metrics.dlq_paused.set(0)
        log.warning("input resumed after a dead-letter pause")

    def _process_durably(
        self, interactions: list[Interaction], deletions: list[Deletion]
    ) -> BatchOutcome:
        """The batch, durable in Redis when this returns; Redis outages are waited out.

        After a failure the engine is rebuilt from Redis (finishing an interrupted commit
        and reloading its replica), so a retry starts from what is really stored. Past the
        budget the service stops without committing: the batch is replayed on restart.
        """
        first = True

        def attempt() -> BatchOutcome:
            nonlocal first
            if not first or self._engine_stale:
                self.engine = Engine(
                    self.engine.state,
                    clock=self.engine.clock,
                    solve_threads=self.engine.solve_threads,
                )
                self._engine_stale = False
            first = False
            return self.engine.process(interactions, deletions)

        def note(exc: BaseException, failures: int) -> None:
            self.metrics.redis_errors.labels("batch").inc()
            self.health.tick()  # waiting out an outage is not a stuck loop

        try:
            return retry(attempt, TRANSIENT, self.settings.redis_retry_budget_s, note)
        except RetriesExhausted as exc:
            raise FatalError(f"Redis unavailable for too long: {exc}") from exc

    def _maybe_consolidate(self) -> None:
        """Sweep while idle until converged; while busy, at most once per interval."""
        s = self.settings
        now = time.monotonic()
        idle = (now - self._last_event) * 1000 >= s.consolidate_idle_ms
        busy_due = (
            s.consolidate_interval_s > 0 and now - self._last_sweep >= s.consolidate_interval_s
        )
        if self._converged or not (idle or busy_due):
            return
        try:
            residual, loss = self.engine.consolidate()
        except TRANSIENT as exc:
            # The replica may be ahead of Redis now: rebuild it before the next batch.
            log.warning("consolidation sweep failed (%s); retrying later", type(exc).__name__)
            self._engine_stale = True
            self._last_sweep = now
            return
        self._last_sweep = now
        self.stats.sweeps += 1
        self.stats.last_residual = residual
        self._converged = residual < s.consolidate_tolerance
        m = self.metrics
        m.sweeps.inc()
        m.sweep_residual.set(residual)
        m.sweep_loss.set(loss)
        m.model_residual.set(residual)
        m.nonfinite.set(0 if self.engine.factors_finite() else 1)
        if self._converged:
            m.converged()
        log.info("consolidation sweep: residual %.3g, loss %.6g", residual, loss)

    # ----- metrics ----------------------------------------------------------------------

    def _observe(
        self,
        outcome: BatchOutcome,
        messages: list[Message],
        interactions: list[Interaction],
        deletions: list[Deletion],
        rejected: list[tuple[Message, Rejected]],
    ) -> None:
        m, s, now = self.metrics, self.settings, time.time()
        kinds = {s.topic_interactions: "interactions", s.topic_deletions: "deletions"}
        for message in messages:
            m.consumed.labels(kinds.get(message.topic(), "other")).inc()
        m.batch_events.observe(len(messages))
        for phase, seconds in outcome.phases.items():
            m.batch_phase.labels(phase).observe(seconds)
        for _, item in rejected:
            m.dead_lettered.labels(item.reason).inc()
        m.applied.labels("interactions").inc(outcome.interactions_applied)
        m.applied.labels("deletions").inc(len(outcome.receipts))
        m.late.inc(outcome.interactions_late)
        m.replayed.inc(outcome.events_replayed)
        m.receipts.labels("false").inc(len(outcome.receipts))
        m.receipts.labels("true").inc(len(outcome.resent))
        for receipt in outcome.receipts:
            m.forget_latency.observe(max(now - receipt["event_ts"], 0.0))
        for ts in outcome.learned_ts:
            m.learn_latency.observe(max(now - ts, 0.0))
        if outcome.receipts or outcome.interactions_applied:
            m.batch_residual.set(outcome.residual)
            m.model_residual.set(outcome.residual)
            m.batch_loss.set(outcome.loss)
        m.last_commit.set(now)
        m.users.set(len(self.engine.factors["user"]))
        m.items.set(len(self.engine.factors["item"]))
        m.interactions.set(self.engine.interactions)
        m.nonfinite.set(0 if self.engine.factors_finite() else 1)
        self._update_lag({(msg.topic(), msg.partition()) for msg in messages})

    def _update_lag(self, partitions: set[tuple[str, int]]) -> None:
        """Lag per partition from the committed offsets: a broker round trip, so at most
        once a second (every batch would add its latency to every forget)."""
        self._lag_partitions |= partitions
        now = time.monotonic()
        if now - self._lag_checked < 1.0:
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

    def _sample_redis(self) -> None:
        """Server and namespace memory, once a minute (a scan of a few dozen keys)."""
        now = time.monotonic()
        if now - self._redis_checked < 60:
            return
        self._redis_checked = now
        try:
            state = self.engine.state
            self.metrics.redis_memory.set(float(state.server_memory()))
            self.metrics.namespace_memory.set(float(state.memory_usage()))
        except Exception:  # a missed sample is not worth failing the loop for
            log.debug("could not sample Redis memory", exc_info=True)

    # ----- pieces ---------------------------------------------------------------------

    def _parse(
        self, messages: list[Message]
    ) -> tuple[list[Interaction], list[Deletion], list[tuple[Message, Rejected]]]:
        s = self.settings
        interactions: list[Interaction] = []
        deletions: list[Deletion] = []
        rejected: list[tuple[Message, Rejected]] = []
        for message in messages:
            source = Source(message.topic(), message.partition(), message.offset())
            kind, stamp = message.timestamp()
            message_ts = stamp / 1000 if kind != 0 and stamp >= 0 else time.time()
            if message.topic() == s.topic_deletions:
                event = parse_deletion(message.value(), source, message_ts, s.max_message_bytes)
            else:
                event = parse_interaction(
                    message.value(), source, message_ts, self.kind, s.max_message_bytes
                )
            if isinstance(event, Rejected):
                rejected.append((message, event))
            elif isinstance(event, Deletion):
                deletions.append(event)
            else:
                interactions.append(event)
        return interactions, deletions, rejected

    def _dead_letter(self, item: tuple[Message, Rejected]) -> None:
        message, rejected = item
        headers = [
            ("unlearn.reason", rejected.reason.encode()),
            ("unlearn.detail", rejected.detail.encode("utf-8", "replace")[:1024]),
            (
                "unlearn.source",
                f"{message.topic()}:{message.partition()}:{message.offset()}".encode(),
            ),
        ]
        self.producer.produce(
            self.settings.topic_dlq, key=message.key(), value=message.value(), headers=headers
        )

    def _send_receipt(self, receipt: dict) -> None:
        key = receipt.get("request_id") or receipt["source"]
        self.producer.produce(self.settings.topic_receipts, key=key, value=json.dumps(receipt))

    def _commit(self, messages: list[Message], wait: bool) -> None:
        latest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            latest[key] = max(latest.get(key, -1), message.offset())
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in latest.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as exc:
            # The state is durable and the replay check makes a retry harmless: a lost commit
            # only means these events are seen again and re-acknowledged.
            log.warning("offset commit failed (%s); the batch will be replayed", exc)

    def _kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise FatalError(f"fatal Kafka error: {error}")
        log.warning("Kafka error (retried by the client): %s", error)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [f"{p.topic}:{p.partition}" for p in partitions])
        self.health.assigned += len(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish and commit the open batch while the partitions are still ours.
        log.info("revoked %s", [f"{p.topic}:{p.partition}" for p in partitions])
        self._flush_batch(ack_timeout=self.settings.revoke_budget_s, wait_for_commit=True)
        self.health.assigned = max(self.health.assigned - len(partitions), 0)
        for p in partitions:  # a revoked partition's lag is another member's to report
            self._lag_partitions.discard((p.topic, p.partition))
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(p.topic, str(p.partition))
