"""The capacity plan's cost coefficients, measured: at each model size, load the model into
a fresh redis-server, then one and two `unlearn run` instances (each at the same CPU quota,
as benchmarks/scaling.py runs them) drain a burst of pair deletions and interactions.
Measured per size: the drain rate, each instance's peak memory, Redis's memory by key
family, its commands and CPU per event, and the audit trail's bytes per deletion. The
coefficients are fitted across the sizes and written to consumer/planning/coefficients.json
(what `unlearn plan` reads), with each size's measurements beside the plan's predictions.

usage: python -m benchmarks.capacity [--sizes ml-1m,1m,20m] [--burst 3000] [--percent 50]
           [--repeats 2] [--broker tansu|noida] [--out benchmarks/results/capacity.json]
           [--coefficients consumer/planning/coefficients.json]

Sizes: ml-1m (the MovieLens-1M pairs), 20m (MovieLens-20M's shape, generated: 138,493
users, 26,744 items, 20,000,263 interactions), 1m (1,000,000 users, 20,000 items, 3,950,000
interactions), 10m (10,000,000 users, 200,000 items, 100,000,000), or USERS,ITEMS,INTERACTIONS.
Needs root (cgroups at /sys/fs/cgroup/cpu).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import redis
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, median, require, write_json
from benchmarks.e2e_load import PARAMS, _synthetic
from benchmarks.pipeline_latency import _memory
from benchmarks.scaling import CGROUP_ROOT, NAMESPACE, Config, _run
from consumer.embedded import local_kafka, local_noida, local_redis
from consumer.planning.coefficients import DEFAULT_PATH, Coefficients
from consumer.planning.plan import Demand, plan
from consumer.planning.shape import Shape
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import train

SIZES = {
    "20m": (138_493, 26_744, 20_000_263),
    "1m": (1_000_000, 20_000, 3_950_000),
    "10m": (10_000_000, 200_000, 100_000_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="ml-1m,1m,20m")
    parser.add_argument("--burst", type=int, default=3000, help="deletions (and interactions)")
    parser.add_argument("--percent", type=int, default=50, help="% of a core per instance")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-iterations", type=int, default=2)
    parser.add_argument("--broker", choices=("tansu", "noida"), default="tansu")
    parser.add_argument("--warm-up", type=int, default=300, help="deletions before the runs")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy each instance here")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/capacity.json"))
    parser.add_argument("--coefficients", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args()
    if not CGROUP_ROOT.is_dir():
        raise SystemExit(f"{CGROUP_ROOT} not found: this needs cgroup v1's cpu controller")
    threadpool_limits(1, "blas")
    sizes = [measure(name, args) for name in args.sizes.split(",")]
    coefficients = fit(sizes, args)
    for size in sizes:
        size["predicted"] = predicted(size, coefficients, args.percent)
    coefficients = Coefficients(**{**coefficients.__dict__, "source": _source(sizes, args)})
    args.coefficients.write_text(coefficients.to_json(), encoding="utf-8")
    write_json(
        args.out, {"machine": machine(), "sizes": sizes, "coefficients": coefficients.__dict__}
    )
    for size in sizes:
        print(size["name"], {k: size[k] for k in ("measured", "predicted")})


def _data(name: str):
    if name == "ml-1m":
        return load(require(DATA_DIR / "ml-1m" / "pairs.tsv"), "implicit")
    users, items, interactions = SIZES.get(name) or tuple(int(x) for x in name.split("x"))
    return _synthetic(users, items, interactions)


def measure(name: str, args) -> dict:
    """One size: load, then the burst at one and two instances, alternated."""
    data, user_ids, item_ids = _data(name)
    shape = Shape.of_counts(data.row_counts(), data.column_counts(), PARAMS.factors)
    model, _ = train(data, user_ids, item_ids, PARAMS, args.train_iterations)
    one, two = Config(1, args.percent), Config(2, args.percent)
    runs: dict[str, list[dict]] = {one.label: [], two.label: []}
    broker = local_noida() if args.broker == "noida" else local_kafka()
    with local_redis() as redis_url, broker as bootstrap:
        client = redis.Redis.from_url(redis_url)
        before = int(client.info("memory")["used_memory"])
        started = time.monotonic()
        load_state(ModelState(client, NAMESPACE), model, data, np.full(data.nnz, 1e9), shards=16)
        load_s = time.monotonic() - started
        used = int(client.info("memory")["used_memory"]) - before
        families = _memory(client, NAMESPACE, data.nnz)["bytes"]
        order = np.random.default_rng(0).permutation(data.nnz)
        # A fresh model's first owner publishes every factor once (docs/serving.md): done
        # here, before the runs, so that each run measures what the service does steadily.
        _run(one, f"{name}-warm", bootstrap, redis_url, data, user_ids, item_ids,
             order[: args.warm_up], None)  # fmt: skip
        cursor = args.warm_up
        for repeat in range(args.repeats):
            for config in (one, two):
                pairs = order[cursor : cursor + args.burst]
                cursor += args.burst
                work = _redis_work(client)
                run = _run(config, f"{name}-r{repeat}-{config.label}", bootstrap, redis_url,
                           data, user_ids, item_ids, pairs, None, args.profile)  # fmt: skip
                after = _redis_work(client)
                events = run["deletions"] + run["interactions"]
                run["redis_calls_per_event"] = (after[0] - work[0]) / events
                run["redis_core_s_per_event"] = (after[1] - work[1]) / events
                runs[config.label].append(run)
                print(name, config.label, round(run["events_per_s"], 1), flush=True)
        trail = _memory(client, NAMESPACE, data.nnz)["bytes"].get("audit trail", 0)
    singles = runs[one.label]
    return {
        "name": name,
        "shape": shape.__dict__,
        "load_s": load_s,
        "redis_families": families,
        "runs": runs,
        "measured": {
            "events_per_s_1": median([r["events_per_s"] for r in singles]),
            "events_per_s_2": median([r["events_per_s"] for r in runs[two.label]]),
            "peak_rss_bytes": median([max(r["peak_rss_bytes"]) for r in singles]),
            "redis_used_bytes": used,
            "redis_calls_per_event": median([r["redis_calls_per_event"] for r in singles]),
            "redis_core_s_per_event": median([r["redis_core_s_per_event"] for r in singles]),
            "trail_bytes_per_deletion": trail / cursor,
        },
    }


def _redis_work(client: redis.Redis) -> tuple[int, float]:
    """Commands the server ran so far, and its CPU seconds."""
    calls = sum(int(v["calls"]) for v in client.info("commandstats").values())
    cpu = client.info("cpu")
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def fit(sizes: list[dict], args) -> Coefficients:
    """Least squares across the sizes (a cost that cannot be negative is held at zero)."""
    shapes = [Shape(**s["shape"]) for s in sizes]
    measured = [s["measured"] for s in sizes]
    quota = args.percent / 100
    cost = [quota / m["events_per_s_1"] for m in measured]
    core_s_per_event, core_s_per_work = _line([s.work for s in shapes], cost)
    runtime, per_factor_byte = _line([s.factor_bytes for s in shapes],
                                     [m["peak_rss_bytes"] for m in measured])  # fmt: skip
    families = [s["redis_families"] for s in sizes]
    pairs = list(zip(families, shapes, strict=True))
    per_row = [(f.get("ids", 0) + f.get("other", 0)) / s.rows for f, s in pairs]
    factor_overhead = [f.get("factors", 0) / s.factor_bytes for f, s in pairs]
    return Coefficients(
        core_s_per_event=core_s_per_event,
        core_s_per_work=core_s_per_work,
        efficiency={2: median([m["events_per_s_2"] / (2 * m["events_per_s_1"]) for m in measured])},
        runtime_bytes=runtime,
        rss_per_factor_byte=per_factor_byte,
        redis_bytes_per_interaction=median([f.get("rows", 0) / s.interactions for f, s in pairs]),
        redis_bytes_per_row=median(per_row),
        redis_bytes_per_factor_byte=median(factor_overhead),
        redis_trail_bytes_per_deletion=median([m["trail_bytes_per_deletion"] for m in measured]),
        redis_calls_per_event=median([m["redis_calls_per_event"] for m in measured]),
        redis_core_s_per_event=median([m["redis_core_s_per_event"] for m in measured]),
        source={},
    )


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """y = a + b x by least squares, both >= 0 (one point, or a negative fit: one of them)."""
    x_, y_ = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x_) >= 2 and np.ptp(x_) > 0:
        b, a = np.polyfit(x_, y_, 1)
        if a >= 0 and b >= 0:
            return float(a), float(b)
        if a < 0:  # through the origin
            return 0.0, float((x_ @ y_) / (x_ @ x_))
    return float(y_.mean()), 0.0


def predicted(size: dict, coefficients: Coefficients, percent: int) -> dict:
    """What the plan says of this size (one instance at the benchmark's quota)."""
    shape = Shape(**size["shape"])
    one = plan(shape, Demand(0.0, 0.0), coefficients, cpu_per_instance=percent / 100,
               utilisation=1.0)  # fmt: skip
    return {
        "events_per_s_1": one.events_per_s_capacity,
        "events_per_s_2": 2 * one.events_per_s_capacity * coefficients.efficiency_of(2),
        "peak_rss_bytes": one.memory_per_instance_bytes,
        "redis_used_bytes": one.redis_memory_bytes,
    }


def _source(sizes: list[dict], args) -> dict:
    options = {"sizes": args.sizes, "burst": args.burst, "percent": args.percent,
               "repeats": args.repeats, "train-iterations": args.train_iterations,
               "broker": args.broker, "warm-up": args.warm_up}  # fmt: skip
    keep = ("name", "shape", "measured", "predicted")
    return {
        "command": "python -m benchmarks.capacity "
        + " ".join(f"--{k} {v}" for k, v in options.items()),
        "machine": machine(),
        "sizes": [{k: s[k] for k in keep} for s in sizes],
    }


if __name__ == "__main__":
    main()
