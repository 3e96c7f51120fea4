"""Where a batch's time goes: the engine on the ML-1M model (k = 64) against a real
redis-server, batches shaped like the end-to-end benchmark's, under cProfile.

Prints the phase medians (read / solve / write, as the service's histogram reports them)
and the functions with the most cumulative time; writes both as JSON.

usage: python -m benchmarks.profile_engine [--deletions 20] [--interactions 20] [--batches 200]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np
import redis
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, median, require, write_json
from consumer.embedded import local_redis
from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import Hyperparameters, train

PARAMS = Hyperparameters("implicit", factors=64, regularization=1.0, alpha=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--deletions", type=int, default=20)
    parser.add_argument("--interactions", type=int, default=20)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profile_engine.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    data, user_ids, item_ids = load(require(args.pairs), "implicit")
    model, _ = train(data, user_ids, item_ids, PARAMS, 3)
    rng = np.random.default_rng(0)
    order = rng.permutation(data.nnz)
    n_items = data.shape[1]
    with local_redis() as url:
        state = ModelState(redis.Redis.from_url(url), "profile")
        load_state(state, model, data, np.full(data.nnz, 1e9), shards=16)
        engine = Engine(state)
        batches = []
        cursor = offset = 0
        for _ in range(args.batches):
            deletions, interactions = [], []
            for _ in range(args.deletions):
                u, i = divmod(int(data.entry_keys[order[cursor]]), n_items)
                cursor += 1
                deletions.append(Deletion(user_ids[u], item_ids[i], 2e9, None,
                                          Source("deletions", 0, offset)))  # fmt: skip
                offset += 1
            for _ in range(args.interactions):
                u, i = int(rng.integers(len(user_ids))), int(rng.integers(n_items))
                interactions.append(Interaction(user_ids[u], item_ids[i], 1.0, 2.1e9,
                                                Source("interactions", 0, offset)))  # fmt: skip
                offset += 1
            batches.append((interactions, deletions))
        phases: dict[str, list[float]] = {"read": [], "solve": [], "write": [], "total": []}
        profiler = cProfile.Profile()
        for interactions, deletions in batches:
            started = time.perf_counter()
            profiler.enable()
            outcome = engine.process(interactions, deletions)
            profiler.disable()
            phases["total"].append(time.perf_counter() - started)
            for name in ("read", "solve", "write"):
                phases[name].append(outcome.phases[name])
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
    stats.print_stats(30)
    medians_ms = {name: median(values) * 1e3 for name, values in phases.items()}
    top = [
        {"function": f"{path.rsplit('/', 1)[-1]}:{line}({name})", "calls": calls,
         "cumulative_ms_per_batch": cumulative * 1e3 / args.batches}
        for (path, line, name), (_, calls, _, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]  # fmt: skip
    top.sort(key=lambda row: -row["cumulative_ms_per_batch"])
    write_json(
        args.out,
        {
            "machine": machine(),
            "batch": {"deletions": args.deletions, "interactions": args.interactions},
            "batches": args.batches,
            "phase_medians_ms": medians_ms,
            "top_cumulative": top[:40],
        },
    )
    print({k: f"{v:.2f} ms" for k, v in medians_ms.items()})
    print(text.getvalue()[:6000])


if __name__ == "__main__":
    main()
