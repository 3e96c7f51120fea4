"""Every metric the service exports, defined here and only here.

Conventions: the `unlearn_` prefix, base units in names, counters end in `_total`,
histograms for latencies, and bounded label sets only (never a user or item id).
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from consumer.event_time import ADJUSTMENTS
from consumer.events import REASONS

TOPIC_KINDS = ("interactions", "deletions")
EPOCH_REASONS = ("topic_id", "recreated", "offsets_reused")
STAGES = ("wait", "parse", "ingest", "apply", "acknowledge")

# Latency buckets from 1 ms to 10 minutes: deletions should sit in the first few.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 600)
_PHASE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
_SIZE = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class Metrics:
    """The service's metrics, in their own registry (one per service instance)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds: restarts
        PlatformCollector(registry=r)
        # Deletion event ts -> its effect durable in Redis and its offset committed.
        self.forget_latency = Histogram(
            "unlearn_forget_latency_seconds",
            "Deletion event time to durable and committed",
            buckets=_LATENCY,
            registry=r,
        )
        # Interaction event ts -> learned, durable and committed.
        self.learn_latency = Histogram(
            "unlearn_learn_latency_seconds",
            "Interaction event time to durable and committed",
            buckets=_LATENCY,
            registry=r,
        )
        # Events per micro-batch.
        self.batch_events = Histogram(
            "unlearn_batch_events", "Events per micro-batch", buckets=_SIZE, registry=r
        )
        # Wall time of each phase of a batch: read, solve, write, commit.
        self.batch_phase = Histogram(
            "unlearn_batch_phase_seconds",
            "Batch duration by phase",
            ["phase"],
            buckets=_PHASE,
            registry=r,
        )
        # Relative change of sampled scores caused by the last batch.
        self.batch_residual = Gauge(
            "unlearn_batch_residual",
            "Residual (relative score change) of the last batch",
            registry=r,
        )
        # The training objective on the current data, after the last batch (exact: updated
        # from the terms of the rows the batch touched).
        self.batch_loss = Gauge("unlearn_batch_loss", "Objective after the last batch", registry=r)
        # Wall time of each stage a batch goes through: waiting for input to close it
        # (wait), reading it (parse), applying it durably (apply: read, solve, write), and
        # from its receipts' send to the broker's acknowledgement of the last (acknowledge).
        self.stage_seconds = Histogram(
            "unlearn_stage_seconds",
            "Batch stage duration",
            ["stage"],
            buckets=_PHASE,
            registry=r,
        )
        # Consolidation slices run (blocks of rows re-solved exactly, of a forgetting
        # cycle or of requested sweeps), and how long each took.
        self.slices = Counter("unlearn_slices_total", "Consolidation slices run", registry=r)
        self.slice_seconds = Histogram(
            "unlearn_slice_seconds", "Consolidation slice duration", buckets=_PHASE, registry=r
        )
        # Forgetting cycles: each carries a batch's deletions through the model, then rests.
        self.cycles = Counter(
            "unlearn_consolidation_cycles_total", "Forgetting cycles completed", registry=r
        )
        self.cycle_seconds = Histogram(
            "unlearn_consolidation_cycle_seconds",
            "Forgetting cycle duration, first slice to flush",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.cycle_rows = Counter(
            "unlearn_consolidation_rows_solved_total",
            "Rows forgetting cycles re-solved",
            registry=r,
        )
        # Of those, the rows re-solved in overtime: past the settle rule, once the input was
        # quiet (consolidation busy with no event in sight: this is why).
        self.cycle_overtime_rows = Counter(
            "unlearn_consolidation_overtime_rows_solved_total",
            "Rows forgetting cycles re-solved in overtime (past the settle rule, input quiet)",
            registry=r,
        )
        self.cycle_written = Counter(
            "unlearn_consolidation_rows_written_total",
            "Rows forgetting cycles wrote (moved more than the write tolerance)",
            registry=r,
        )
        # The last cycle's reach: rows it re-solved per deleted pair it carried.
        self.cycle_reach = Gauge(
            "unlearn_consolidation_reach",
            "Rows the last forgetting cycle re-solved per deleted pair",
            registry=r,
        )
        # Requested sweeps (unlearn consolidate): the last one's relative decrease of the
        # objective, and the objective after the last slice.
        self.sweep_improvement = Gauge(
            "unlearn_sweep_improvement",
            "Relative decrease of the objective in the last requested sweep",
            registry=r,
        )
        self.sweep_loss = Gauge(
            "unlearn_sweep_loss", "Objective after the last consolidation slice", registry=r
        )
        # 1 while consolidation rests: no forgetting cycle, no requested sweep under way;
        # nothing is re-solved, written or published.
        self.consolidation_settled = Gauge(
            "unlearn_consolidation_settled",
            "1 while consolidation rests (no forgetting cycle or requested sweep under way)",
            registry=r,
        )
        # 1 on an instance that owns shards (it consolidates them).
        self.consolidation_owner = Gauge(
            "unlearn_consolidation_owner",
            "1 on an instance that consolidates the shards it owns",
            registry=r,
        )
        # The shards this instance applies (those of the deletions partitions it holds).
        self.shards_owned = Gauge(
            "unlearn_shards_owned", "Shards of the namespace this instance owns", registry=r
        )
        # Parts of requests asked of shards another instance owns (items to re-solve, an
        # item's interactions to purge); the receipt waits for their answer.
        self.parts_asked = Counter(
            "unlearn_request_parts_asked_total",
            "Parts of requests asked of other owners' shards",
            registry=r,
        )
        # Events put into their shard's inbox by this instance (read from its partitions).
        self.routed = Counter(
            "unlearn_events_routed_total", "Events taken into their shards' inboxes", registry=r
        )
        # Requested sweeps completed (every user block, then every item block).
        self.sweeps = Counter("unlearn_sweeps_total", "Requested ALS sweeps run", registry=r)
        # How far the model is from settled: the last batch's score residual, or the last
        # requested sweep's relative decrease of the objective if newer.
        self.model_residual = Gauge("unlearn_model_residual", "Model-wide residual now", registry=r)
        # How long consolidation has been under way (a forgetting cycle, requested sweeps)
        # without coming to rest; 0 at rest.
        self.since_converged = Gauge(
            "unlearn_seconds_since_converged",
            "Seconds consolidation has been under way without coming to rest (0 at rest)",
            registry=r,
        )
        # Messages consumed, by input topic kind (interactions, deletions).
        self.consumed = Counter(
            "unlearn_events_consumed_total", "Messages consumed", ["topic_kind"], registry=r
        )
        # Events whose effect was applied, by kind.
        self.applied = Counter(
            "unlearn_events_applied_total", "Events applied", ["topic_kind"], registry=r
        )
        # Messages sent to the dead-letter topic, by reason (consumer/events.py REASONS).
        self.dead_lettered = Counter(
            "unlearn_events_dead_lettered_total",
            "Messages dead-lettered",
            ["reason"],
            registry=r,
        )
        # Interactions older than a deletion of their scope, never learned.
        self.late = Counter("unlearn_events_late_total", "Interactions skipped as late", registry=r)
        # Events seen again after a crash or rebalance, already applied.
        self.replayed = Counter(
            "unlearn_events_replayed_total", "Events already applied (replays)", registry=r
        )
        # Receipts published; resent="true" for re-sends after a crash.
        self.receipts = Counter(
            "unlearn_receipts_sent_total", "Receipts published", ["resent"], registry=r
        )
        # The factors topic: rows published (each committed factor change, for serving),
        # how long handing them over took, and receipts waiting for their factors.
        self.factors_published = Counter(
            "unlearn_factors_published_total", "Factor rows sent to the factors topic",
            registry=r,
        )  # fmt: skip
        self.publish_seconds = Histogram(
            "unlearn_factors_publish_seconds",
            "Reading a batch's changed factors and handing them to the producer",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.receipts_held = Gauge(
            "unlearn_receipts_held",
            "Receipts durable in Redis, waiting for their factors on the factors topic",
            registry=r,
        )
        # Retention: pairs older than the window removed (no receipt each), users whose
        # old interactions were expired, passes over a shard finished.
        self.retention_removed = Counter(
            "unlearn_retention_removed_total", "Pairs removed by the retention window",
            registry=r,
        )  # fmt: skip
        self.retention_users = Counter(
            "unlearn_retention_users_total", "Retention deletions made (one per user)",
            registry=r,
        )  # fmt: skip
        self.retention_passes = Counter(
            "unlearn_retention_passes_total", "Retention passes over a shard finished",
            registry=r,
        )  # fmt: skip
        # Log end minus committed offset, per assigned partition; removed on revoke.
        self.lag = Gauge(
            "unlearn_consumer_lag",
            "Messages not yet committed",
            ["topic", "partition"],
            registry=r,
        )
        # Unix time of the last offset commit.
        self.last_commit = Gauge(
            "unlearn_last_commit_timestamp_seconds", "Time of the last offset commit", registry=r
        )
        # The input merge (pipeline/ordering.py) went on without a partition behind that
        # gave nothing within input_order_wait_ms: messages were taken out of time order.
        self.input_passed_over = Counter(
            "unlearn_input_passed_over_total",
            "Partitions behind the input merge went on without (out of time order)",
            registry=r,
        )
        # Partitions paused because most of their recent messages were dead-lettered, by
        # input topic kind: a surge on interactions never pauses deletions.
        self.dlq_paused = Gauge(
            "unlearn_dlq_paused",
            "Partitions paused by a dead-letter surge",
            ["topic_kind"],
            registry=r,
        )
        # Event times the time rule changed (read in another unit, capped at arrival...),
        # by input topic kind and what it did (consumer/event_time.py ADJUSTMENTS).
        self.time_adjusted = Counter(
            "unlearn_event_times_adjusted_total",
            "Event times changed by the time rule",
            ["topic_kind", "adjustment"],
            registry=r,
        )
        # Times the state was found behind what had been acknowledged (Redis restored from
        # an older snapshot, a failover that lost writes), and the messages replayed for it.
        self.state_rollbacks = Counter(
            "unlearn_state_rollbacks_total", "Times the state was found rolled back", registry=r
        )
        self.reapplied = Counter(
            "unlearn_messages_reapplied_total",
            "Messages applied again because the state had lost them",
            registry=r,
        )
        # Messages the state needs that the broker no longer holds, per partition: that
        # partition is not read and the service is not ready until an operator decides.
        self.offset_gap = Gauge(
            "unlearn_offset_gap_messages",
            "Messages the state needs that the broker no longer holds",
            ["topic", "partition"],
            registry=r,
        )
        # A partition started a new life: its topic was re-created (or its offsets reused).
        self.new_epochs = Counter(
            "unlearn_partition_epochs_total",
            "Partitions that started a new life (topic re-created, offsets reused)",
            ["reason"],
            registry=r,
        )
        # Messages `unlearn redrive` sent back, by what became of them the second time.
        self.redriven = Counter(
            "unlearn_redriven_total",
            "Re-driven dead letters, by outcome",
            ["outcome"],
            registry=r,
        )
        # Latency of Redis operations (a pipeline or transaction each), by operation.
        self.redis_seconds = Histogram(
            "unlearn_redis_operation_seconds",
            "Redis operation latency",
            ["operation"],
            buckets=_PHASE,
            registry=r,
        )
        # Redis operations that failed, by operation.
        self.redis_errors = Counter(
            "unlearn_redis_errors_total", "Redis operations failed", ["operation"], registry=r
        )
        # Memory used by the Redis server holding the namespace.
        self.redis_memory = Gauge(
            "unlearn_redis_used_memory_bytes", "Redis server used_memory", registry=r
        )
        # Memory of the namespace's own keys (MEMORY USAGE, sampled once a minute).
        self.namespace_memory = Gauge(
            "unlearn_redis_namespace_memory_bytes",
            "Memory of the namespace's keys",
            registry=r,
        )
        # Model size.
        self.users = Gauge("unlearn_model_users", "Users in the model", registry=r)
        self.items = Gauge("unlearn_model_items", "Items in the model", registry=r)
        self.interactions = Gauge("unlearn_model_interactions", "Interactions stored", registry=r)
        # 1 when any factor is NaN or infinite (the model must not serve).
        self.nonfinite = Gauge(
            "unlearn_factors_nonfinite", "1 if any factor is NaN or infinite", registry=r
        )
        self._busy_since: float | None = None  # when consolidation left rest
        self.since_converged.set_function(
            lambda: 0.0 if self._busy_since is None else time.time() - self._busy_since
        )
        self.consolidation_settled.set(1)
        self._declare_label_sets()

    def _declare_label_sets(self) -> None:
        """Every label set a counter can take, at 0: the first event of a kind is then an
        increase that rate() and increase() see, not a series born at its value."""
        for reason in REASONS:
            self.dead_lettered.labels(reason)
        for kind in TOPIC_KINDS:
            self.consumed.labels(kind)
            self.applied.labels(kind)
            self.dlq_paused.labels(kind)
            for adjustment in ADJUSTMENTS:
                self.time_adjusted.labels(kind, adjustment)
        for resent in ("true", "false"):
            self.receipts.labels(resent)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for reason in EPOCH_REASONS:
            self.new_epochs.labels(reason)
        for outcome in ("applied", "dead_lettered"):
            self.redriven.labels(outcome)

    def consolidation_busy(self, busy: bool) -> None:
        """Consolidation left rest (a cycle or sweeps began), or came back to it."""
        if busy and self._busy_since is None:
            self._busy_since = time.time()
        elif not busy:
            self._busy_since = None
        self.consolidation_settled.set(0 if busy else 1)

    def observe_redis(self, operation: str, seconds: float, failed: bool) -> None:
        """The Redis state's observer hook (consumer/state/store.py)."""
        self.redis_seconds.labels(operation).observe(seconds)
        if failed:
            self.redis_errors.labels(operation).inc()


def metric_names(metrics: Metrics) -> set[str]:
    """Every sample name the registry can export (histogram series included)."""
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names
