"""Forgetting cycles on models from three sources: how many rounds the settle rule takes,
how far a cycle reaches, and whether every touched row can be checked from the outside.

usage: python -m benchmarks.forgetting_cycle [--sources train,implicit,spark]
           [--deletions 20,1000]

For each model source (MovieLens-100K: `unlearn train`'s defaults, `implicit` fitted and
imported, Spark MLlib ALS fitted and imported; MovieLens-1M: `unlearn train`'s defaults)
the model is loaded into a local redis-server, one engine applies a batch of random pair
deletions and its forgetting cycle runs to rest (consumer/consolidation/worker.py, the
service's own code, without Kafka). Then, as an auditor would, from what `unlearn export`
gives: every row the deletions touched is re-solved from its stored interactions against
the other side's exported factors (plain float64 numpy), and again with the deleted pair
put back. Reported: the cycle's round pairs and why they ended, rows re-solved per deleted
pair, seconds, and for the touched rows the largest distance to the solve without the
pair against the smallest distance to the solve with it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, require, write_json
from consumer.consolidation.worker import Consolidator
from consumer.embedded import local_redis
from consumer.engine import Engine
from consumer.events import Deletion, Source
from consumer.importers import from_implicit, from_spark
from consumer.state.bootstrap import export
from consumer.state.bootstrap import load as load_state
from consumer.state.store import ModelState
from unlearn_core import Hyperparameters, Interactions, train
from unlearn_core.model import FactorModel
from unlearn_core.solve import solve_rows

DEFAULTS = Hyperparameters("implicit", 64, 1.0, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="train,implicit,spark")
    parser.add_argument("--deletions", default="20,1000")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/forgetting_cycle.json")
    )
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    counts = [int(n) for n in args.deletions.split(",")]
    cases = []
    ml100k, users, items = load(require(DATA_DIR / "ml-100k" / "u.data"), "implicit")
    binary = Interactions(_binary(ml100k.by_user))
    for source in args.sources.split(","):
        if source == "train":
            model, data = train(ml100k, users, items, DEFAULTS, 15, seed=0)[0], ml100k
        elif source == "implicit":
            model, data = _implicit(binary, users, items), binary
        else:
            model, data = _spark(binary, users, items), binary
        for count in counts:
            if count < data.nnz // 20:
                cases.append(_case(f"ml-100k {source}", model, data, count))
                print(cases[-1])
    ml1m, users1m, items1m = load(require(DATA_DIR / "ml-1m" / "pairs.tsv"), "implicit")
    model = train(ml1m, users1m, items1m, DEFAULTS, 15, seed=0)[0]
    for count in counts:
        cases.append(_case("ml-1m train", model, ml1m, count))
        print(cases[-1])
    write_json(args.out, {"machine": machine(), "cases": cases})


def _case(name: str, model: FactorModel, data: Interactions, count: int) -> dict:
    rng = np.random.default_rng(3)
    keys = data.entry_keys[rng.choice(data.nnz, count, replace=False)]
    pairs = np.stack([keys // data.shape[1], keys % data.shape[1]], axis=1)
    with local_redis() as url:
        state = ModelState(redis.Redis.from_url(url), "cycle")
        load_state(state, model, data, np.full(data.nnz, 1e9), shards=16)
        engine = Engine(state)
        deletions = [
            Deletion(str(model.user_ids[u]), str(model.item_ids[i]), 2e9, f"r{n}",
                     Source("deletions", 0, n))
            for n, (u, i) in enumerate(pairs.tolist())
        ]  # fmt: skip
        started = time.perf_counter()
        out = engine.process([], deletions)
        batch_s = time.perf_counter() - started
        consolidator = Consolidator()
        consolidator.attach(engine)
        started = time.perf_counter()
        figures = consolidator.rest(out.forgetting)
        cycle_s = time.perf_counter() - started
        # Then the input is quiet: a cycle the settle rule ended is taken up, on to rest.
        started = time.perf_counter()
        quiet = consolidator.rest(quiet=True) if consolidator.unfinished else None
        quiet_s = time.perf_counter() - started
        exported, stored = export(state)
    weights = data.weights_of(pairs[:, 0], pairs[:, 1])
    without, with_pair = _separation(exported, stored, pairs, weights)
    loaded_fit = _median_fit(model, data)
    return {
        "model": name,
        "params": vars(model.params),
        "deletions": count,
        "batch_seconds": batch_s,
        "cycle_seconds": cycle_s,
        **(figures or {}),
        "quiet": {**quiet, "seconds": quiet_s} if quiet else None,
        "touched_fit_max": without,
        "with_pair_back_min": with_pair,
        "separation": with_pair / max(without, 1e-30),
        "loaded_fit_median": loaded_fit,
    }


def _median_fit(model: FactorModel, data: Interactions) -> dict[str, float]:
    """How far the loaded model's rows are from the exact solve of their data (median,
    relative): a model trained by a fixed number of sweeps is not at its fixed point."""
    out = {}
    for side, matrix, mine, other in (
        ("user", data.by_user, model.user_factors, model.item_factors),
        ("item", data.by_item, model.item_factors, model.user_factors),
    ):
        exact = solve_rows(matrix, np.arange(matrix.shape[0]), other, model.params)
        scale = np.maximum(np.linalg.norm(exact, axis=1), 1e-30)
        out[side] = float(np.median(np.linalg.norm(mine - exact, axis=1) / scale))
    return out


def _separation(model, stored, pairs, weights) -> tuple[float, float]:
    """Over the touched rows: the largest relative distance to the exact solve of the
    stored data, and the smallest to the solve with the deleted pair put back. A pair
    whose other side has nothing left (a zero factor: an item whose every pair was
    deleted) says nothing about the row, put back or not: it is left out of the second."""
    params = model.params
    worst_fit, best_back = 0.0, np.inf
    by_user, by_item = stored.by_user.tolil(), stored.by_item.tolil()
    for (u, i), w in zip(pairs.tolist(), weights.tolist(), strict=True):
        for side, row, other_row in (("user", u, i), ("item", i, u)):
            lil = by_user if side == "user" else by_item
            mine = model.user_factors if side == "user" else model.item_factors
            other = (model.item_factors if side == "user" else model.user_factors).astype(
                np.float64
            )
            columns = np.asarray(lil.rows[row], dtype=np.int64)
            values = np.asarray(lil.data[row], dtype=np.float64)
            exact = _solve(other, columns, values, params)
            back = _solve(other, np.append(columns, other_row), np.append(values, w), params)
            if not np.linalg.norm(exact):
                continue  # nothing left to fit (a row with no data): a zero factor
            worst_fit = max(worst_fit, _distance(mine[row], exact))
            if other[other_row].any():
                best_back = min(best_back, _distance(mine[row], back))
    return worst_fit, float(best_back)


def _solve(other, columns, values, params) -> np.ndarray:
    ys = other[columns]
    k = other.shape[1]
    confidence = 1.0 + params.alpha * values
    lhs = other.T @ other + params.regularization * np.eye(k)
    lhs += (ys * (confidence - 1.0)[:, None]).T @ ys
    return np.linalg.solve(lhs, ys.T @ confidence)


def _distance(row: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(row - exact) / np.linalg.norm(exact))


def _binary(matrix: sp.csr_array) -> sp.csr_array:
    out = matrix.copy()
    out.data[:] = 1.0
    return out


def _implicit(data: Interactions, users, items) -> FactorModel:
    import implicit

    fit = implicit.cpu.als.AlternatingLeastSquares(
        factors=64, regularization=1.0, alpha=2.0, iterations=15, random_state=0
    )
    fit.fit(sp.csr_matrix(data.by_user), show_progress=False)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "implicit.npz"
        fit.save(str(path))
        model = from_implicit(path, None, None)
    return FactorModel.create(users, items, model.user_factors, model.item_factors, model.params)


def _spark(data: Interactions, users, items) -> FactorModel:
    """Spark MLlib's implicit ALS (rank 64, regParam 1, alpha 1, 10 iterations), imported
    with the objective `unlearn` continues (docs/importing.md)."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName("unlearn-cycle-bench")
        .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "4").getOrCreate()
    )  # fmt: skip
    try:
        coo = data.by_user.tocoo()
        frame = spark.createDataFrame(
            [(int(u), int(i), 1.0) for u, i in zip(coo.row, coo.col, strict=True)],
            ["user", "item", "rating"],
        )
        als = ALS(rank=64, regParam=1.0, alpha=1.0, maxIter=10, implicitPrefs=True, seed=0,
                  userCol="user", itemCol="item", ratingCol="rating")  # fmt: skip
        fitted = als.fit(frame)
        with tempfile.TemporaryDirectory() as scratch:
            fitted.save(f"{scratch}/als")
            model = from_spark(
                f"{scratch}/als", None, lambda k: Hyperparameters("implicit", k, 1.0, 1.0)
            )
    finally:
        spark.stop()
    # Spark's ids are the indices given; back to the data's order.
    order_u = np.argsort(model.user_ids.astype(np.int64))
    order_i = np.argsort(model.item_ids.astype(np.int64))
    user_factors = np.zeros((data.shape[0], 64), np.float32)
    item_factors = np.zeros((data.shape[1], 64), np.float32)
    user_factors[model.user_ids.astype(np.int64)[order_u]] = model.user_factors[order_u]
    item_factors[model.item_ids.astype(np.int64)[order_i]] = model.item_factors[order_i]
    return FactorModel.create(users, items, user_factors, item_factors, model.params)


if __name__ == "__main__":
    main()
