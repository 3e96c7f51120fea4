"""Redis memory of a loaded model at MovieLens-1M scale (k = 64), measured on a real server.

Loads the ML-1M pairs and a model into a fresh redis-server and reads MEMORY USAGE of every
key of the namespace: bytes per stored interaction (both directions), per factor, and the
server's total growth.

usage: python -m benchmarks.redis_memory [--shards 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import redis
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, require, write_json
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from tests.servers import redis_server
from unlearn_core import Hyperparameters, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/redis_memory.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    data, user_ids, item_ids = load(require(args.pairs), "implicit")
    params = Hyperparameters("implicit", factors=64, regularization=1.0, alpha=1.0)
    model, _ = train(data, user_ids, item_ids, params, 3)
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        before = int(client.info("memory")["used_memory"])
        state = ModelState(client, "bench")
        load_state(state, model, data, np.full(data.nnz, 1e9), args.shards)
        after = int(client.info("memory")["used_memory"])
        usage: dict[str, int] = {}
        for key in client.scan_iter(match=state.layout.scan_pattern(), count=1000):
            name = key.decode()
            suffix = name.rsplit(":", 1)[1] if name.count("}") == 1 else name
            usage[suffix] = usage.get(suffix, 0) + int(client.memory_usage(key, samples=0))
    rows = usage.get("ur", 0) + usage.get("ir", 0)
    factors = usage.get("uf", 0) + usage.get("if", 0)
    ids = sum(v for k, v in usage.items() if k in ("uid", "iid", "uix", "iix"))
    n_rows = data.shape[0] + data.shape[1]
    result = {
        "interactions": data.nnz,
        "users": data.shape[0],
        "items": data.shape[1],
        "shards": args.shards,
        "bytes_by_key": usage,
        "interaction_bytes_per_interaction": rows / data.nnz,
        "factor_bytes_per_factor": factors / n_rows,
        "id_map_bytes_per_id": ids / n_rows,
        "server_growth_bytes_per_interaction": (after - before) / data.nnz,
    }
    for key, value in result.items():
        print(f"{key:40s} {value}")
    write_json(args.out, {"machine": machine(), "data": str(args.pairs), **result})


if __name__ == "__main__":
    main()
