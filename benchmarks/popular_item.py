"""Re-solving a popular item: what reading its users' factors from Redis would cost, next
to what the engine does (its in-memory replica, kept current from the shards' change logs).

An item with U users (default 100,000) at k=64 on a real redis-server, side by side in one
run, medians of --rounds:
- read: HMGET of the U user factors from Redis (one pipelined round trip per shard);
- solve: the exact re-solve of that item from the replica (gather, k x k system, Cholesky);
- refresh: what another instance pays to catch up after a batch that touched B users and
  an item (each shard's change log + those factors).

usage: python -m benchmarks.popular_item [--users 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import redis
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from benchmarks._common import machine, median, write_json
from consumer.embedded import local_redis
from consumer.shards.replica import Replica
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState
from unlearn_core import Hyperparameters
from unlearn_core.solve import solve_rows

PARAMS = Hyperparameters("implicit", factors=64, regularization=1.0, alpha=1.0)
SHARDS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch-users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/popular_item.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    rng = np.random.default_rng(0)
    users = rng.normal(0, 0.1, (args.users, PARAMS.factors)).astype(np.float32)
    item_row = sp.csr_array(
        (np.ones(args.users), np.arange(args.users), np.array([0, args.users])),
        shape=(1, args.users),
    )
    gram = users.astype(np.float64).T @ users.astype(np.float64)
    timings: dict[str, list[float]] = {"read": [], "solve": [], "refresh": []}
    with local_redis() as url:
        client = redis.Redis.from_url(url)
        state = ModelState(client, "popular")
        _store_users(state, users)
        reader = ModelState(redis.Redis.from_url(url), "popular")
        for _ in range(args.rounds):
            started = time.perf_counter()
            state.read_factors("user", np.arange(args.users), SHARDS, PARAMS.factors)
            timings["read"].append(time.perf_counter() - started)

            started = time.perf_counter()
            solve_rows(item_row, np.array([0]), users, PARAMS, gram)
            timings["solve"].append(time.perf_counter() - started)

            replica = _replica_of(reader, users)
            changed = rng.choice(args.users, args.batch_users, replace=False)
            _commit_change(state, users, changed)
            started = time.perf_counter()
            replica.refresh()
            timings["refresh"].append(time.perf_counter() - started)
        memory = int(client.info("memory")["used_memory"])
    medians = {name: median(values) for name, values in timings.items()}
    write_json(
        args.out,
        {
            "machine": machine(),
            "users_of_item": args.users,
            "factors": PARAMS.factors,
            "batch_users": args.batch_users,
            "rounds": args.rounds,
            "seconds": timings,
            "medians": medians,
            "read_over_solve": medians["read"] / medians["solve"],
            "redis_used_memory": memory,
        },
    )
    print({k: f"{v * 1e3:.1f} ms" for k, v in medians.items()})


def _store_users(state: ModelState, users: np.ndarray) -> None:
    state.write_meta(PARAMS, SHARDS, replace=True)
    state.allocate("user", [f"u{n}" for n in range(len(users))])
    state.allocate("item", ["popular"])
    for shard in range(SHARDS):
        rows = np.arange(shard, len(users), SHARDS)
        for start in range(0, len(rows), 5000):
            write = ShardWrite()
            write.factors["user"] = {int(n): users[n] for n in rows[start : start + 5000]}
            state.log.commit({shard: write}, {shard: None})


def _commit_change(state: ModelState, users: np.ndarray, changed: np.ndarray) -> None:
    """A batch on another instance: new factors for `changed` users and for the item, each
    shard's change log getting its entry."""
    writes: dict[int, ShardWrite] = {}
    for n in changed.tolist():
        users[n] = users[n] * 0.99
        writes.setdefault(n % SHARDS, ShardWrite()).factors["user"][n] = users[n]
    writes.setdefault(0, ShardWrite()).factors["item"][0] = np.ones(PARAMS.factors, np.float32)
    state.log.commit(writes, dict.fromkeys(writes))


def _replica_of(state: ModelState, users: np.ndarray) -> Replica:
    """A replica as current as Redis now (built without reading everything)."""
    replica = Replica(state, state.meta())
    replica.factors["user"] = users.copy()
    replica.gramians.reset(replica.factors)
    replica.known = state.log.read_generations(range(SHARDS))
    return replica


if __name__ == "__main__":
    main()
