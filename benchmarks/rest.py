"""A service that comes to rest: what `unlearn run` does with no input, after a few
deletions, after a burst, and how well the hardest forgetting case comes out.

usage: python -m benchmarks.rest [--idle-seconds 300] [--after-rest-seconds 60]
           [--parts idle,events,burst,hardest]

Each model is loaded into a fresh namespace of a local redis-server, with noida-db as the
broker and `unlearn run` in its own process at its defaults. Redis figures are the
server's own counters (INFO stats: bytes and commands it received); CPU is the service
process's; factor records are the factors topic's watermarks.

- idle: three models (MovieLens-100K trained with `unlearn train`'s defaults; the same
  data fitted by `implicit` and imported; MovieLens-1M trained), no event for
  --idle-seconds after the service took its shards and published the load's own records:
  sweeps, records, Redis input per minute, commands per second, CPU share.
- events (MovieLens-100K, on the idle run's service): 20 pair deletions and 40
  interactions at once; time until the receipts are in and consolidation rests, Redis
  input from the events until rest and per minute after, factor records per row that
  moved more than the write tolerance.
- burst (MovieLens-1M, on its idle run's service): 1,000 pair deletions at once; time to
  rest, rows re-solved per deleted pair.
- hardest: 5 % of MovieLens-100K's training pairs at once (k = 64, regularisation 0.01,
  alpha 1, 10 % of the pairs held out) through the service, and offline with `forget`,
  against three 15-iteration retrains: deleted pairs' mean score, membership attack
  (deleted vs held-out pairs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import implicit
import numpy as np
import redis
import scipy.sparse as sp
from confluent_kafka import Consumer, Producer, TopicPartition
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, require, write_json
from benchmarks.e2e_load import _cpu_seconds, _ready, create_topics, start_service
from consumer.embedded import free_port, local_kafka, local_noida, local_redis, wait_until
from consumer.importers import from_implicit
from consumer.state.bootstrap import export
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import Hyperparameters, Interactions, SweepPolicy, forget, train
from unlearn_core.evaluation import membership_attack_auc
from unlearn_core.interactions import apply_change
from unlearn_core.model import FactorModel, pair_scores
from unlearn_core.retrain_check import random_pair_deletions, split_held_out

ML100K = DATA_DIR / "ml-100k" / "u.data"
ML1M = DATA_DIR / "ml-1m" / "pairs.tsv"
DEFAULTS = Hyperparameters("implicit", 64, 1.0, 1.0)  # `unlearn train`'s
WRITE_TOLERANCE = 1e-4  # the service's default consolidate_write_tolerance
STAMP = 1e9  # the interactions' time in the loaded model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--after-rest-seconds", type=float, default=60)
    parser.add_argument("--parts", default="idle,events,burst,hardest")
    parser.add_argument("--broker", choices=("noida", "tansu"), default="noida")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rest.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    parts = set(args.parts.split(","))
    out: dict = {"machine": machine(), "idle_seconds": args.idle_seconds, "broker": args.broker}
    ml100k, users100k, items100k = load(require(ML100K), "implicit")
    if parts & {"idle", "events"}:
        model, _ = train(ml100k, users100k, items100k, DEFAULTS, 15, seed=0)
        out["ml100k_train"] = _run(model, ml100k, args, "ml100k-train",
                                   _events if "events" in parts else None)  # fmt: skip
        print(json.dumps(out["ml100k_train"], indent=1))
    if "idle" in parts:
        model, data = _implicit_model(ml100k, users100k, items100k)
        out["ml100k_implicit"] = _run(model, data, args, "ml100k-implicit", None)
        print(json.dumps(out["ml100k_implicit"], indent=1))
    if parts & {"idle", "burst"}:
        ml1m, users1m, items1m = load(require(ML1M), "implicit")
        model, _ = train(ml1m, users1m, items1m, DEFAULTS, 15, seed=0)
        out["ml1m_train"] = _run(model, ml1m, args, "ml1m-train",
                                 _burst if "burst" in parts else None)  # fmt: skip
        print(json.dumps(out["ml1m_train"], indent=1))
    if "hardest" in parts:
        out["hardest"] = _hardest(ml100k, users100k, items100k, args)
        print(json.dumps(out["hardest"], indent=1))
    write_json(args.out, out)


# ----- one stack: load, serve, watch ---------------------------------------------------------


class Stack:
    def __init__(self, bootstrap: str, client: redis.Redis, port: int, state: ModelState):
        self.bootstrap, self.client, self.port, self.state = bootstrap, client, port, state

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
        out: dict[str, float] = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                name = name.split("{", 1)[0]
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def redis_counters(self) -> tuple[int, int]:
        stats = self.client.info("stats")
        return int(stats["total_net_input_bytes"]), int(stats["total_commands_processed"])

    def records(self) -> int:
        """Factor records the service handed to the producer (its own counter: Tansu 0.6
        reports watermarks wrong, docs/benchmarks.md)."""
        return int(self.metrics().get("unlearn_factors_published_total", 0))

    def rest(self, cycles_before: float, timeout: float) -> float:
        """Seconds until consolidation rests after at least one more cycle."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            m = self.metrics()
            ended = m.get("unlearn_consolidation_cycles_total", 0) > cycles_before
            if ended and m.get("unlearn_consolidation_settled", 0) == 1:
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError("consolidation did not come to rest")


@contextlib.contextmanager
def serving(
    model: FactorModel, data: Interactions, name: str, broker: str
) -> Iterator[tuple[Stack, int]]:
    """A fresh redis-server and noida-db, the model loaded into 16 shards, `unlearn run`
    in its own process once it owns them and published the load's own records; yields
    the stack and the service's pid."""
    local_broker = local_noida if broker == "noida" else local_kafka
    with local_redis() as redis_url, local_broker() as bootstrap:
        client = redis.Redis.from_url(redis_url)
        state = ModelState(client, name)
        load_state(state, model, data, np.full(data.nnz, STAMP), shards=16)
        create_topics(bootstrap)
        port = free_port()
        log = Path(tempfile.gettempdir()) / f"unlearn-rest-{name}.log"
        service = start_service(bootstrap, redis_url, name, port, "0", log=log)
        stack = Stack(bootstrap, client, port, state)
        try:
            wait_until(lambda: _ready(port), "the service", timeout=600)
            wait_until(lambda: stack.metrics().get("unlearn_shards_owned") == 16, "shards", 120)
            # The load's own records: every row once, when the shards are first taken.
            rows = len(model.user_factors) + len(model.item_factors)
            wait_until(lambda: stack.records() >= rows, "the load's records", timeout=300)
            time.sleep(2.0)
            yield stack, service.pid
        finally:
            service.terminate()
            service.wait(timeout=60)


def _run(model: FactorModel, data: Interactions, args, name: str, after_idle) -> dict:
    """Idle on a fresh stack, then the events, if any."""
    with serving(model, data, name, args.broker) as (stack, pid):
        result = {
            "rows": len(model.user_factors) + len(model.item_factors),
            "load_records": stack.records(),
            "idle": _idle(stack, pid, args.idle_seconds),
        }
        if after_idle is not None:
            result.update(after_idle(stack, pid, model, data, args))
    return result


def _idle(stack: Stack, pid: int, seconds: float) -> dict:
    m0, (in0, cmd0), rec0, cpu0 = stack.metrics(), stack.redis_counters(), stack.records(), \
        _cpu_seconds(pid)  # fmt: skip
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    m1, (in1, cmd1), rec1, cpu1 = stack.metrics(), stack.redis_counters(), stack.records(), \
        _cpu_seconds(pid)  # fmt: skip
    return {
        "seconds": elapsed,
        # A bare librdkafka consumer of the same topics on the same broker, alone, over the
        # same kind of wait: what the client library costs before the service does anything.
        "bare_consumer_cpu_share": _bare_consumer_cpu(stack.bootstrap, min(seconds, 30)),
        "slices": m1.get("unlearn_slices_total", 0) - m0.get("unlearn_slices_total", 0),
        "sweeps": m1.get("unlearn_sweeps_total", 0) - m0.get("unlearn_sweeps_total", 0),
        "cycles": m1.get("unlearn_consolidation_cycles_total", 0)
        - m0.get("unlearn_consolidation_cycles_total", 0),
        "factor_records": rec1 - rec0,
        "redis_input_mb_per_min": (in1 - in0) / 1e6 / (elapsed / 60),
        "redis_commands_per_s": (cmd1 - cmd0) / elapsed,
        "cpu_share_of_a_core": (cpu1 - cpu0) / elapsed,
    }


def _bare_consumer_cpu(bootstrap: str, seconds: float) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{time.time()}",
                         "fetch.wait.max.ms": 100, "session.timeout.ms": 6000})  # fmt: skip
    try:
        consumer.subscribe(["interactions", "deletions"])
        started = time.monotonic()
        while time.monotonic() - started < 8:  # joined, fetching
            consumer.consume(1, 0.1)
        cpu, started = time.process_time(), time.monotonic()
        while time.monotonic() - started < seconds:
            consumer.consume(1, 0.1)
        return (time.process_time() - cpu) / seconds
    finally:
        consumer.close()


def _produce(bootstrap: str, topic: str, messages: list[tuple[str, dict]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in messages:
        producer.produce(topic, key=key, value=json.dumps(value))
    producer.flush(30)


def _receipts(bootstrap: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count"})
    try:
        total = 0
        for p in (
            consumer.list_topics("unlearn-receipts", timeout=10)
            .topics["unlearn-receipts"]
            .partitions
        ):
            low, high = consumer.get_watermark_offsets(
                TopicPartition("unlearn-receipts", p), timeout=10
            )
            total += high - low
        return total
    finally:
        consumer.close()


def _factor_records_by_key(bootstrap: str, since: dict[int, int]) -> dict[str, int]:
    """Records per key on the factors topic after the given offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keys-{time.time()}",
                         "enable.auto.commit": False})  # fmt: skip
    counts: dict[str, int] = {}
    try:
        ends = {}
        for p, start in since.items():
            _, high = consumer.get_watermark_offsets(
                TopicPartition("unlearn-factors", p), timeout=10
            )
            if high > start:
                ends[p] = high
        consumer.assign([TopicPartition("unlearn-factors", p, since[p]) for p in ends])
        done: set[int] = set()
        deadline = time.monotonic() + 120
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error() is not None:
                    continue
                key = message.key().decode()
                counts[key] = counts.get(key, 0) + 1
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
    finally:
        consumer.close()
    return counts


def _offsets(bootstrap: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets"})
    try:
        parts = consumer.list_topics("unlearn-factors", timeout=10).topics["unlearn-factors"]
        return {
            p: consumer.get_watermark_offsets(TopicPartition("unlearn-factors", p), timeout=10)[1]
            for p in parts.partitions
        }
    finally:
        consumer.close()


def _events(stack: Stack, pid: int, model: FactorModel, data: Interactions, args) -> dict:
    """20 pair deletions and 40 interactions at once, on the idle service."""
    rng = np.random.default_rng(7)
    before, _ = export(stack.state)
    offsets = _offsets(stack.bootstrap)
    keys = data.entry_keys[rng.choice(data.nnz, 20, replace=False)]
    now = time.time()
    deletions = [
        (model.user_ids[k // data.shape[1]], {"user": str(model.user_ids[k // data.shape[1]]),
         "item": str(model.item_ids[k % data.shape[1]]), "request_id": f"e{n}"})
        for n, k in enumerate(keys.tolist())
    ]  # fmt: skip
    interactions = [
        (str(model.user_ids[u]), {"user": str(model.user_ids[u]),
         "item": str(model.item_ids[i]), "ts": now})
        for u, i in zip(rng.integers(0, data.shape[0], 40), rng.integers(0, data.shape[1], 40),
                        strict=True)
    ]  # fmt: skip
    cycles = stack.metrics().get("unlearn_consolidation_cycles_total", 0)
    (in0, cmd0), cpu0 = stack.redis_counters(), _cpu_seconds(pid)
    receipts0 = _receipts(stack.bootstrap)
    started = time.monotonic()
    _produce(stack.bootstrap, "interactions", interactions)
    _produce(stack.bootstrap, "deletions", deletions)
    wait_until(lambda: _receipts(stack.bootstrap) >= receipts0 + 20, "receipts", timeout=120)
    receipts_s = time.monotonic() - started
    rest_s = receipts_s + stack.rest(cycles, timeout=600)
    (in1, cmd1), cpu1 = stack.redis_counters(), _cpu_seconds(pid)
    m = stack.metrics()
    time.sleep(args.after_rest_seconds)
    (in2, cmd2) = stack.redis_counters()
    after, _ = export(stack.state)
    counts = _factor_records_by_key(stack.bootstrap, offsets)
    changed = _changed_keys(before, after)
    per_changed = [counts.get(k, 0) for k in changed]
    return {
        "events": {
            "deletions": 20, "interactions": 40,
            "receipts_seconds": receipts_s,
            "rest_seconds": rest_s,
            "redis_input_mb_until_rest": (in1 - in0) / 1e6,
            "redis_commands_until_rest": cmd1 - cmd0,
            "service_cpu_seconds_until_rest": cpu1 - cpu0,
            "redis_input_mb_per_min_after_rest": (in2 - in1) / 1e6 / (args.after_rest_seconds / 60),
            "redis_commands_per_s_after_rest": (cmd2 - cmd1) / args.after_rest_seconds,
            "rows_moved_over_tolerance": len(changed),
            "factor_records": sum(counts.values()),
            "factor_records_per_changed_row_max": max(per_changed, default=0),
            "factor_records_per_changed_row_mean": float(np.mean(per_changed or [0])),
            "records_of_rows_not_changed": sum(v for k, v in counts.items() if k not in changed),
            "reach": m.get("unlearn_consolidation_reach"),
            "rows_solved": m.get("unlearn_consolidation_rows_solved_total"),
        }
    }  # fmt: skip


def _changed_keys(before: FactorModel, after: FactorModel) -> set[str]:
    """Keys of rows that moved more than the write tolerance (new rows included)."""
    out = set()
    for side, old, new, ids in (
        ("user", before.user_factors, after.user_factors, after.user_ids),
        ("item", before.item_factors, after.item_factors, after.item_ids),
    ):
        n = len(old)
        scale = np.maximum(np.linalg.norm(old, axis=1), 1e-30)
        moved = np.linalg.norm(new[:n] - old, axis=1) / scale
        out |= {f"{side}:{ids[r]}" for r in np.flatnonzero(moved > WRITE_TOLERANCE)}
        out |= {f"{side}:{ids[r]}" for r in range(n, len(new))}
    return out


def _burst(stack: Stack, pid: int, model: FactorModel, data: Interactions, args) -> dict:
    """1,000 pair deletions at once."""
    rng = np.random.default_rng(11)
    keys = data.entry_keys[rng.choice(data.nnz, 1000, replace=False)]
    deletions = [
        (str(model.user_ids[k // data.shape[1]]), {"user": str(model.user_ids[k // data.shape[1]]),
         "item": str(model.item_ids[k % data.shape[1]]), "request_id": f"b{n}"})
        for n, k in enumerate(keys.tolist())
    ]  # fmt: skip
    m0 = stack.metrics()
    (in0, _), cpu0 = stack.redis_counters(), _cpu_seconds(pid)
    receipts0 = _receipts(stack.bootstrap)
    started = time.monotonic()
    _produce(stack.bootstrap, "deletions", deletions)
    wait_until(lambda: _receipts(stack.bootstrap) >= receipts0 + 1000, "receipts", timeout=300)
    receipts_s = time.monotonic() - started
    rest_s = receipts_s + stack.rest(m0.get("unlearn_consolidation_cycles_total", 0), 600)
    (in1, _), cpu1 = stack.redis_counters(), _cpu_seconds(pid)
    m1 = stack.metrics()
    solved = m1.get("unlearn_consolidation_rows_solved_total", 0) - m0.get(
        "unlearn_consolidation_rows_solved_total", 0
    )
    return {
        "burst": {
            "deletions": 1000,
            "receipts_seconds": receipts_s,
            "rest_seconds": rest_s,
            "cycles": m1.get("unlearn_consolidation_cycles_total", 0)
            - m0.get("unlearn_consolidation_cycles_total", 0),
            "rows_solved": solved,
            "rows_solved_per_deletion": solved / 1000,
            "rows_written": m1.get("unlearn_consolidation_rows_written_total", 0)
            - m0.get("unlearn_consolidation_rows_written_total", 0),
            "redis_input_mb_until_rest": (in1 - in0) / 1e6,
            "service_cpu_seconds_until_rest": cpu1 - cpu0,
        }
    }


# ----- model sources --------------------------------------------------------------------------


def _implicit_model(data: Interactions, users, items) -> tuple[FactorModel, Interactions]:
    """The same data, binary, fitted by `implicit` (15 iterations) and imported."""
    binary = data.by_user.copy()
    binary.data[:] = 1.0
    fit = implicit.cpu.als.AlternatingLeastSquares(
        factors=64, regularization=1.0, alpha=2.0, iterations=15, random_state=0
    )
    fit.fit(sp.csr_matrix(binary), show_progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "implicit.npz"
        fit.save(str(path))
        model = from_implicit(path, None, None)
    model = FactorModel.create(users, items, model.user_factors, model.item_factors, model.params)
    return model, Interactions(sp.csr_array(binary))


# ----- the hardest case -----------------------------------------------------------------------


def _hardest(data: Interactions, users, items, args) -> dict:
    rows = sp.coo_array(data.by_user)
    train_data, held = split_held_out(rows.row, rows.col, rows.data, data.shape, "implicit")
    params = Hyperparameters("implicit", 64, 0.01, 1.0)
    model, _ = train(train_data, users, items, params, 15, seed=0)
    deletions = random_pair_deletions(train_data, 0.05, seed=1)
    remaining, summary = apply_change(train_data, deletions, "implicit")
    du, di = summary.changed_users, summary.changed_items
    alive = remaining.row_counts()[held.users] > 0
    hu, hi = held.users[alive], held.items[alive]

    def card(m: FactorModel) -> dict:
        x, y = m.user_factors, m.item_factors
        return {"deleted_mean_score": float(pair_scores(x, y, du, di).mean()),
                "attack_auc": float(membership_attack_auc(x, y, du, di, hu, hi))}  # fmt: skip

    retrains = [card(train(remaining, users, items, params, 15, seed=s)[0]) for s in (0, 1, 2)]
    started = time.perf_counter()
    offline, _, report = forget(model, train_data, deletions, SweepPolicy(track_loss=False))
    offline_s = time.perf_counter() - started
    service, service_figures = _hardest_in_service(model, train_data, du, di, args.broker)
    scores = [r["deleted_mean_score"] for r in retrains]
    attack = float(np.mean([r["attack_auc"] for r in retrains]))

    def judged(c: dict) -> dict:
        score = c["deleted_mean_score"]
        return {
            **c,
            "score_within": min(scores) - 0.005 <= score <= max(scores) + 0.005,
            "attack_within": abs(c["attack_auc"] - attack) <= 0.01,
        }

    return {
        "removed": int(summary.removed),
        "retrains": retrains,
        "retrain_range": [min(scores), max(scores)],
        "retrain_attack_mean": attack,
        "offline": {**judged(card(offline)), "sweeps": report.sweeps, "seconds": offline_s},
        "service": {**judged(card(service)), **service_figures},
    }


def _hardest_in_service(model, data, du, di, broker: str) -> tuple[FactorModel, dict]:
    with serving(model, data, "hardest", broker) as (stack, _):
        messages = [
            (str(model.user_ids[u]), {"user": str(model.user_ids[u]),
             "item": str(model.item_ids[i]), "request_id": f"h{n}"})
            for n, (u, i) in enumerate(zip(du.tolist(), di.tolist(), strict=True))
        ]  # fmt: skip
        started = time.monotonic()
        _produce(stack.bootstrap, "deletions", messages)
        wait_until(lambda: _receipts(stack.bootstrap) >= len(messages), "receipts", timeout=600)
        rest_s = time.monotonic() - started + stack.rest(0, timeout=1800)
        m = stack.metrics()
        forgotten, _ = export(stack.state)
    return forgotten, {
        "rest_seconds": rest_s,
        "cycles": m.get("unlearn_consolidation_cycles_total"),
        "rows_solved": m.get("unlearn_consolidation_rows_solved_total"),
    }


if __name__ == "__main__":
    main()
