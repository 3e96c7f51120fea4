"""A retrained model swapped into a running service (`unlearn load --swap`), under load.

usage: python -m benchmarks.swap [--deletions-per-s 100] [--interactions-per-s 100]
           [--before-s 15] [--after-s 15] [--out benchmarks/results/swap.json]

MovieLens-1M (k = 64) trained here and loaded into a namespace; `unlearn run` in its own
process on a local broker (noida) and redis-server; a producer sends deletions of stored
pairs and new interactions at a steady rate throughout, a reader times each receipt (from
the deletion's own time to the receipt's arrival). After --before-s, the loader (this
process) swaps in a model retrained from the same snapshot with another seed, step by
step: prepare, reconcile, stage, catch-up rounds, hold and promote. Per window (before,
while building, while held, after): receipts and their latency; the swap's own figures
(dropped as forgotten, carried over, held seconds); and afterwards that no deleted pair is
stored and every deletion was acknowledged.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import redis
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, require, write_json
from benchmarks.e2e_load import PARAMS, PARTITIONS, _ready, create_topics, start_service
from consumer.cli.swapping import CATCH_UP_ROUNDS
from consumer.embedded import free_port, local_noida, local_redis, wait_until
from consumer.state.bootstrap import load as load_state
from consumer.state.inspection import stored_interactions
from consumer.state.store import ModelState
from consumer.state.swap import Swap
from unlearn_core import train

SNAPSHOT = 1_000_000_000.0  # the snapshot's time: every loaded interaction is this old


class Load:
    """Deletions and interactions at a steady rate; each receipt's arrival and latency."""

    def __init__(self, bootstrap: str, data, user_ids, item_ids, rates: tuple[float, float]):
        self.bootstrap, self.data, self.rates = bootstrap, data, rates
        self.user_ids, self.item_ids = user_ids, item_ids
        self.order = np.random.default_rng(0).permutation(data.nnz)
        self.deleted: list[tuple[str, str]] = []
        self.sent_at: list[float] = []
        self.receipts: list[tuple[float, float]] = []  # (arrival, latency s)
        self.answered: set[tuple[str, str]] = set()
        self._sending, self._reading = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._send, self._read)]

    def start(self) -> None:
        self._threads[1].start()
        time.sleep(1.0)  # the receipts reader is positioned before anything is sent
        self._threads[0].start()

    def stop(self, drain_s: float = 120) -> None:
        """Stop sending; read receipts until every deletion has one (or `drain_s`)."""
        self._sending.set()
        self._threads[0].join(timeout=30)
        deadline = time.monotonic() + drain_s
        while len(self.unanswered()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._reading.set()
        self._threads[1].join(timeout=30)

    def unanswered(self) -> list[int]:
        """The deletions (by position) no receipt has answered."""
        return [n for n, pair in enumerate(self.deleted) if pair not in self.answered]

    def _send(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1})
        rng = np.random.default_rng(1)
        n_items, started, sent = self.data.shape[1], time.monotonic(), [0, 0]
        while not self._sending.is_set():
            elapsed = time.monotonic() - started
            for kind, rate in enumerate(self.rates):
                for _ in range(int(elapsed * rate) - sent[kind]):
                    if kind == 0:
                        key = int(self.data.entry_keys[self.order[sent[0]]])
                        user, item = self.user_ids[key // n_items], self.item_ids[key % n_items]
                        self.deleted.append((user, item))
                        self.sent_at.append(time.time())
                        topic = "deletions"
                    else:
                        user = self.user_ids[int(rng.integers(len(self.user_ids)))]
                        item = self.item_ids[int(rng.integers(n_items))]
                        topic = "interactions"
                    value = json.dumps({"user": user, "item": item, "ts": time.time()})
                    producer.produce(topic, key=user, value=value)
                    sent[kind] += 1
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)

    def _read(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"swap-{time.time()}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
        consumer.assign([TopicPartition("unlearn-receipts", p, OFFSET_END)
                         for p in range(PARTITIONS)])  # fmt: skip
        while not self._reading.is_set():
            for message in consumer.consume(num_messages=1000, timeout=0.05):
                if message.error() is None:
                    now = time.time()
                    receipt = json.loads(message.value())
                    self.receipts.append((now, now - receipt["event_ts"]))
                    self.answered.add((receipt["user"], receipt["item"]))
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--deletions-per-s", type=float, default=100)
    parser.add_argument("--interactions-per-s", type=float, default=100)
    parser.add_argument("--before-s", type=float, default=15)
    parser.add_argument("--after-s", type=float, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/swap.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    data, user_ids, item_ids = load(require(args.pairs), "implicit")
    model, _ = train(data, user_ids, item_ids, PARAMS, 15, seed=0)
    retrained, _ = train(data, user_ids, item_ids, PARAMS, 15, seed=1)
    stamps = np.full(data.nnz, SNAPSHOT - 1)
    with local_redis(appendonly=True) as redis_url, local_noida() as bootstrap:
        create_topics(bootstrap)
        state = ModelState(redis.Redis.from_url(redis_url), "bench")
        load_state(state, model, data, stamps, shards=16)
        port = free_port()
        service = start_service(bootstrap, redis_url, "bench", port, "0")
        try:
            wait_until(lambda: _ready(port), "the service", timeout=600)
            time.sleep(8)  # group join
            rates = (args.deletions_per_s, args.interactions_per_s)
            traffic = Load(bootstrap, data, user_ids, item_ids, rates)
            traffic.start()
            time.sleep(args.before_s)
            steps, swap_report = _swap(state, retrained, data, stamps)
            time.sleep(args.after_s)
            traffic.stop()
        finally:
            service.terminate()
            service.wait(timeout=120)
        stored = {(u, i) for u, i, *_ in stored_interactions(state)}
    still = sum(1 for pair in traffic.deleted if pair in stored)
    result = {
        "machine": machine(),
        "command": "python -m benchmarks.swap " + " ".join(sys.argv[1:]),
        "data": f"{args.pairs.parent.name}/{args.pairs.name}",
        "shape": {"users": data.shape[0], "items": data.shape[1], "interactions": data.nnz},
        "params": vars(PARAMS),
        "rates": {
            "deletions_per_s": args.deletions_per_s,
            "interactions_per_s": args.interactions_per_s,
        },
        "swap": swap_report,
        "windows": _windows(traffic.receipts, steps),
        "deletions_sent": len(traffic.deleted),
        "receipts": len(traffic.receipts),
        "deleted_pairs_stored_after": still,
        # Deletions never answered, each by when it was sent relative to the swap's start.
        "unanswered_sent_at_s": [traffic.sent_at[n] - steps["start"] for n in traffic.unanswered()],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    write_json(args.out, result)


def _swap(state: ModelState, model, data, stamps) -> tuple[dict[str, float], dict]:
    """The command's steps (consumer/cli/swapping.py), each timed."""
    steps: dict[str, float] = {"start": time.time()}
    swap = Swap(state)
    green = swap.prepare(model, data, stamps, SNAPSHOT)
    swap.reconcile(green)
    steps["prepared"] = time.time()
    swap.stage(green)
    steps["staged"] = time.time()
    for _ in range(CATCH_UP_ROUNDS):
        if not swap.reconcile(green):
            break
    steps["caught_up"] = time.time()
    swap.promote(green)
    steps["promoted"] = time.time()
    steps["held_from"] = steps["promoted"] - green.held_s
    report = {
        "dropped_as_forgotten": green.dropped,
        "carried_over": green.carried,
        "reconcile_rounds": green.rounds,
        "held_seconds": green.held_s,
        "prepare_seconds": steps["prepared"] - steps["start"],
        "stage_seconds": steps["staged"] - steps["prepared"],
        "catch_up_seconds": steps["caught_up"] - steps["staged"],
        "total_seconds": steps["promoted"] - steps["start"],
    }
    return steps, report


def _windows(receipts: list[tuple[float, float]], steps: dict[str, float]) -> dict[str, dict]:
    """Receipts by when they arrived: before the swap, while it built, while it held the
    shards (and the seconds after, while the service took them back), after."""
    bounds = {
        "before": (float("-inf"), steps["start"]),
        "building": (steps["start"], steps["held_from"]),
        "held and resuming": (steps["held_from"], steps["promoted"] + 2.0),
        "after": (steps["promoted"] + 2.0, float("inf")),
    }
    out = {}
    for name, (low, high) in bounds.items():
        latencies = np.array([lat for at, lat in receipts if low <= at < high]) * 1e3
        out[name] = {
            "receipts": len(latencies),
            **({f"p{q}_ms": float(np.percentile(latencies, q)) for q in (50, 99)}
               if len(latencies) else {}),
            "max_ms": float(latencies.max()) if len(latencies) else None,
        }  # fmt: skip
    return out


if __name__ == "__main__":
    main()
