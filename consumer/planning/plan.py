"""A capacity plan: the instances, CPU and memory per instance, Redis memory and work, and
partitions a deployment needs for a model's size and a rate of events, from measured
cost coefficients (coefficients.py) and the model's shape (shape.py).

- CPU: an event costs `core_s_per_event + core_s_per_work x shape.work` core-seconds on
  one instance; n instances at c cores each drain `n x c x efficiency(n) / cost` events a
  second, and the plan keeps them busy at most `utilisation` of that (a backlog drains,
  a rebalance or a forgetting cycle has room).
- Memory per instance: `runtime_bytes + rss_per_factor_byte x factor bytes`.
- Redis: the model's bytes (interactions, rows, factors) plus the audit trail's growth a
  day at the deletion rate (the trail is kept for `retention`, docs/retention.md); its
  commands a second; its CPU (Redis runs commands on one core: past what one core gives,
  the plan asks for a Cluster with that many primaries).
- Partitions: at least twice the instances, a power of two (instances can double without
  a new topic); shards (`unlearn load --shards`) at least the partitions, since a shard is
  applied by the owner of partition `shard % partitions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from consumer.planning.coefficients import Coefficients
from consumer.planning.shape import Shape

UTILISATION = 0.7  # the share of its CPU an instance is planned to use
REDIS_CORE_LIMIT = 0.7  # the share of one core a Redis primary is planned to use
MIN_SHARDS = 16  # unlearn load's default
DAY_S = 86_400.0
MAX_INSTANCES = 4096


@dataclass(frozen=True)
class Demand:
    deletions_per_s: float
    interactions_per_s: float

    def __post_init__(self) -> None:
        for name in ("deletions_per_s", "interactions_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def events_per_s(self) -> float:
        return self.deletions_per_s + self.interactions_per_s


@dataclass(frozen=True)
class Plan:
    instances: int
    cpu_per_instance: float  # cores (a Kubernetes CPU limit)
    memory_per_instance_bytes: float
    events_per_s_capacity: float  # what the instances drain at full CPU
    core_s_per_event: float
    partitions: int
    shards: int
    redis_memory_bytes: float  # the model, loaded
    redis_trail_bytes_per_day: float  # what deletions add a day until retention trims
    redis_calls_per_s: float
    redis_cores: float
    redis_primaries: int
    redis_events_per_s_per_primary: float  # the rate at which one primary's core is full


def plan(
    shape: Shape,
    demand: Demand,
    coefficients: Coefficients,
    cpu_per_instance: float = 1.0,
    utilisation: float = UTILISATION,
) -> Plan:
    if not cpu_per_instance > 0:
        raise ValueError(f"cpu_per_instance must be > 0, got {cpu_per_instance!r}")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation!r}")
    c = coefficients
    cost = c.core_s_per_event + c.core_s_per_work * shape.work

    def capacity(n: int) -> float:
        return n * cpu_per_instance * c.efficiency_of(n) / cost

    instances = 1
    while capacity(instances) * utilisation < demand.events_per_s:
        instances += 1
        if instances > MAX_INSTANCES:
            raise ValueError(
                f"{demand.events_per_s:,.0f} events/s needs more than {MAX_INSTANCES} "
                f"instances of {cpu_per_instance:g} cores (about {cost * 1000:.2f} ms of CPU "
                "an event): give each instance more CPU"
            )
    partitions = 1 << max(1, math.ceil(math.log2(2 * instances)))
    events = demand.events_per_s
    redis_cores = c.redis_core_s_per_event * events
    trail = c.redis_trail_bytes_per_deletion * demand.deletions_per_s * DAY_S
    return Plan(
        instances=instances,
        cpu_per_instance=cpu_per_instance,
        memory_per_instance_bytes=c.runtime_bytes + c.rss_per_factor_byte * shape.factor_bytes,
        events_per_s_capacity=capacity(instances),
        core_s_per_event=cost,
        partitions=partitions,
        shards=max(MIN_SHARDS, partitions),
        redis_memory_bytes=(
            c.redis_bytes_per_interaction * shape.interactions
            + c.redis_bytes_per_row * shape.rows
            + c.redis_bytes_per_factor_byte * shape.factor_bytes
        ),
        redis_trail_bytes_per_day=trail,
        redis_calls_per_s=c.redis_calls_per_event * events,
        redis_cores=redis_cores,
        redis_primaries=max(1, math.ceil(redis_cores / REDIS_CORE_LIMIT)),
        redis_events_per_s_per_primary=(
            REDIS_CORE_LIMIT / c.redis_core_s_per_event if c.redis_core_s_per_event else math.inf
        ),
    )
