"""Where the settle rule stops depends on the batching; the quiet take-up does not.

usage: python -m benchmarks.quiet_takeup [--slices 0,5,20,80] [--batch 500]

The service's acceptance check on MovieLens-100K (tests/service/test_ml100k_e2e.py: k = 32,
regularisation 1, 20 sweeps, 10 % of the pairs held out; 5 % of the training pairs and
20 whole users deleted), run through the service's own engine and forgetting cycle without
Kafka: the deletions arrive in batches of `--batch`, and between two batches the cycle
gets `--slices` slices (what the service fits between batches depends on the broker, the
machine and the load). After the last batch the cycle runs as while events arrive (the
settle rule may end it), then as once the input is quiet (the take-up, on to rest or the
cap). Each model is judged against three retrains as the acceptance check judges it:
recall@20 of the held-out pairs against the retrains' range widened by 0.0053.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import redis
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, machine, require, write_json
from consumer.consolidation.worker import Consolidator
from consumer.embedded import local_redis
from consumer.engine import Engine
from consumer.events import Deletion, Source
from consumer.state.bootstrap import export, load
from consumer.state.store import ModelState
from consumer.tsv import read_interactions
from unlearn_core import Change, Hyperparameters, train
from unlearn_core.ids import IdIndex
from unlearn_core.retrain_check import (
    compare_with_retraining,
    random_pair_deletions,
    random_user_deletions,
    split_held_out,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="0,5,20,80")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quiet_takeup.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    rows = read_interactions(require(DATA_DIR / "ml-100k" / "u.data"), "implicit")
    users, items = IdIndex(), IdIndex()
    u, i = users.add(rows.users), items.add(rows.items)
    data, held_out = split_held_out(u, i, rows.weights, (len(users), len(items)), "implicit")
    params = Hyperparameters("implicit", factors=32, regularization=1.0, alpha=1.0)
    model, _ = train(data, users.ids, items.ids, params, 20, seed=0)
    pairs = random_pair_deletions(data, 0.05, seed=1)
    whole = random_user_deletions(data, 20, seed=2)
    first = len(pairs.remove_pair_users)  # the users' requests follow the pairs' offsets
    events = [
        Deletion(users.ids[a], items.ids[b], 2e9, f"p{n}", Source("deletions", 0, n))
        for n, (a, b) in enumerate(zip(pairs.remove_pair_users, pairs.remove_pair_items,
                                       strict=True))
    ] + [
        Deletion(users.ids[a], None, 2e9, f"u{n}", Source("deletions", 0, first + n))
        for n, a in enumerate(whole.remove_users)
    ]  # fmt: skip
    deletions = Change.deletions(
        pairs.remove_pair_users, pairs.remove_pair_items, users=whole.remove_users
    )
    judged = {}
    cases = []
    for slices in [int(s) for s in args.slices.split(",")]:
        case = {"slices_between_batches": slices, "batch": args.batch}
        with local_redis() as url:
            state = ModelState(redis.Redis.from_url(url), "quiet")
            load(state, model, data, np.full(data.nnz, 1e9), shards=8, replace=True)
            engine = Engine(state)
            consolidator = Consolidator()
            consolidator.attach(engine)
            started = time.perf_counter()
            for start in range(0, len(events), args.batch):
                out = engine.process([], events[start : start + args.batch])
                # As the service hands a durable batch to its cycle (pipeline/consolidating.py).
                consolidator.committed({
                    side: np.concatenate(rows) if rows else np.empty(0, np.int64)
                    for side, rows in out.solved.items()
                })  # fmt: skip
                for forgetting in out.forgetting:
                    consolidator.seed(forgetting)
                for _ in range(slices):
                    if consolidator.cycle.resting:
                        break
                    consolidator.step()
            busy = consolidator.rest()  # as while events arrive
            case["busy"] = {**busy, "seconds": time.perf_counter() - started}
            judged = _judged(model, data, deletions, held_out, export(state)[0])
            case["busy"].update(recall_at_20=judged["recall"], checks=judged["checks"])
            started = time.perf_counter()
            quiet = consolidator.rest(quiet=True) if consolidator.unfinished else None
            if quiet is not None:
                case["quiet"] = {**quiet, "seconds": time.perf_counter() - started}
                judged = _judged(model, data, deletions, held_out, export(state)[0])
                case["quiet"].update(recall_at_20=judged["recall"], checks=judged["checks"])
        cases.append(case)
        print(case)
    write_json(args.out, {
        "machine": machine(), "cases": cases, "retrained_recall_at_20": judged["retrained"],
        "original_recall_at_20": judged["original"],
        "bound": min(judged["retrained"]) - 0.0053,
    })  # fmt: skip


def _judged(model, data, deletions, held_out, unlearned) -> dict:
    result = compare_with_retraining(model, data, deletions, held_out, 20, unlearned=unlearned)
    d = result.to_dict()
    return {
        "recall": d["unlearned"]["recall_at_20"],
        "retrained": [r["recall_at_20"] for r in d["retrained"]],
        "original": d["original"]["recall_at_20"],
        "passed": result.passed,
        "checks": result.checks,
    }


if __name__ == "__main__":
    main()
