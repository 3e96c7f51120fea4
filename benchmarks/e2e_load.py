"""End-to-end load: deletions and interactions at fixed rates through Kafka, the service
under test in its own process, receipts collected for forget latency; `implicit` retraining
the same model measured in the same run.

usage: python -m benchmarks.e2e_load [--deletions-per-s 1000] [--interactions-per-s 1000]
           [--seconds 300] [--knee 250,500,1000,2000] [--knee-seconds 20]
           [--synthetic USERS,ITEMS,INTERACTIONS] [--train-iterations 5]
           [--retrain-iterations 15] [--broker noida|tansu]

--synthetic generates power-law data of that shape instead of reading --pairs (e.g.
MovieLens-20M's: 138493,26744,20000263); --retrain-iterations 0 skips the implicit row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import implicit
import numpy as np
import redis
import scipy.sparse as sp
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, require, write_json
from consumer.embedded import free_port, local_kafka, local_noida, local_redis, wait_until
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import Hyperparameters, Interactions, train
from unlearn_core.sweep import SweepContext
from unlearn_core.synthetic import power_law_pairs

PARAMS = Hyperparameters("implicit", factors=64, regularization=1.0, alpha=1.0)
PARTITIONS = 6
WARMUP_S = 5.0


@dataclass
class Phase:
    deletions_per_s: float
    interactions_per_s: float
    seconds: float
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # event ts -> receipt received
    durable_ms: list[float] = field(default_factory=list)  # event ts -> state durable
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (t, sent - acknowledged)
    cpu_seconds: float = 0.0
    removed: int = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--deletions-per-s", type=float, default=1000)
    parser.add_argument("--interactions-per-s", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--knee", default="250,500,1000,2000,4000")
    parser.add_argument("--knee-seconds", type=float, default=20)
    parser.add_argument("--synthetic", default="", help="USERS,ITEMS,INTERACTIONS")
    parser.add_argument("--broker", choices=("noida", "tansu"), default="noida")
    parser.add_argument("--train-iterations", type=int, default=5)
    parser.add_argument("--retrain-iterations", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/e2e_load.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    started = time.perf_counter()
    if args.synthetic:
        data, user_ids, item_ids = _synthetic(*(int(x) for x in args.synthetic.split(",")))
    else:
        data, user_ids, item_ids = load(require(args.pairs), "implicit")
    print(f"data: {data.shape[0]} users, {data.shape[1]} items, {data.nnz} interactions "
          f"({time.perf_counter() - started:.1f} s)")  # fmt: skip
    model, _ = train(data, user_ids, item_ids, PARAMS, args.train_iterations)
    retrain = _implicit_retrain(data, args.retrain_iterations)
    print(f"implicit retrain: {retrain}")

    broker = local_noida() if args.broker == "noida" else local_kafka()
    with local_redis() as redis_url, broker as bootstrap:
        client = redis.Redis.from_url(redis_url)
        state = ModelState(client, "bench")
        memory_before = int(client.info("memory")["used_memory"])
        loading = time.perf_counter()
        load_state(state, model, data, np.full(data.nnz, 1e9), shards=16)
        redis_memory = {
            "load_seconds": time.perf_counter() - loading,
            "used_memory_growth": int(client.info("memory")["used_memory"]) - memory_before,
            "namespace_bytes": state.memory_usage(),
        }
        redis_memory["bytes_per_interaction"] = redis_memory["used_memory_growth"] / data.nnz
        print(f"redis: {redis_memory}")
        create_topics(bootstrap)
        metrics_port = free_port()
        service = start_service(bootstrap, redis_url, "bench", metrics_port, "600000")
        try:
            starting = time.perf_counter()
            wait_until(lambda: _ready(metrics_port), "the service", timeout=1800)
            service_start_seconds = time.perf_counter() - starting
            time.sleep(8)  # group join
            rng = np.random.default_rng(0)
            order = rng.permutation(data.nnz)  # each pair deleted at most once
            phases = [Phase(args.deletions_per_s, args.interactions_per_s, args.seconds)]
            phases += [Phase(float(r), 0.0, args.knee_seconds) for r in args.knee.split(",") if r]
            cursor = 0
            for phase in phases:
                cursor = _run_phase(
                    phase, bootstrap, service.pid, data, user_ids, item_ids, order, cursor, rng
                )
                print(_summary(phase))
            service_peak_rss = _peak_rss_bytes(service.pid)
        finally:
            service.terminate()
            service.wait(timeout=60)
    results = [_result(p, retrain) for p in phases]
    write_json(
        args.out,
        {
            "machine": machine(),
            "data": f"synthetic {args.synthetic}" if args.synthetic else str(args.pairs),
            "broker": args.broker,
            "shape": {"users": data.shape[0], "items": data.shape[1], "interactions": data.nnz},
            "params": vars(PARAMS),
            "implicit_retrain": retrain,
            "redis": redis_memory,
            "service_start_seconds": service_start_seconds,
            "service_peak_rss_bytes": service_peak_rss,
            "phases": results,
        },
    )
    _plot(args.out.with_suffix(".png"), phases)


def create_topics(bootstrap: str) -> None:
    """The service's five topics, PARTITIONS partitions each (the factors topic compacted)."""
    topics = ["interactions", "deletions", "unlearn-receipts", "unlearn-dlq", "unlearn-factors"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    compacted = {"cleanup.policy": "compact"}
    for future in admin.create_topics(
        [
            NewTopic(
                t, num_partitions=PARTITIONS, config=compacted if t == "unlearn-factors" else {}
            )
            for t in topics
        ]
    ).values():
        future.result(timeout=30)


def start_service(
    bootstrap: str,
    redis_url: str,
    namespace: str,
    port: int,
    consolidate_idle_ms: str,
    log: Path | None = None,
    checkout: Path | None = None,
    **settings: str,
) -> subprocess.Popen:
    """`unlearn run` in its own process, one BLAS thread, metrics on `port`, its output
    into `log` (None: discarded); `settings` more of its settings by name
    (`group_id="g"` sets UNLEARN_GROUP_ID); `checkout`: run another checkout's code."""
    env = {
        **os.environ,
        "UNLEARN_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "UNLEARN_REDIS_URL": redis_url,
        "UNLEARN_NAMESPACE": namespace,
        "UNLEARN_GROUP_ID": f"unlearn-{namespace}",
        "UNLEARN_SESSION_TIMEOUT_MS": "6000",
        "UNLEARN_METRICS_PORT": str(port),
        "UNLEARN_CONSOLIDATE_IDLE_MS": consolidate_idle_ms,
        "OMP_NUM_THREADS": "1",
        **{f"UNLEARN_{name.upper()}": value for name, value in settings.items()},
    }
    if checkout is not None:  # `python -c` puts its working directory first on the path
        env["PYTHONPATH"] = str(checkout.resolve())
    command = [sys.executable, "-c", "from consumer.cli import main; raise SystemExit(main())"]
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen([*command, "run"], env=env, stdout=output, stderr=subprocess.STDOUT,
                            cwd=checkout)  # fmt: skip


def _run_phase(
    phase,
    bootstrap,
    pid,
    data,
    user_ids,
    item_ids,
    order,
    cursor,
    rng,
    linger_ms: float = 5,
    drained=None,
) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{time.time()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    consumer.assign([TopicPartition("unlearn-receipts", p, OFFSET_END) for p in range(PARTITIONS)])
    time.sleep(1.0)  # the receipts reader is positioned before anything is sent
    acknowledged = 0
    stop = threading.Event()

    def collect() -> None:
        nonlocal acknowledged
        while not stop.is_set():
            # poll returns at the first receipt (consume(n, timeout) would wait for all n
            # or the whole timeout, and charge that wait to the service's latency)
            first = consumer.poll(0.05)
            if first is None:
                continue
            for message in [first, *consumer.consume(num_messages=1000, timeout=0)]:
                if message.error() is not None:
                    continue
                now = time.time()
                receipt = json.loads(message.value())
                phase.latencies_ms.append((now - receipt["event_ts"]) * 1e3)
                phase.durable_ms.append(receipt["latency_seconds"] * 1e3)
                phase.removed += receipt["removed"]
                acknowledged += 1

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    cpu_before = _cpu_seconds(pid)
    started = time.monotonic()
    n_items = data.shape[1]
    next_sample = started
    deleted = learned = 0
    while (elapsed := time.monotonic() - started) < phase.seconds:
        due_deletions = int(elapsed * phase.deletions_per_s) - deleted
        due_interactions = int(elapsed * phase.interactions_per_s) - learned
        for _ in range(max(due_deletions, 0)):
            key = int(data.entry_keys[order[cursor]])
            cursor += 1
            user = user_ids[key // n_items]
            value = json.dumps({"user": user, "item": item_ids[key % n_items], "ts": time.time()})
            producer.produce("deletions", key=user, value=value)
            deleted += 1
        for _ in range(max(due_interactions, 0)):
            user = user_ids[int(rng.integers(len(user_ids)))]
            value = json.dumps(
                {"user": user, "item": item_ids[int(rng.integers(n_items))], "ts": time.time()}
            )
            producer.produce("interactions", key=user, value=value)
            learned += 1
        producer.poll(0)
        if time.monotonic() >= next_sample:
            phase.backlog.append((elapsed, deleted - acknowledged))
            next_sample += 1.0
        time.sleep(0.002)
    producer.flush(30)
    # Every receipt of this phase before the next one starts (or the drain limit): a
    # backlog carried over would be charged to the next rate.
    drain_deadline = time.monotonic() + 900
    while acknowledged < deleted and time.monotonic() < drain_deadline:
        time.sleep(0.05)
    while drained is not None and not drained() and time.monotonic() < drain_deadline:
        time.sleep(0.5)  # the interactions too, not only the deletions
    phase.cpu_seconds = _cpu_seconds(pid) - cpu_before
    phase.sent = deleted
    stop.set()
    collector.join(timeout=5)
    consumer.close()
    return cursor


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _implicit_retrain(data, iterations: int) -> dict:
    if iterations == 0:
        return {"iterations": 0, "wall_seconds": float("nan"), "cpu_seconds": float("nan")}
    confidence = sp.csr_matrix(SweepContext(data, PARAMS, "cg").user_confidence)
    als = implicit.cpu.als.AlternatingLeastSquares(
        factors=64,
        regularization=1.0,
        alpha=1.0,
        iterations=iterations,
        calculate_training_loss=False,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    als.fit(confidence, show_progress=False)
    return {
        "iterations": iterations,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }


def _synthetic(n_users: int, n_items: int, nnz: int):
    users, items = power_law_pairs(n_users, n_items, nnz, seed=0)
    data = Interactions.from_triples(users, items, np.ones(nnz), (n_users, n_items), "implicit")
    return data, [f"u{n}" for n in range(n_users)], [f"i{n}" for n in range(n_items)]


def _ready(port: int) -> bool:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _steady(values: list[float], phase: Phase) -> np.ndarray:
    skip = int(len(values) * min(WARMUP_S / max(phase.seconds, 1e-9), 0.5))
    return np.asarray(values[skip:], dtype=np.float64)


def phase_figures(phase: Phase) -> dict:
    """What a load phase measured: rates, receipts, latencies (warm-up left out), backlog."""
    return {
        "deletions_per_s": phase.deletions_per_s,
        "interactions_per_s": phase.interactions_per_s,
        "seconds": phase.seconds,
        "deletions_sent": phase.sent,
        "receipts": len(phase.latencies_ms),
        "forget_latency_ms": _percentiles(_steady(phase.latencies_ms, phase)),
        "durable_latency_ms": _percentiles(_steady(phase.durable_ms, phase)),
        "backlog_end": phase.backlog[-1][1] if phase.backlog else None,
        "backlog_max": max((b for _, b in phase.backlog), default=None),
        "service_cpu_seconds": phase.cpu_seconds,
    }


def _result(phase: Phase, retrain: dict) -> dict:
    cpu_per_forget = phase.cpu_seconds / max(phase.removed, 1)
    return {
        **phase_figures(phase),
        "cpu_seconds_per_forgotten_interaction": cpu_per_forget,
        "implicit_retrain_cpu_over_cpu_per_forget": retrain["cpu_seconds"] / cpu_per_forget,
    }


def _percentiles(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}


def _summary(phase: Phase) -> str:
    latency = _percentiles(_steady(phase.latencies_ms, phase))
    return (
        f"{phase.deletions_per_s:.0f} del/s + {phase.interactions_per_s:.0f} int/s for "
        f"{phase.seconds:.0f} s: sent {phase.sent}, receipts {len(phase.latencies_ms)}, "
        f"latency {latency}, backlog end {phase.backlog[-1][1] if phase.backlog else None}, "
        f"service CPU {phase.cpu_seconds:.1f} s"
    )


def _plot(path: Path, phases: list[Phase]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    main_phase = phases[0]
    values = np.sort(_steady(main_phase.latencies_ms, main_phase))
    if len(values):
        left.plot(values, np.linspace(0, 1, len(values)))
    left.set(
        title=f"Forget latency at {main_phase.deletions_per_s:.0f} del/s + "
        f"{main_phase.interactions_per_s:.0f} int/s",
        xlabel="ms",
        xscale="log",
        ylabel="share of requests",
    )
    rates = [p.deletions_per_s for p in phases[1:]]
    for q, marker in ((50, "o-"), (99, "s-")):
        right.plot(
            rates,
            [_percentiles(_steady(p.latencies_ms, p)).get(f"p{q}", np.nan) for p in phases[1:]],
            marker,
            label=f"p{q}",
        )
    right.axhline(100, color="grey", linestyle="--")
    right.set(
        title="Latency vs deletion rate (knee)", xlabel="deletions/s", ylabel="ms", yscale="log"
    )
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
