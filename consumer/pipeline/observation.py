"""Observation: what every step did, into the metrics (metrics.py defines them all)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Message

from consumer.consolidation.sweeps import SliceOutcome
from consumer.consolidation.worker import Step
from consumer.engine import BatchOutcome, Engine, IngestOutcome
from consumer.metrics import Metrics
from consumer.state.store import ModelState

log = logging.getLogger("unlearn.observation")

REDIS_MEMORY_EVERY_S = 60.0  # the server's memory: one INFO
# The namespace's own: a MEMORY USAGE per key (a few hundred with 16 shards), so an idle
# instance's few commands a second are not mostly these.
NAMESPACE_MEMORY_EVERY_S = 600.0


class Observer:
    def __init__(self, metrics: Metrics, kinds: dict[str, str]) -> None:
        self.metrics = metrics
        self.kinds = kinds  # topic -> "interactions" | "deletions"
        self._redis_checked = -REDIS_MEMORY_EVERY_S  # sample at the first tick
        self._namespace_checked = -NAMESPACE_MEMORY_EVERY_S

    def time_adjusted(self, kind: str, adjustment: str) -> None:
        self.metrics.time_adjusted.labels(kind, adjustment).inc()

    def dead_letter(self, reason: str, redriven: bool) -> None:
        self.metrics.dead_lettered.labels(reason).inc()
        if redriven:
            self.metrics.redriven.labels("dead_lettered").inc()

    def stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_seconds.labels(stage).observe(seconds)

    def outcome(self, outcome: BatchOutcome) -> None:
        m = self.metrics
        for phase, seconds in outcome.phases.items():
            m.batch_phase.labels(phase).observe(seconds)
        m.applied.labels("interactions").inc(outcome.interactions_applied)
        m.applied.labels("deletions").inc(len(outcome.receipts))
        m.late.inc(outcome.interactions_late)
        m.replayed.inc(outcome.events_replayed)
        m.receipts.labels("false").inc(sum(not r.resent for r in outcome.receipts))
        m.receipts.labels("true").inc(len(outcome.resent) + sum(r.resent for r in outcome.receipts))
        m.parts_asked.inc(outcome.parts_asked)
        if outcome.receipts or outcome.interactions_applied:
            m.batch_residual.set(outcome.residual)
            m.model_residual.set(outcome.residual)
            m.batch_loss.set(outcome.loss)

    def ingested(self, outcome: IngestOutcome) -> None:
        m = self.metrics
        m.routed.inc(outcome.routed)
        m.replayed.inc(outcome.events_replayed)
        m.receipts.labels("true").inc(len(outcome.resent))

    def factors_published(self, rows: int, seconds: float) -> None:
        self.metrics.factors_published.inc(rows)
        self.metrics.publish_seconds.observe(seconds)

    def receipts_held(self, count: int) -> None:
        self.metrics.receipts_held.set(count)

    def shards_owned(self, count: int) -> None:
        self.metrics.shards_owned.set(count)

    def acknowledged(self, outcome: BatchOutcome) -> None:
        """A batch's receipts are acknowledged and its offsets committed: the end-to-end
        latencies (from the request's own time, and the interaction's)."""
        m, now = self.metrics, time.time()
        for receipt in outcome.receipts:
            if not receipt.resent:
                m.forget_latency.observe(now - (receipt.applied_at - receipt.latency_seconds))
        for ts in outcome.learned_ts:
            m.learn_latency.observe(max(now - ts, 0.0))
        m.last_commit.set(now)

    def batch(self, messages: list[Message], redriven_applied: int, engine: Engine) -> None:
        m = self.metrics
        for message in messages:
            m.consumed.labels(self.kinds.get(message.topic(), "other")).inc()
        m.batch_events.observe(len(messages))
        m.redriven.labels("applied").inc(redriven_applied)
        self.model(engine)

    def model(self, engine: Engine) -> None:
        m = self.metrics
        m.users.set(len(engine.factors["user"]))
        m.items.set(len(engine.factors["item"]))
        m.interactions.set(engine.interactions)
        m.nonfinite.set(0 if engine.factors_finite() else 1)

    def slice(self, outcome: SliceOutcome) -> None:
        """A slice of requested sweeps."""
        m = self.metrics
        m.slices.inc()
        m.slice_seconds.observe(outcome.seconds)
        m.sweep_loss.set(outcome.loss)
        m.consolidation_busy(True)

    def sweep(self, done: int, loss: float) -> None:
        m = self.metrics
        m.sweeps.inc()
        log.info("requested consolidation: sweep %d done, objective %.6g", done, loss)

    def requested_sweeps_done(self) -> None:
        self.metrics.consolidation_busy(False)

    def consolidation_owner(self, owned: bool) -> None:
        self.metrics.consolidation_owner.set(1 if owned else 0)

    def cycle_started(self) -> None:
        self.metrics.consolidation_busy(True)

    def cycle_slice(self, step: Step) -> None:
        m = self.metrics
        m.slices.inc()
        m.slice_seconds.observe(step.seconds)
        m.cycle_rows.inc(step.solved)
        m.cycle_overtime_rows.inc(step.overtime)
        m.cycle_written.inc(step.written)

    def cycle_ended(self, figures: dict, at_rest: bool = True) -> None:
        """A cycle ended; consolidation is at rest unless it is to be taken up again."""
        m = self.metrics
        m.cycles.inc()
        m.cycle_seconds.observe(figures.get("seconds", 0.0))
        m.cycle_reach.set(figures.get("reach", 0.0))
        if at_rest:
            m.consolidation_busy(False)

    def redis_memory(self, state: ModelState) -> None:
        """Server and namespace memory, once a minute."""
        now = time.monotonic()
        if now - self._redis_checked < REDIS_MEMORY_EVERY_S:
            return
        self._redis_checked = now
        try:
            self.metrics.redis_memory.set(float(state.server_memory()))
            if now - self._namespace_checked >= NAMESPACE_MEMORY_EVERY_S:
                self._namespace_checked = now
                self.metrics.namespace_memory.set(float(state.memory_usage()))
        except Exception:  # a missed sample is not worth failing the loop for
            log.debug("could not sample Redis memory", exc_info=True)
