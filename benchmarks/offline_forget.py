"""`unlearn forget` at its defaults against retraining with `implicit` (15 iterations),
side by side on MovieLens, with the retraining checks of the forgotten model.

usage: python -m benchmarks.offline_forget [--repeats 3] [--fractions 0.001,0.01]

For each data set: a model trained here (15 iterations) on 90 % of the pairs (the rest
held out), deletions of a fraction of its pairs; then, alternating, `forget` in-process at
the command's defaults (the settle rule, no loss tracking), `forget` with the loss tracked
after every step (--track-loss), `forget` with the list rule instead (--rank-tolerance
0.01 --settle-ratio 0), and an `implicit` ALS fit of 15 iterations on the remaining pairs
with the same objective (alpha_i = 1 + alpha). Medians and ratios; then the retraining
checks (unlearn_core/retrain_check.py: 3 retrains from scratch) of the forgotten models.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import implicit
import scipy.sparse as sp

from benchmarks._common import DATA_DIR, machine, median, trained_on_binary, write_json
from unlearn_core import SweepPolicy, forget
from unlearn_core.interactions import apply_change
from unlearn_core.retrain_check import (
    HeldOut,
    compare_with_retraining,
    random_pair_deletions,
)
from unlearn_core.unlearn import DEFAULT_RANK_TOLERANCE

SETS = (
    ("ml-100k", DATA_DIR / "ml-100k" / "u.data", 32),
    ("ml-1m", DATA_DIR / "ml-1m" / "pairs.tsv", 64),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fractions", default="0.001,0.01")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/offline_forget.json"))
    args = parser.parse_args()
    cases = []
    for name, path, k in SETS:
        model, train_data, held_out, _, _ = trained_on_binary(path, k)
        for fraction in (float(f) for f in args.fractions.split(",")):
            cases.append(_case(name, model, train_data, held_out, fraction, args.repeats))
            print(cases[-1]["summary"])
    write_json(args.out, {"machine": machine(), "cases": cases})


def _case(name, model, data, held_out: HeldOut, fraction: float, repeats: int) -> dict:
    deletions = random_pair_deletions(data, fraction, seed=1)
    remaining, summary = apply_change(data, deletions, "implicit")
    params = model.params
    times: dict[str, list[float]] = {
        "forget": [], "forget_tracked": [], "forget_lists": [], "implicit_retrain": []
    }  # fmt: skip
    defaults = SweepPolicy(track_loss=False)  # the command's defaults
    lists = SweepPolicy(track_loss=False, rank_tolerance=DEFAULT_RANK_TOLERANCE, settle_ratio=None)
    reports = []
    forgotten = None
    for _ in range(repeats):
        started = time.perf_counter()
        forgotten, _, report = forget(model, data, deletions, defaults)
        times["forget"].append(time.perf_counter() - started)
        reports.append(report)
        started = time.perf_counter()
        forget(model, data, deletions, SweepPolicy(track_loss=True))
        times["forget_tracked"].append(time.perf_counter() - started)
        started = time.perf_counter()
        by_lists, _, lists_report = forget(model, data, deletions, lists)
        times["forget_lists"].append(time.perf_counter() - started)
        fit = implicit.cpu.als.AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization,
            alpha=1.0 + params.alpha, iterations=15, random_state=0,
        )  # fmt: skip
        started = time.perf_counter()
        fit.fit(sp.csr_matrix(remaining.by_user), show_progress=False)
        times["implicit_retrain"].append(time.perf_counter() - started)
    result = compare_with_retraining(model, data, deletions, held_out, 15, unlearned=forgotten)
    lists_result = compare_with_retraining(model, data, deletions, held_out, 15, unlearned=by_lists)
    medians = {k: median(v) for k, v in times.items()}
    last = reports[-1]
    return {
        "data": name,
        "shape": list(data.shape),
        "interactions": data.nnz,
        "factors": params.factors,
        "fraction": fraction,
        "removed": summary.removed,
        "seconds": times,
        "sweeps": [r.sweeps for r in reports],
        "top_n_changes": [r.top_n_change for r in lists_report.records if r.phase == "sweep"],
        "settle_ratios": [r.settle_ratio for r in last.records if r.phase == "sweep"],
        # Where the defaults' time goes (the last run): the data update, the touched
        # re-solve, each sweep.
        "apply_seconds": last.apply_seconds,
        "touched_seconds": last.touched_seconds,
        "sweep_seconds": [r.seconds for r in last.records if r.phase == "sweep"],
        "checks": result.checks,
        "lists_checks": lists_result.checks,
        "lists_sweeps": lists_report.sweeps,
        "lists_deleted_mean_score": lists_result.unlearned.deleted_mean_score,
        "unlearned": vars(result.unlearned),
        "retrained": [vars(c) for c in result.retrained],
        "summary": {
            "data": name,
            "fraction": fraction,
            "medians_s": medians,
            "forget_over_implicit": medians["forget"] / medians["implicit_retrain"],
            "forget_tracked_over_implicit": medians["forget_tracked"] / medians["implicit_retrain"],
            "forget_lists_over_implicit": medians["forget_lists"] / medians["implicit_retrain"],
            "sweeps": last.sweeps,
            "checks_pass": all(result.checks.values()),
            "lists_checks_pass": all(lists_result.checks.values()),
        },
    }


if __name__ == "__main__":
    main()
