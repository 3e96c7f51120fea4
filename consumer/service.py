"""`unlearn run`: the Kafka consumer around the engine.

Checkpoint order, per batch, fixed: state durable in Redis (engine commit) -> receipts and
dead letters acknowledged by the broker (producer flush) -> offsets committed. The state
records the offsets it applied, and decides where each partition resumes (assignment.py):
a crash replays from the last acknowledged offset and the engine turns a replay into
re-sent receipts; a state restored from an older snapshot is healed by replaying what it
lost. Rebalance callbacks run inside poll: on revoke the open batch is finished and
committed first. SIGTERM and SIGINT only set a flag.

No message can stop the service: what validation rejects is dead-lettered with a reason;
what fails only in processing is isolated (isolation.py) and dead-lettered alone; a
partition whose input turns to garbage is paused alone (dead_letters.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from consumer.assignment import Assignments, Verdicts
from consumer.dead_letters import REDRIVEN_HEADER, Partition, SurgePolicy, dead_letter_headers
from consumer.engine import BatchOutcome, Engine, StateRolledBack
from consumer.events import (
    Deletion,
    Interaction,
    Rejected,
    Source,
    parse_deletion,
    parse_interaction,
)
from consumer.http import Health
from consumer.isolation import Work, apply_isolating
from consumer.metrics import Metrics
from consumer.positions import fingerprint
from consumer.receipts import Receipt
from consumer.redaction import scope_name
from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry
from consumer.settings import Settings
from consumer.state.lease import LeaseBusy, LeaseLost

log = logging.getLogger("unlearn.service")

# A batch that meets these is retried on a rebuilt engine: Redis outages, and another
# instance holding or having taken the namespace's write lease.
TRANSIENT = (*TRANSIENT_REDIS, LeaseLost, LeaseBusy)
GAP_RECHECK_S = 10.0  # how often a partition held back by a gap is looked at again
STATE_CHECK_S = 5.0  # how often an idle service checks that Redis did not go back in time
ADJUSTMENT_LOG_S = 60.0  # at most one log line per kind of time adjustment this often


class FatalError(RuntimeError):
    """The service cannot go on (fatal Kafka error, lost producer acks): exit non-zero."""


@dataclass
class ServiceStats:
    batches: int = 0
    events: int = 0
    dead_lettered: int = 0
    receipts_sent: int = 0
    sweeps: int = 0
    rollbacks: int = 0
    last_residual: float | None = None
    last_batch: dict = field(default_factory=dict)


@dataclass
class _Parsed:
    interactions: list[Interaction] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    rejected: list[tuple[Message, Rejected]] = field(default_factory=list)
    messages: dict[Source, Message] = field(default_factory=dict)
    redriven: set[Source] = field(default_factory=set)


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
        self._pending: list[tuple[Message, float]] = []  # (message, when it was read)
        self._batch_started = 0.0
        self._last_event = time.monotonic()
        self._last_sweep = 0.0
        self._converged = True
        self._engine_stale = False
        self._lag_checked = 0.0
        self._lag_partitions: set[tuple[str, int]] = set()
        self._gaps_checked = 0.0
        self._state_checked = time.monotonic()
        self._adjustments: Tally[tuple[str, str]] = Tally()
        self._adjustments_logged: dict[tuple[str, str], float] = {}
        self._salt = engine.state.log_salt()
        self._dead: Tally[Partition] = Tally()  # dead letters of the open batch, by partition
        self.surge = SurgePolicy(
            settings.dlq_max_ratio, settings.dlq_window, settings.dlq_min_messages,
            settings.dlq_pause_s,
        )  # fmt: skip
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
        self.assignments = Assignments(self.consumer, settings.kafka_common(), engine.state)
        self._kinds = {
            settings.topic_interactions: "interactions",
            settings.topic_deletions: "deletions",
        }

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
        self._resume_surged()
        self._recheck_gaps()
        self._check_state()
        room = s.batch_max_events - len(self._pending)
        messages = self.consumer.consume(num_messages=max(room, 1), timeout=s.batch_max_ms / 1000)
        received = time.time()
        backwards: set[Partition] = set()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._kafka_error(error)
                continue
            partition = (message.topic(), message.partition())
            if partition in backwards or self.assignments.ran_backwards(
                *partition, message.offset()
            ):
                backwards.add(partition)  # read again after the partition is checked
                continue
            if not self._pending:
                self._batch_started = time.monotonic()
            self._pending.append((message, received))
        if backwards:
            # Offsets ran back without a seek of ours: the topic was re-created under us,
            # or the broker reuses offsets. Finish what came before, then check its life.
            self._flush_batch()
            log.warning("offsets ran backwards on %s: checking the partitions", sorted(backwards))
            self._seek(sorted(backwards))
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
        pending, self._pending = self._pending, []
        messages = [m for m, _ in pending]
        parsed = self._parse(pending)
        work = Work(parsed.interactions, parsed.deletions, [r.source for _, r in parsed.rejected])
        try:
            outcomes = apply_isolating(
                work,
                self._process_durably,
                lambda events, why: self._unprocessable(parsed, events, why),
            )
        except StateRolledBack as exc:
            self._heal_rollback(exc)  # nothing of this batch is committed: it is read again
            return
        for message, rejected in parsed.rejected:
            self._dead_letter(message, rejected.source, rejected.reason, rejected.detail)
        for outcome in outcomes:
            for receipt in (*outcome.receipts, *outcome.resent):
                self._send_receipt(receipt)
        committing = time.perf_counter()
        if self.producer.flush(ack_timeout) != 0:
            raise FatalError("receipts or dead letters not acknowledged by the broker")
        self._commit(messages, wait_for_commit)
        commit_seconds = time.perf_counter() - committing
        for outcome in outcomes:
            outcome.phases["commit"] = commit_seconds
            self._observe(outcome)
        self._observe_batch(messages, parsed, outcomes)
        self._last_event = time.monotonic()
        self._converged = False
        if self.on_batch is not None:
            for outcome in outcomes:
                self.on_batch(outcome)

    def _process_durably(self, work: Work) -> BatchOutcome:
        """The work, durable in Redis when this returns; Redis outages are waited out.

        After a failure the engine is rebuilt from Redis (finishing an interrupted commit
        and reloading its replica), so a retry starts from what is really stored. Past the
        budget the service stops without committing: the batch is replayed on restart.
        """
        first = True

        def attempt() -> BatchOutcome:
            nonlocal first
            if not first or self._engine_stale:
                self.engine = self._new_engine(keep_committed=True)
                self._engine_stale = False
            first = False
            return self.engine.process(
                work.interactions, work.deletions, self.assignments.acknowledged(), work.skipped
            )

        def note(exc: BaseException, failures: int) -> None:
            self.metrics.redis_errors.labels("batch").inc()
            self.health.tick()  # waiting out an outage is not a stuck loop

        try:
            return retry(attempt, TRANSIENT, self.settings.redis_retry_budget_s, note)
        except RetriesExhausted as exc:
            raise FatalError(f"Redis unavailable for too long: {exc}") from exc

    def _new_engine(self, keep_committed: bool) -> Engine:
        """A fresh engine from Redis. It remembers what the old one committed (unless the
        state's loss was just dealt with), so a Redis restored from an older snapshot
        while it was away is still noticed."""
        old = self.engine
        engine = Engine(old.state, clock=old.clock, solve_threads=old.solve_threads)
        if keep_committed:
            engine.committed = dict(old.committed)
        return engine

    def _heal_rollback(self, exc: StateRolledBack) -> None:
        """The state lost acknowledged work: reload it, and read every partition again
        from the offsets it holds, so the lost events are applied again."""
        log.error("the state is behind what was committed (%s): replaying from Redis", exc)
        self.metrics.state_rollbacks.inc()
        self.stats.rollbacks += 1
        self.engine = self._new_engine(keep_committed=False)
        self._seek(sorted(self.assignments.views), rollback_counted=True)

    def _check_state(self) -> None:
        """Now and then, even with nothing to process: is Redis still where this engine
        left it? A restore from an older snapshot would otherwise wait for the next event."""
        now = time.monotonic()
        if now - self._state_checked < STATE_CHECK_S or self._pending:
            return
        self._state_checked = now
        try:
            self.engine.check_not_behind()
        except StateRolledBack as exc:
            self._heal_rollback(exc)
        except TRANSIENT as exc:  # Redis away: the next batch waits it out
            log.info("state check skipped: %s", type(exc).__name__)

    def _unprocessable(self, parsed: _Parsed, events: list, detail: str) -> None:
        """Dead-letter events the batch could not process, durably before their offsets
        are recorded (the retry that follows records them as done)."""
        for event in events:
            log.error(
                "%s on %s could not be processed (%s): dead-lettered as unprocessable (%s)",
                "an interaction" if isinstance(event, Interaction) else "a deletion",
                event.source.key, detail, scope_name(self._salt, event.user, event.item),
            )  # fmt: skip
            self._dead_letter(parsed.messages[event.source], event.source, "unprocessable", detail)
        if self.producer.flush(30) != 0:
            raise FatalError("dead letters not acknowledged by the broker")

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

    # ----- partitions: where they resume, what holds them back --------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", [f"{p.topic}:{p.partition}" for p in partitions])
        starts, verdicts = self._resolve([(p.topic, p.partition) for p in partitions])
        consumer.assign(starts)
        self._report(verdicts)
        self.health.assigned += len(partitions)

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
                self.settings.redis_retry_budget_s,
                note,
            )
        except RetriesExhausted as exc:
            raise FatalError(f"cannot tell where the partitions resume: {exc}") from exc

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish and commit the open batch while the partitions are still ours.
        log.info("revoked %s", [f"{p.topic}:{p.partition}" for p in partitions])
        self._flush_batch(ack_timeout=self.settings.revoke_budget_s, wait_for_commit=True)
        self.health.assigned = max(self.health.assigned - len(partitions), 0)
        gone = [(p.topic, p.partition) for p in partitions]
        for topic, number in gone:  # another instance commits them now
            self.engine.committed.pop(self.assignments.key(topic, number), None)
        self.assignments.forget(gone)
        for partition in gone:  # its next owner judges it afresh
            self.surge.forget(partition)
            self._lag_partitions.discard(partition)
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(partition[0], str(partition[1]))
            with contextlib.suppress(KeyError):
                self.metrics.offset_gap.remove(partition[0], str(partition[1]))
        self._show_paused()

    def _seek(self, partitions: list[Partition], rollback_counted: bool = False) -> None:
        """Decide again where these (assigned) partitions resume, and go there."""
        starts, verdicts = self._resolve(partitions)
        for start in starts:
            self.consumer.seek(start)
        self._report(verdicts, rollback_counted)

    def _report(self, verdicts: Verdicts, rollback_counted: bool = False) -> None:
        m = self.metrics
        for (topic, number), why in verdicts.new_epochs:
            m.new_epochs.labels(why).inc()
            log.error(
                "%s:%d: %s; its messages are a new epoch (%d), none taken for a replay",
                topic, number, _NEW_EPOCH[why], self.assignments.epoch(topic, number),
            )  # fmt: skip
        lost = sum(n for _, n in verdicts.rolled_back)
        if verdicts.rolled_back:
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

    def _recheck_gaps(self) -> None:
        """A partition held back by a gap is looked at again now and then: an operator may
        have accepted the loss, or restored the state."""
        now = time.monotonic()
        gaps = self.assignments.gaps()
        if not gaps or now - self._gaps_checked < GAP_RECHECK_S:
            return
        self._gaps_checked = now
        self._seek(sorted(gaps))
        still = self.assignments.gaps()
        resumed = [TopicPartition(t, p) for t, p in gaps if (t, p) not in still]
        if resumed:
            self.consumer.resume(resumed)
            log.warning("resumed %s after their gap was dealt with", resumed)

    def _resume_surged(self) -> None:
        held = self.assignments.gaps()  # a gap holds a partition until it is dealt with
        due = [p for p in self.surge.due() if p in self.assignments.views and p not in held]
        if not due:
            return
        self.consumer.resume([TopicPartition(t, p) for t, p in due])
        log.warning("input resumed after a dead-letter pause: %s", due)
        self._show_paused()

    def _show_paused(self) -> None:
        paused = self.surge.paused()
        for kind in ("interactions", "deletions"):
            count = sum(self._kinds.get(t) == kind for t, _ in paused)
            self.metrics.dlq_paused.labels(kind).set(count)
        self.health.paused = [f"{t}:{p} (dead-letter surge)" for t, p in paused]

    # ----- metrics ----------------------------------------------------------------------

    def _observe(self, outcome: BatchOutcome) -> None:
        m, now = self.metrics, time.time()
        for phase, seconds in outcome.phases.items():
            m.batch_phase.labels(phase).observe(seconds)
        m.applied.labels("interactions").inc(outcome.interactions_applied)
        m.applied.labels("deletions").inc(len(outcome.receipts))
        m.late.inc(outcome.interactions_late)
        m.replayed.inc(outcome.events_replayed)
        m.receipts.labels("false").inc(len(outcome.receipts))
        m.receipts.labels("true").inc(len(outcome.resent))
        for receipt in outcome.receipts:
            # From the request's own time to durable, acknowledged and committed.
            m.forget_latency.observe(now - (receipt.applied_at - receipt.latency_seconds))
        for ts in outcome.learned_ts:
            m.learn_latency.observe(max(now - ts, 0.0))
        if outcome.receipts or outcome.interactions_applied:
            m.batch_residual.set(outcome.residual)
            m.model_residual.set(outcome.residual)
            m.batch_loss.set(outcome.loss)
        self.stats.receipts_sent += len(outcome.receipts) + len(outcome.resent)
        self.stats.last_residual = outcome.residual

    def _observe_batch(
        self, messages: list[Message], parsed: _Parsed, outcomes: list[BatchOutcome]
    ) -> None:
        m = self.metrics
        dead, self._dead = self._dead, Tally()
        total: Tally[Partition] = Tally()
        for message in messages:
            total[(message.topic(), message.partition())] += 1
            m.consumed.labels(self._kinds.get(message.topic(), "other")).inc()
        m.batch_events.observe(len(messages))
        applied_redriven = len(parsed.redriven - {r.source for _, r in parsed.rejected})
        m.redriven.labels("applied").inc(applied_redriven)
        m.last_commit.set(time.time())
        m.users.set(len(self.engine.factors["user"]))
        m.items.set(len(self.engine.factors["item"]))
        m.interactions.set(self.engine.interactions)
        m.nonfinite.set(0 if self.engine.factors_finite() else 1)
        self._update_lag(set(total))
        for partition, count in total.items():
            ratio = self.surge.record(partition, count, dead[partition])
            if ratio is not None:
                self.consumer.pause([TopicPartition(*partition)])
                s = self.settings
                log.error(
                    "%.0f%% of the last messages on %s:%d were dead-lettered: that partition "
                    "is paused for %s (the others go on)",
                    100 * ratio, *partition,
                    f"{s.dlq_pause_s:.0f} s" if s.dlq_pause_s else "good (restart)",
                )  # fmt: skip
                self._show_paused()
        self.stats.batches += 1
        self.stats.events += len(messages)

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

    def _parse(self, pending: list[tuple[Message, float]]) -> _Parsed:
        s = self.settings
        out = _Parsed()
        for message, received in pending:
            topic, number, offset = message.topic(), message.partition(), message.offset()
            kind, stamp = message.timestamp()
            source = Source(
                topic,
                number,
                offset,
                self.assignments.epoch(topic, number),
                fingerprint(message.key(), message.value()),
            )
            message_ts = stamp / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else None
            if topic == s.topic_deletions:
                event = parse_deletion(
                    message.value(), source, message_ts, s.max_message_bytes, received,
                    s.max_clock_skew_s,
                )  # fmt: skip
            else:
                event = parse_interaction(
                    message.value(), source, message_ts, self.kind, s.max_message_bytes,
                    received, s.max_clock_skew_s,
                )  # fmt: skip
            out.messages[source] = message
            if any(k == REDRIVEN_HEADER for k, _ in message.headers() or ()):
                out.redriven.add(source)
            if isinstance(event, Rejected):
                out.rejected.append((message, event))
                continue
            if event.ts_adjusted is not None:
                self._time_adjusted(self._kinds.get(topic, "interactions"), event)
            if isinstance(event, Deletion):
                out.deletions.append(event)
            else:
                out.interactions.append(event)
        return out

    def _time_adjusted(self, kind: str, event: Interaction | Deletion) -> None:
        """Count what the time rule did; log it now and then, naming the scope by hash."""
        adjustment = str(event.ts_adjusted)
        self.metrics.time_adjusted.labels(kind, adjustment).inc()
        key = (kind, adjustment)
        self._adjustments[key] += 1
        now = time.monotonic()
        if now - self._adjustments_logged.get(key, -ADJUSTMENT_LOG_S) < ADJUSTMENT_LOG_S:
            return
        self._adjustments_logged[key] = now
        count = self._adjustments.pop(key)
        log.warning(
            "%s: %d event time(s) %s, e.g. %s on %s (counted at %.3f)",
            kind, count, _ADJUSTED[adjustment], scope_name(self._salt, event.user, event.item),
            event.source.key, event.ts,
        )  # fmt: skip

    def _dead_letter(self, message: Message, source: Source, reason: str, detail: str) -> None:
        headers = dead_letter_headers(message.headers(), reason, detail, source.key)
        if any(k == REDRIVEN_HEADER for k, _ in message.headers() or ()):
            self.metrics.redriven.labels("dead_lettered").inc()
        self.metrics.dead_lettered.labels(reason).inc()
        self.stats.dead_lettered += 1
        self._dead[(message.topic(), message.partition())] += 1  # for the surge policy
        self.producer.produce(
            self.settings.topic_dlq, key=message.key(), value=message.value(), headers=headers
        )

    def _send_receipt(self, receipt: Receipt) -> None:
        self.producer.produce(
            self.settings.topic_receipts, key=receipt.key, value=receipt.to_json()
        )

    def _commit(self, messages: list[Message], wait: bool) -> None:
        latest: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            latest[key] = max(latest.get(key, -1), message.offset())
        note = self.assignments.commit_note
        offsets = [TopicPartition(t, p, o + 1, metadata=note(t, p)) for (t, p), o in latest.items()]
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


_NEW_EPOCH = {
    "topic_id": "the topic id changed (deleted and created again)",
    "recreated": "the broker holds another log (the topic was created again)",
    "offsets_reused": "the broker hands out offsets it had given other messages",
}

_ADJUSTED = {
    "milliseconds": "were read as milliseconds",
    "microseconds": "were read as microseconds",
    "nanoseconds": "were read as nanoseconds",
    "future": "lay beyond the clock skew and count at their arrival",
    "negative": "were negative and count at their arrival",
    "unreadable": "were unreadable and count at their arrival",
    "missing": "were missing and count at their arrival",
}
