"""Speed of unlearn_core on MovieLens-1M pairs, side by side with `implicit` in one run.

Measures, alternating the contenders in every round so machine noise hits all alike:
  - `implicit` ALS fit (CG solver, 15 iterations): the retrain users would otherwise run;
  - one full Unlearn-ALS sweep (our default: implicit's CG kernel on c = 1 + alpha*w),
    and one exact Cholesky sweep for reference;
  - `forget` of 100 random pairs: the exact touched-row re-solves alone, and the whole
    call with --max-sweeps 3;
  - the `unlearn forget --max-sweeps 3` command end to end (parsing 1M lines included).

usage: python -m benchmarks.core_speed [--rounds 5] [--out benchmarks/results/core_speed.json]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import implicit
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, load, machine, median, require, write_json
from consumer.model_file import save_model
from unlearn_core import Change, Hyperparameters, SweepContext, SweepPolicy, forget, train

PARAMS = Hyperparameters("implicit", factors=64, regularization=1.0, alpha=1.0)
RETRAIN_ITERATIONS = 15
THREE_SWEEPS = SweepPolicy(
    max_sweeps=3, tolerance=0.0, rank_tolerance=None, settle_ratio=None, track_loss=False
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=DATA_DIR / "ml-1m" / "pairs.tsv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forgets", type=int, default=20, help="deletion draws per round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core_speed.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")  # as `unlearn` runs; implicit asks for the same

    data, user_ids, item_ids = load(require(args.pairs), "implicit")
    print(f"{args.pairs}: {data.shape[0]} users x {data.shape[1]} items, {data.nnz} pairs")
    model, _ = train(data, user_ids, item_ids, PARAMS, RETRAIN_ITERATIONS, seed=0)
    context = SweepContext(data, PARAMS, "cg")
    exact = SweepContext(data, PARAMS, "cholesky")
    # implicit's confidence is its input value: give it ours, c = 1 + alpha * w.
    confidence = context.user_confidence
    rng = np.random.default_rng(0)

    workdir = Path(tempfile.mkdtemp(prefix="unlearn-bench-"))
    model_path, deletions_path = workdir / "model.npz", workdir / "deletions.tsv"
    save_model(model, model_path)

    results: dict[str, list[float]] = {key: [] for key in (
        "implicit_fit_15_seconds", "sweep_cg_seconds", "sweep_cholesky_seconds",
        "forget100_touched_seconds", "forget100_apply_seconds",
        "forget100_max3_seconds", "cli_forget100_max3_seconds", "forget100_touched_interactions",
    )}  # fmt: skip
    user_counts, item_counts = data.row_counts(), data.column_counts()
    for round_ in range(args.rounds):
        als = implicit.cpu.als.AlternatingLeastSquares(
            factors=PARAMS.factors, regularization=PARAMS.regularization, alpha=1.0,
            iterations=RETRAIN_ITERATIONS, use_cg=True, calculate_training_loss=False,
            random_state=round_,
        )  # fmt: skip
        started = time.perf_counter()
        als.fit(sp.csr_matrix(confidence), show_progress=False)
        results["implicit_fit_15_seconds"].append(time.perf_counter() - started)

        users, items = model.user_factors.copy(), model.item_factors.copy()
        for ctx, key in ((context, "sweep_cg_seconds"), (exact, "sweep_cholesky_seconds")):
            started = time.perf_counter()
            ctx.sweep(users, items)
            results[key].append(time.perf_counter() - started)

        for _ in range(args.forgets):
            keys = data.entry_keys[rng.choice(data.nnz, 100, replace=False)]
            change = Change.deletions(keys // data.shape[1], keys % data.shape[1])
            started = time.perf_counter()
            _, _, report = forget(model, data, change, THREE_SWEEPS)
            results["forget100_max3_seconds"].append(time.perf_counter() - started)
            results["forget100_touched_seconds"].append(report.touched_seconds)
            results["forget100_apply_seconds"].append(report.apply_seconds)
            # The work of the touched re-solve: every interaction of every touched row.
            touched = user_counts[np.unique(change.remove_pair_users)].sum()
            touched += item_counts[np.unique(change.remove_pair_items)].sum()
            results["forget100_touched_interactions"].append(float(touched))

        deletions_path.write_text(
            "".join(
                f"{user_ids[k // data.shape[1]]}\t{item_ids[k % data.shape[1]]}\n" for k in keys
            )
        )
        started = time.perf_counter()
        subprocess.run(
            ["unlearn", "forget", "--model", str(model_path), "--interactions", str(args.pairs),
             "--deletions", str(deletions_path), "--out", str(workdir / "out.npz"),
             "--max-sweeps", "3", "--tolerance", "0"],
            check=True, capture_output=True,
        )  # fmt: skip
        results["cli_forget100_max3_seconds"].append(time.perf_counter() - started)
        print(f"round {round_ + 1}/{args.rounds} done")

    medians = {key: median(values) for key, values in results.items()}
    fit = medians["implicit_fit_15_seconds"]
    per_iteration = fit / RETRAIN_ITERATIONS
    touched = np.asarray(results["forget100_touched_seconds"])
    summary = {
        "implicit_seconds_per_iteration": per_iteration,
        "sweep_cg_vs_implicit_iteration": medians["sweep_cg_seconds"] / per_iteration,
        "sweep_cholesky_vs_implicit_iteration": medians["sweep_cholesky_seconds"] / per_iteration,
        "forget100_touched_ms": medians["forget100_touched_seconds"] * 1e3,
        "forget100_touched_p90_ms": float(np.percentile(touched, 90)) * 1e3,
        "forget100_max3_vs_implicit_fit_15": medians["forget100_max3_seconds"] / fit,
        "cli_forget100_max3_vs_implicit_fit_15": medians["cli_forget100_max3_seconds"] / fit,
    }
    for key, value in {**medians, **summary}.items():
        print(f"{key:45s} {value:10.4f}")
    write_json(args.out, {
        "machine": machine(), "data": str(args.pairs), "shape": list(data.shape), "nnz": data.nnz,
        "params": vars(PARAMS), "implicit_version": implicit.__version__, "rounds": args.rounds,
        "medians": medians, "summary": summary, "raw": results,
    })  # fmt: skip


if __name__ == "__main__":
    main()
