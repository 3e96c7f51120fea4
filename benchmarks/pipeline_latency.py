"""Forget latency of the pipelined service, side by side with and without consolidation.

One `unlearn run` process per variant, on the same model loaded fresh into its own
namespace, the same broker and Redis. Latency is from the deletion's own timestamp (set by
the producer when it sends) to the receipt's arrival at a consumer of the receipts topic.

Variant "consolidating" (the defaults: slices run whenever no input waits), --phases in order:
  burst      1,000 deletions (--burst) at once, then silence: sweeps until the stopping rule holds,
             then what Redis receives during --idle-seconds (append-only file growth and
             write commands)
  low        10 deletions/s, no interactions (after the burst: a settled service)
  sustained  D deletions/s + I interactions/s for --seconds
  knee       each rate of --knee, deletions alone and then with as many interactions
Variant "no consolidation" (UNLEARN_CONSOLIDATE_IDLE_MS beyond the run): sustained only.
With --compare-factors instead: variants "factors topic" (the default) and "no factors
topic" (UNLEARN_TOPIC_FACTORS=""), each running every phase: what publishing every
committed factor change before the receipts costs.

Per phase: latency percentiles, backlog, service CPU, the mean of each pipeline stage from
the service's own /metrics; Redis memory per stored interaction after loading and after
the run, the audit trail (tombstones, receipts) reported apart.

usage: python -m benchmarks.pipeline_latency [--deletions-per-s 2000]
           [--interactions-per-s 2000] [--seconds 300] [--knee 500,1000,2000,3000]
           [--knee-seconds 20] [--synthetic USERS,ITEMS,INTERACTIONS] [--phases burst,low,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, require, write_json
from benchmarks.e2e_load import (
    PARAMS,
    PARTITIONS,
    Phase,
    _peak_rss_bytes,
    _ready,
    _run_phase,
    _synthetic,
    create_topics,
    phase_figures,
    start_service,
)
from consumer.embedded import free_port, local_noida, local_redis, wait_until
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import train

PRODUCER_LINGER_MS = 1.0  # the benchmark's producers: a deletion leaves within a ms
BURST = 1000
NO_CONSOLIDATION_MS = str(10**9)  # 11 days: never within the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--synthetic", default="", help="USERS,ITEMS,INTERACTIONS")
    parser.add_argument("--deletions-per-s", type=float, default=2000)
    parser.add_argument("--interactions-per-s", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--low-seconds", type=float, default=60)
    parser.add_argument("--knee", default="500,1000,2000,3000")
    parser.add_argument("--knee-seconds", type=float, default=20)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--settle-timeout", type=float, default=600)
    parser.add_argument("--train-iterations", type=int, default=15)  # `unlearn train`
    parser.add_argument(
        "--phases", default="burst,low,sustained,knee", help="the consolidating variant's, in order"
    )
    parser.add_argument("--compare-factors", action="store_true")
    parser.add_argument("--burst", type=int, default=BURST, help="deletions in the burst phase")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/pipeline_latency.json")
    )
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    if args.synthetic:
        data, user_ids, item_ids = _synthetic(*(int(x) for x in args.synthetic.split(",")))
    else:
        data, user_ids, item_ids = load(require(args.pairs), "implicit")
    print(f"data: {data.shape[0]} users, {data.shape[1]} items, {data.nnz} interactions")
    model, _ = train(data, user_ids, item_ids, PARAMS, args.train_iterations)

    variants: dict[str, dict] = {}
    order = np.random.default_rng(0).permutation(data.nnz)  # each pair deleted once
    variants_wanted: list[tuple[str, str, dict[str, str]]] = [("consolidating", "0", {})]
    if args.compare_factors:
        variants_wanted = [("factors topic", "0", {}),
                           ("no factors topic", "0", {"topic_factors": ""})]  # fmt: skip
    elif "sustained" in args.phases.split(","):
        variants_wanted.append(("no consolidation", NO_CONSOLIDATION_MS, {}))
    for name, idle_ms, settings in variants_wanted:
        # Each variant on its own broker and Redis: nothing one left behind reaches the other.
        with local_redis(appendonly=True) as redis_url, local_noida() as bootstrap:
            variants[name] = _variant(
                name, idle_ms, args, bootstrap, redis.Redis.from_url(redis_url), redis_url,
                model, data, user_ids, item_ids, order, settings,
            )  # fmt: skip
    write_json(
        args.out,
        {
            "machine": machine(),
            "command": "python -m benchmarks.pipeline_latency " + " ".join(sys.argv[1:]),
            "data": f"synthetic {args.synthetic}"
            if args.synthetic
            else f"{args.pairs.parent.name}/{args.pairs.name}",
            "broker": "noida",
            "producer_linger_ms": PRODUCER_LINGER_MS,
            "shape": {"users": data.shape[0], "items": data.shape[1], "interactions": data.nnz},
            "params": vars(PARAMS),
            "variants": variants,
        },
    )


def _variant(
    name, idle_ms, args, bootstrap, client, redis_url, model, data, user_ids, item_ids, order,
    settings,
) -> dict:  # fmt: skip
    create_topics(bootstrap)
    namespace = "bench"
    state = ModelState(client, namespace)
    load_state(state, model, data, np.full(data.nnz, 1e9), shards=16)
    memory_loaded = _memory(client, namespace, data.nnz)
    print(f"{name}: loaded, {memory_loaded}")
    port = free_port()
    service = start_service(bootstrap, redis_url, namespace, port, idle_ms, **settings)
    rng = np.random.default_rng(1)  # both variants get the same interactions
    try:
        wait_until(lambda: _ready(port), "the service", timeout=1800)
        time.sleep(8)  # group join
        plan = args.phases.split(",")
        if name == "no consolidation":
            plan = [p for p in plan if p == "sustained"]
        results, cursor, memory_sustained, burst = [], 0, None, None
        for label in plan:
            if label == "burst":
                burst = _burst_then_idle(
                    bootstrap, client, port, data, user_ids, item_ids, order, cursor,
                    args.idle_seconds, args.settle_timeout, args.burst,
                )  # fmt: skip
                cursor += args.burst
                print(f"{name} burst: {json.dumps(burst)}")
                continue
            for phase in _phases(label, args):
                before = _scrape(port)
                cursor = _run_phase(
                    phase, bootstrap, service.pid, data, user_ids, item_ids, order, cursor, rng,
                    linger_ms=PRODUCER_LINGER_MS, drained=lambda: _drained(bootstrap, namespace),
                )  # fmt: skip
                result = _phase_result(label, phase, before, _scrape(port))
                print(f"{name} {label}: {json.dumps(result)}")
                results.append(result)
            if label == "sustained":  # interactions in and out at the same rate
                memory_sustained = _memory(client, namespace, None)
        return {
            "phases": results,
            "burst": burst,
            "redis_loaded": memory_loaded,
            "redis_after_sustained": memory_sustained,
            "service_peak_rss_bytes": _peak_rss_bytes(service.pid),
        }
    finally:
        service.terminate()
        service.wait(timeout=120)


def _drained(bootstrap: str, namespace: str) -> bool:
    """The service's group has committed every input message (both topics)."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"unlearn-{namespace}"})
    try:
        partitions = [
            TopicPartition(t, p) for t in ("interactions", "deletions") for p in range(PARTITIONS)
        ]
        for tp in probe.committed(partitions, timeout=10):
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            if (tp.offset if tp.offset >= 0 else low) < high:
                return False
        return True
    finally:
        probe.close()


def _phases(label: str, args: argparse.Namespace) -> list[Phase]:
    if label == "low":
        return [Phase(10, 0, args.low_seconds)]
    if label == "sustained":
        return [Phase(args.deletions_per_s, args.interactions_per_s, args.seconds)]
    if label == "knee":
        rates = [float(r) for r in args.knee.split(",") if r]
        return [Phase(r, i, args.knee_seconds) for r in rates for i in (0, r)]
    raise SystemExit(f"unknown phase {label!r} (burst, low, sustained, knee)")


# ----- what the service says about itself ---------------------------------------------


def _scrape(port: int) -> dict[str, float]:
    """The service's /metrics, flattened: 'name{label=value,...}' -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _stages_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds per batch of each pipeline stage and each engine phase."""
    out = {}
    kinds = (("unlearn_stage_seconds", "stage"), ("unlearn_batch_phase_seconds", "phase"))
    for metric, label in kinds:
        for key in after:
            if key.startswith(f"{metric}_count{{{label}="):
                name = key[key.index("=") + 1 : -1]
                count = _delta(before, after, key)
                total = _delta(before, after, key.replace("_count{", "_sum{"))
                if count:
                    out[name] = 1e3 * total / count
    return out


def _phase_result(label: str, phase: Phase, before: dict, after: dict) -> dict:
    batches = _delta(before, after, "unlearn_batch_events_count{}")
    return {
        "phase": label,
        **phase_figures(phase),
        "batches": batches,
        "events_per_batch": _delta(before, after, "unlearn_batch_events_sum{}") / max(batches, 1),
        "slices": _delta(before, after, "unlearn_slices_total{}"),
        "sweeps": _delta(before, after, "unlearn_sweeps_total{}"),
        "stage_ms": _stages_ms(before, after),
        # The factors topic: rows produced, and the loop's time spent reading and producing.
        "factors_published": _delta(before, after, "unlearn_factors_published_total{}"),
        "factors_publish_s": _delta(before, after, "unlearn_factors_publish_seconds_sum{}"),
    }


# ----- after a burst ----------------------------------------------------------------------


def _burst_then_idle(
    bootstrap, client, port, data, user_ids, item_ids, order, cursor, idle_s, timeout_s,
    burst=BURST,
) -> dict:  # fmt: skip
    """`burst` deletions at once (1,000 unless asked); then how long and how many sweeps
    until the stopping rule holds, and what Redis receives while the service is idle."""
    group = f"burst-{time.time()}"
    receipts = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    receipts.assign([TopicPartition("unlearn-receipts", p, OFFSET_END) for p in range(PARTITIONS)])
    time.sleep(1.0)
    before = _scrape(port)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": PRODUCER_LINGER_MS})
    n_items = data.shape[1]
    for n in range(burst):
        key = int(data.entry_keys[order[cursor + n]])
        user = user_ids[key // n_items]
        value = json.dumps({"user": user, "item": item_ids[key % n_items], "ts": time.time()})
        producer.produce("deletions", key=user, value=value)
    producer.flush(30)
    sent = time.monotonic()
    got = 0
    while got < burst and time.monotonic() - sent < max(300, burst / 50):
        got += sum(m.error() is None for m in receipts.consume(1000, timeout=0.2))
    receipts.close()
    answered = time.monotonic() - sent
    settled_after = None
    while time.monotonic() - sent < timeout_s:
        now = _scrape(port)
        if now.get("unlearn_consolidation_settled{}") == 1.0:
            settled_after = time.monotonic() - sent
            break
        time.sleep(0.5)
    settled = _scrape(port)
    time.sleep(2)  # the last slice's commit
    idle_from = _redis_writes(client)
    time.sleep(idle_s)
    idle_to = _redis_writes(client)
    per_minute = 60 / idle_s
    return {
        "deletions": burst,
        "receipts": got,
        "all_answered_seconds": answered,
        "deletions_per_s": got / answered if answered > 0 else None,
        "settled_after_seconds": settled_after,
        "sweeps_to_settle": _delta(before, settled, "unlearn_sweeps_total{}"),
        "slices_to_settle": _delta(before, settled, "unlearn_slices_total{}"),
        "last_sweep_improvement": settled.get("unlearn_sweep_improvement{}"),
        "idle_seconds": idle_s,
        "idle_aof_bytes_per_minute": (idle_to["aof"] - idle_from["aof"]) * per_minute,
        "idle_write_commands_per_minute": (idle_to["changes"] - idle_from["changes"]) * per_minute,
        "idle_bytes_received_per_minute": (idle_to["received"] - idle_from["received"])
        * per_minute,
    }


def _redis_writes(client: redis.Redis) -> dict[str, int]:
    persistence, stats = client.info("persistence"), client.info("stats")
    return {
        "aof": int(persistence.get("aof_current_size", 0)),
        "changes": int(persistence.get("rdb_changes_since_last_save", 0)),
        "received": int(stats.get("total_net_input_bytes", 0)),
    }


# ----- Redis memory ---------------------------------------------------------------------------

_FAMILIES = {
    ":ur": "rows", ":ir": "rows", ":uf": "factors", ":if": "factors", ":ug": "factors",
    ":ig": "factors", ":tomb": "audit trail", ":receipts": "audit trail",
    ":changes": "change log", ":uid": "ids", ":iid": "ids", ":uix": "ids", ":iix": "ids",
}  # fmt: skip


def _memory(client: redis.Redis, namespace: str, interactions: int | None) -> dict:
    """Namespace memory by key family (MEMORY USAGE), per stored interaction."""
    families: dict[str, int] = {}
    for key in client.scan_iter(match=f"{{unlearn:{namespace}*", count=1000):
        name = key.decode()
        family = next((f for s, f in _FAMILIES.items() if name.endswith(s)), "other")
        families[family] = families.get(family, 0) + int(client.memory_usage(key, samples=0) or 0)
    if interactions is None:
        interactions = ModelState(client, namespace).count_interactions()
    model = sum(v for k, v in families.items() if k != "audit trail")
    return {
        "interactions": interactions,
        "bytes": families,
        "model_bytes_per_interaction": model / max(interactions, 1),
        "with_audit_trail_bytes_per_interaction": sum(families.values()) / max(interactions, 1),
    }


if __name__ == "__main__":
    main()
