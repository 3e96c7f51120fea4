"""`unlearn run`: the application that wires the pipeline's steps and runs them.

    source ─► batching ─► parsing ─► ingest ──────► checkpoint ─► (offsets)
    (Kafka)   (policy)    (events)   (each event    (dead letters, then the commit)
                                      to its shard's inbox)
    owned shards' inboxes ─► step (Redis: rows, exact solves) ─► publishing ─► checkpoint
                             (factors topic: the commits' rows)   (receipts)
                  between batches: consolidation slices; throughout: observation

Each step has one job (consumer/pipeline/); the order in which a batch becomes final is
the checkpoint's alone: its effect durable in Redis (an event in its shard's inbox, a
request's every part in its shard), then the factors it changed acknowledged on the
factors topic (publishing holds a receipt until then), then receipts and dead letters
acknowledged by the broker, then what was acknowledged recorded (offsets committed,
receipts marked sent). Every Kafka client is made by the `Clients` given (brokers/): the
commit order's tests run this application against an in-memory broker. Batches overlap:
while the broker acknowledges batch N, batch N+1 is read and applied. This instance
applies the shards that go with the deletions topic's partitions it holds; on revoke the
open batch is finished and every batch in flight acknowledged and committed before the
partitions (and their shards) go.
SIGTERM and SIGINT only set a flag; the loop finishes its batch, drains the checkpoint
and closes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Message

from consumer.brokers.kafka import Clients, KafkaClients
from consumer.consolidation.cycle import CyclePolicy
from consumer.engine import BatchOutcome, Engine, StateRolledBack
from consumer.events import Interaction, Partition
from consumer.http import Health
from consumer.metrics import Metrics
from consumer.pipeline.applying import TRANSIENT, Applier, Unavailable
from consumer.pipeline.batching import BatchPolicy
from consumer.pipeline.checkpoint import AcknowledgementFailed, Checkpoint, Record
from consumer.pipeline.consolidating import Consolidating
from consumer.pipeline.dead_letters import REDRIVEN_HEADER, dead_letter_headers
from consumer.pipeline.observation import Observer
from consumer.pipeline.ownership import Ownership
from consumer.pipeline.parsing import Parsed, Parser
from consumer.pipeline.publishing import FactorPublisher, PublishFailed
from consumer.pipeline.releasing import Release
from consumer.pipeline.retention import Retention, RetentionPolicy
from consumer.pipeline.source import InputFailed, Read, Source
from consumer.receipts import Receipt
from consumer.redaction import scope_name
from consumer.settings import Settings
from consumer.shards.messages import Raw, Routed

log = logging.getLogger("unlearn.application")

STATE_CHECK_S = 5.0  # how often an idle service checks that Redis did not go back in time
TOPIC_CHECK_S = 5.0  # how often the input topics are checked for a new life (re-created)
IDLE_WAIT_S = 0.1  # how long a read waits for input when there is nothing else to do
# ... while this instance's shards had work in the last ACTIVE_S: work another instance
# routes here is looked for this often between reads.
OWNER_WAIT_S = 0.01
ACTIVE_S = 2.0
# How often an owner reads the namespace's bell (one GET: did another instance write?),
# while active and once idle: an idle instance sends Redis a few commands a second.
BELL_ACTIVE_S = 0.01
BELL_IDLE_S = 0.25
# A step with requests still waiting on other owners runs at least this often (to ask
# again those not answered within part_retry_s).
AWAITING_STEP_S = 1.0
ACK_WAIT_S = 0.002  # how long the loop waits for acknowledgements between reads
# Other instances' work reaches this one's inboxes without a message read here: while
# they share the namespace, a consolidation slice waits until a step found nothing for
# this long, so routed work does not queue behind slices during a burst.
SHARED_QUIET_MS = 50.0
# Retention steps run between batches, beside consolidation slices, at most this often:
# expiring old data never holds up a deletion someone asked for.
RETENTION_STEP_S = 0.2


class FatalError(RuntimeError):
    """The service cannot go on: exit non-zero; what is not committed is replayed."""


@dataclass
class Stats:
    batches: int = 0
    events: int = 0
    dead_lettered: int = 0
    receipts_sent: int = 0
    slices: int = 0
    sweeps: int = 0  # requested ALS sweeps completed
    cycles: int = 0  # forgetting cycles completed
    rollbacks: int = 0
    last_residual: float | None = None


class Application:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        clients: Clients | None = None,
    ) -> None:
        self.settings = settings
        # Every Kafka client comes from here: the broker's in production, an in-memory
        # one (brokers/local.py) where the commit order is tested.
        self.clients = clients or KafkaClients()
        self.metrics = metrics or Metrics()
        self.health = health or Health(60.0, lambda: bool(engine.state.client.ping()))
        self.on_batch = on_batch
        self.stats = Stats()
        self._stopping = False
        self.instance = f"{settings.instance_id}:{os.getpid()}"  # its name among the writers
        self.source = Source(settings, engine.state, self.metrics, self.health, self.clients)
        self.observer = Observer(self.metrics, self.source.kinds)
        self.batching = BatchPolicy(settings.batch_max_events, settings.batch_max_ms)
        self.parser = Parser(
            settings, engine.params.kind, self.source.assignments.epoch,
            engine.state.log_salt(), self.observer.time_adjusted,
        )  # fmt: skip
        self.applier = Applier(engine, settings.redis_retry_budget_s, self._retrying)
        self.applier.own(())  # the group decides which shards this instance applies
        self.producer = self.clients.producer(
            {
                **settings.kafka_common(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": settings.producer_linger_ms,
            }
        )
        self.checkpoint = Checkpoint(
            self.producer, self.source.commit, self.source.assignments.commit_note,
            on_acknowledged=lambda seconds: self.observer.stage("acknowledge", seconds),
        )  # fmt: skip
        self.publisher = (
            FactorPublisher(self.producer, settings.topic_factors, engine.state)
            if settings.topic_factors
            else None
        )
        self.release = Release(
            self.publisher, lambda: self.engine.commits(), self.observer.factors_published,
            self.observer.receipts_held,
            lambda: self.metrics.redis_errors.labels("publish").inc(),
        )  # fmt: skip
        self.retention = (
            Retention(engine.state, RetentionPolicy(
                settings.retention_days, settings.retention_interval_s,
                settings.retention_users_per_step,
            ))
            if settings.retention_days > 0
            else None
        )  # fmt: skip
        self._retention_stepped = float("-inf")
        self.consolidating = Consolidating(
            self.applier,
            self.observer,
            CyclePolicy(
                tolerance=settings.consolidate_tolerance,
                write_tolerance=settings.consolidate_write_tolerance,
                slice_ms=settings.consolidate_slice_ms,
                idle_ms=settings.consolidate_idle_ms,
                quiet_ms=settings.consolidate_quiet_ms,
                quiet_reach=settings.consolidate_quiet_reach,
                max_rounds=settings.consolidate_max_rounds,
            ),
            settings.consolidate_sweeps,
            settings.consolidate_sweep_tolerance,
        )
        self.ownership = Ownership(
            settings, self.source, self.applier, self.consolidating, self.observer, self.clients
        )
        self._pending: list[tuple[Message, float]] = []
        self._batch_opened = 0.0
        self._last_event = time.monotonic()
        self._last_work = self._last_event  # the last step that found work
        self._wake = True  # the owned shards' inboxes may hold work: step
        self._stepped = float("-inf")  # the last step
        self._bell_checked = float("-inf")
        self._state_checked = time.monotonic()
        self._topics_checked = time.monotonic()

    @property
    def engine(self) -> Engine:
        return self.applier.engine

    # ----- lifecycle ------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, max_seconds: float | None = None) -> None:
        self._beat()
        self.source.subscribe(revoking=self._revoking, assigned=self._assigned)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._stopping and (deadline is None or time.monotonic() < deadline):
                self._step()
            self._flush()
            self._work()
            self.consolidating.flush()
            self._finish_publishing()
            if not self.checkpoint.drain(self.settings.revoke_budget_s):
                log.warning("shutting down with receipts not yet acknowledged: they are replayed")
        except (Unavailable, InputFailed, AcknowledgementFailed, PublishFailed) as exc:
            raise FatalError(str(exc)) from exc
        finally:
            self.source.close()
            self.producer.flush(10)
            with contextlib.suppress(*TRANSIENT):  # gone from the namespace's writers
                self.engine.state.leave(self.instance)

    # ----- the loop -------------------------------------------------------------------

    def _step(self) -> None:
        self.health.tick()
        self.checkpoint.poll()
        self.release.publish_learning()
        self._release()
        self.observer.redis_memory(self.engine.state)
        self.source.resume_surged()
        self.source.recheck_gaps()
        self._check_state()
        self._reclaim()
        self._check_topics()
        worked = self._work(force=False)
        consolidating = self._consolidation_due(False)
        active = time.monotonic() - self._last_work < ACTIVE_S
        idle = OWNER_WAIT_S if self.engine.owned and active else IDLE_WAIT_S
        wait = 0.0 if self._pending or consolidating or worked else idle
        if wait and (self.checkpoint.in_flight or self.release.holding):
            # Receipts on their way: wait on the broker's acknowledgements (a short wait
            # that ends at the first), not on input, so offsets follow within a ms.
            self.checkpoint.poll(ACK_WAIT_S)
            wait = 0.0
        read = self.source.read(self.batching.room(len(self._pending)), wait)
        self._take(read)
        age_ms = (time.monotonic() - self._batch_opened) * 1000
        if self.batching.closes(len(self._pending), age_ms, read.more_waiting):
            self._flush()
            self._work()
        elif not self._pending and not worked:
            if self._consolidation_due(read.more_waiting):
                self._consolidate()
            if not read.messages:
                self._expire()

    def _take(self, read: Read) -> None:
        if read.messages and not self._pending:
            self._batch_opened = time.monotonic()
        self._pending.extend(read.messages)
        if read.backwards:
            # Offsets ran back without a seek of ours: the topic was re-created under us,
            # or the broker reuses offsets. Finish what came before, then check its life.
            self._check_lives(read.backwards, "offsets ran backwards")

    def _work_due(self) -> bool:
        if self._wake:
            return True
        now = time.monotonic()
        if self.engine.awaiting() and now - self._stepped >= AWAITING_STEP_S:
            return True
        every = BELL_ACTIVE_S if now - self._last_work < ACTIVE_S else BELL_IDLE_S
        if now - self._bell_checked < every:
            return False
        self._bell_checked = now
        return self._bell()

    def _bell(self) -> bool:
        """Did another instance write? Then its commits are read into the replica (what it
        forgot presses on this instance's rows) and the inboxes are looked at."""
        try:
            if not self.engine.state.bell_rang():
                return False
            self.engine.refresh()
        except StateRolledBack as exc:
            self._rolled_back(exc)
        except TRANSIENT:
            pass  # the step waits Redis out
        return True

    def _since_last_event_ms(self) -> float:
        return (time.monotonic() - self._last_event) * 1000

    def _consolidation_due(self, input_waiting: bool) -> bool:
        shared = len(self.engine.owned) < self.engine.shards
        if shared and (time.monotonic() - self._last_work) * 1000 < SHARED_QUIET_MS:
            return False
        return self.consolidating.due(self._since_last_event_ms(), input_waiting)

    def _flush(self) -> None:
        """Take the open batch into the state (each event into its shard's inbox) and hand
        its dead letters and offsets to the checkpoint."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.observer.stage("wait", time.monotonic() - self._batch_opened)
        messages = [m for m, _ in pending]
        started = time.perf_counter()
        parsed = self.parser.parse(pending)
        self.observer.stage("parse", time.perf_counter() - started)
        raw = {
            source: Raw(m.key(), m.value(), m.headers()) for source, m in parsed.messages.items()
        }
        applying = time.perf_counter()
        try:
            ingested = self.applier.ingest(
                parsed.interactions, parsed.deletions, self.source.assignments.acknowledged(),
                [r.source for _, r in parsed.rejected], raw,
            )  # fmt: skip
        except StateRolledBack as exc:
            self._rolled_back(exc)  # nothing of this batch is committed: it is read again
            return
        self.observer.stage("ingest", time.perf_counter() - applying)
        records = [
            self._dead_letter(message, rejected.source.key, rejected.reason, rejected.detail)
            for message, rejected in parsed.rejected
        ]
        records += [
            (self.settings.topic_receipts, r.key, r.to_json(), None) for r in ingested.resent
        ]
        self.observer.ingested(ingested)
        self._wake = self._wake or ingested.routed > 0
        self.stats.receipts_sent += len(ingested.resent)
        self.checkpoint.submit(_next_offsets(messages), records)
        self._after_batch(messages, parsed)

    def _work(self, force: bool = True) -> bool:
        """One batch of the owned shards' inboxes; its receipts to the checkpoint. True if
        there was something to do. Unless forced, only when there may be: this instance
        routed events to its inboxes, its last step found work, requests wait on other
        owners, or the namespace's bell says another instance wrote."""
        if not self.engine.owned or not (force or self._work_due()):
            return False
        self._wake = False
        self._stepped = time.monotonic()
        started = time.perf_counter()
        try:
            outcome = self.applier.step(self.settings.batch_max_events, self._unprocessable)
        except StateRolledBack as exc:
            self._rolled_back(exc)
            return True
        receipts = [*outcome.receipts, *outcome.resent]
        if not (outcome.events or receipts or outcome.phases or outcome.parts_asked):
            return False
        self._wake = True  # there may be more
        self.observer.stage("apply", time.perf_counter() - started)
        if outcome.expired and self.retention is not None:
            self.retention.expired(outcome.expired)
            self.metrics.retention_removed.inc(sum(outcome.expired.values()))
        self._last_work = time.monotonic()
        self.consolidating.batch(outcome)
        self.observer.outcome(outcome)
        if outcome.events:
            self.observer.model(self.engine)
        self.stats.last_residual = outcome.residual
        if receipts or outcome.forgetting:
            self.release.publish()
        else:  # learning alone: published within a moment (releasing.py)
            self.release.learned()
        self._send(self.release.ready(receipts), outcome)
        if self.on_batch is not None:
            self.on_batch(outcome)
        return True

    def _send(self, ready: list[Receipt], outcome: BatchOutcome) -> None:
        """Receipts whose effect and factors are durable, to the checkpoint; once
        acknowledged, the outcome's latencies are observed with them."""
        self.stats.receipts_sent += len(ready)
        records = [(self.settings.topic_receipts, r.key, r.to_json(), None) for r in ready]
        released = dataclasses.replace(outcome, receipts=[r for r in ready if not r.resent])
        self.checkpoint.submit({}, records, lambda: self._acknowledged(released, ready))

    def _acknowledged(self, outcome: BatchOutcome, receipts: list[Receipt]) -> None:
        self.observer.acknowledged(outcome)
        try:
            self.engine.sent(receipts)
        except TRANSIENT as exc:  # they stay marked unsent: a later owner sends them again
            log.info("could not mark receipts sent: %s", type(exc).__name__)

    # ----- publishing ---------------------------------------------------------------------

    def _release(self) -> None:
        """Held receipts whose factors are published now: to the checkpoint."""
        ready = self.release.release()
        if ready:
            self._send(ready, BatchOutcome())

    def _finish_publishing(self) -> None:
        """Before the shards go: what is handed over acknowledged, its receipts sent."""
        ready = self.release.finish(self.settings.revoke_budget_s)
        if ready:
            self._send(ready, BatchOutcome())

    def _after_batch(self, messages: list[Message], parsed: Parsed) -> None:
        total: Counter[Partition] = Counter()
        for message in messages:
            total[(message.topic(), message.partition())] += 1
        dead = Counter((m.topic(), m.partition()) for m, _ in parsed.rejected)
        self.source.record_dead_letters(total, dead)
        self.source.sample_lag(set(total))
        redriven = len(parsed.redriven - {r.source for _, r in parsed.rejected})
        self.observer.batch(messages, redriven, self.engine)
        self.stats.batches += 1
        self.stats.events += len(messages)
        self._last_event = time.monotonic()

    # ----- ownership --------------------------------------------------------------------

    def _assigned(self, partitions: list[Partition]) -> None:
        """Partitions given: this instance applies the shards of its deletions partitions."""
        self._own(self.source.held(self.settings.topic_deletions))

    def _own(self, held: set[int]) -> None:
        if self.ownership.own(held):
            self._wake = True
        # What the factors topic lacks of the shards taken (a fresh load: the whole model,
        # once; a previous owner's unpublished commits), before any event asks for it.
        self.release.publish()

    def _reclaim(self) -> None:
        if self.ownership.reclaim():
            self.release.publish()
            self._wake = True  # their inboxes hold what came meanwhile

    def _revoking(self, partitions: list[Partition]) -> None:
        """Partitions are going: finish the open batch, the owned shards' work and every
        batch in flight while they are still ours; then the shards go with them."""
        self._flush()
        self._work()
        self.consolidating.flush()  # the cycle's rounds so far, while the shards are ours
        self._finish_publishing()
        if not self.checkpoint.drain(self.settings.revoke_budget_s):
            log.warning("revoked with receipts not yet acknowledged: the next owner replays them")
        for topic, number in partitions:  # another instance commits them now
            self.engine.committed.pop(self.source.assignments.key(topic, number), None)
        gone = {p for t, p in partitions if t == self.settings.topic_deletions}
        if gone:
            self._own(self.source.held(self.settings.topic_deletions) - gone)
            # Held receipts of shards that went are sent by their next owner.
            self.release.keep_only(lambda r: self.engine.holds_unsent(r.key_in_trail))

    # ----- what goes wrong ------------------------------------------------------------

    def _retrying(self, operation: str) -> None:
        self.metrics.redis_errors.labels(operation).inc()
        self.health.tick()  # waiting out an outage is not a stuck loop

    def _heal_rollback(self, exc: StateRolledBack) -> None:
        """The state lost acknowledged work: reload it, and read every partition again
        from the offsets it holds, so the lost events are applied again."""
        log.error("the state is behind what was committed (%s): replaying from Redis", exc)
        self.metrics.state_rollbacks.inc()
        self.stats.rollbacks += 1
        self.applier.rebuild(keep_committed=False)
        self.release.forget()  # held receipts: still unsent in their shards, sent again
        self.ownership.read_back(set(self.engine.owned))
        self.source.seek(sorted(self.source.assignments.views), rollback_counted=True)
        self.source.assignments.lost_through({key: c for key, (_, c) in exc.behind.items()})

    def _rolled_back(self, exc: StateRolledBack) -> None:
        """A batch, a step or a slice found the state behind: healed here, or left to the
        next owner when this instance is stopping."""
        if self._stopping:
            self._leave_rollback(exc)
        else:
            self._heal_rollback(exc)

    def _leave_rollback(self, exc: StateRolledBack) -> None:
        """Found while stopping: nothing more is applied here. The offsets recorded in the
        state, not the group's, say where the next owner resumes, and it reads the
        receipts topic back when it takes the shards: what was lost is applied again
        there, its receipts marked reapplied."""
        log.error("the state is behind what was committed (%s) while stopping: the next "
                  "owner replays what it lost", exc)  # fmt: skip
        self.metrics.state_rollbacks.inc()

    def _check_state(self) -> None:
        """Now and then, even with nothing to process: is Redis still where this engine
        left it? A restore from an older snapshot would otherwise wait for the next event."""
        now = time.monotonic()
        if now - self._state_checked < STATE_CHECK_S or self._pending:
            return
        self._state_checked = now
        self.consolidating.check_request()
        self._beat()
        try:
            self.engine.check_not_behind()
            if self.engine.state.bell_rang():  # another writer: catch up with its commits
                self.engine.refresh()
        except StateRolledBack as exc:
            self._heal_rollback(exc)
        except TRANSIENT as exc:  # Redis away: the next batch waits it out
            log.info("state check skipped: %s", type(exc).__name__)

    def _beat(self) -> None:
        """This instance is alive on the namespace: `unlearn load` will not rewrite it."""
        try:
            self.engine.state.beat(self.instance, {
                "instance": self.settings.instance_id, "host": socket.gethostname(),
                "pid": os.getpid(), "load": self.engine.meta.load,
                "shards": sorted(self.engine.owned),
            })  # fmt: skip
        except TRANSIENT as exc:
            log.info("heartbeat not written: %s", type(exc).__name__)

    def _check_topics(self) -> None:
        """Now and then: was an input topic deleted and created again under us? What was
        read before it shows is applied first (it may be the old life's last messages);
        then its partitions are checked and resume in the new life."""
        now = time.monotonic()
        if now - self._topics_checked < TOPIC_CHECK_S:
            return
        self._topics_checked = now
        changed = self.source.assignments.recreated()
        if changed:
            self._check_lives(changed, "a topic's first message or id changed")

    def _check_lives(self, partitions: list, why: str) -> None:
        """Finish what came before (it may be the old life's last messages), then decide
        again where every partition of those topics resumes (a topic is re-created whole)."""
        self._flush()
        log.warning("%s on %s: checking the partitions", why, partitions)
        self.source.seek(self.source.assignments.of_topics(partitions))

    def _unprocessable(self, events: list[Routed], detail: str) -> None:
        """Dead-letter events a batch could not process, durably before they are taken as
        done (the engine applies the rest of the batch without them)."""
        for routed in events:
            event = routed.event
            log.error(
                "%s on %s could not be processed (%s): dead-lettered as unprocessable (%s)",
                "an interaction" if isinstance(event, Interaction) else "a deletion",
                event.source.key, detail, scope_name(self.parser.salt, event.user, event.item),
            )  # fmt: skip
            raw = routed.raw or Raw(None, None)
            redriven = any(k == REDRIVEN_HEADER for k, _ in raw.headers or ())
            self.observer.dead_letter("unprocessable", redriven)
            self.stats.dead_lettered += 1
            headers = dead_letter_headers(raw.headers, "unprocessable", detail, event.source.key)
            self.producer.produce(self.settings.topic_dlq, key=raw.key, value=raw.value,
                                  headers=headers)  # fmt: skip
        if self.producer.flush(30) != 0:
            raise FatalError("dead letters not acknowledged by the broker")

    def _dead_letter(self, message: Message, source: str, reason: str, detail: str) -> Record:
        redriven = any(k == REDRIVEN_HEADER for k, _ in message.headers() or ())
        self.observer.dead_letter(reason, redriven)
        self.stats.dead_lettered += 1
        headers = dead_letter_headers(message.headers(), reason, detail, source)
        return (self.settings.topic_dlq, message.key(), message.value(), headers)

    # ----- retention ----------------------------------------------------------------------

    def _expire(self) -> None:
        """One retention step on the owned shards, when nothing else waits."""
        if self.retention is None or not self.engine.owned:
            return
        if time.monotonic() - self._retention_stepped < RETENTION_STEP_S:
            return
        self._retention_stepped = time.monotonic()
        try:
            made, summary = self.retention.step(self.engine.owned, self.engine.retention_done)
        except TRANSIENT as exc:  # Redis away: a later step goes on from the same cursor
            log.info("retention step skipped: %s", type(exc).__name__)
            return
        self.metrics.retention_users.inc(made)
        self._wake = self._wake or made > 0  # its deletions wait in this owner's inboxes
        if summary is not None:
            self.metrics.retention_passes.inc()

    # ----- consolidation ------------------------------------------------------------------

    def _consolidate(self) -> None:
        """One slice of consolidation (a deletion arriving now waits for it)."""
        if self.consolidating.run(self._rolled_back):
            self.release.publish()  # a cycle's end, or a requested sweep's slice, wrote rows
        self.stats.slices = self.consolidating.slices
        self.stats.sweeps = self.consolidating.sweeps
        self.stats.cycles = self.consolidating.cycles


def _next_offsets(messages: list[Message]) -> dict[Partition, int]:
    """Per partition, the next offset to read after these messages."""
    out: dict[Partition, int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        out[key] = max(out.get(key, 0), message.offset() + 1)
    return out
