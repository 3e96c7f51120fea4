"""Unlearn-ALS against retraining from scratch on MovieLens-100K (the core acceptance table).

For each case: train (seed 0, 20 iterations), forget with the default policy, retrain on
the remaining data with seeds 0, 1, 2, and score every model on the deleted pairs, the
held-out 10%, and a membership-inference attack by score (deleted vs never-seen pairs of
the same users). Also: explicit at reg 0.1, where 20 retrain iterations are not enough
to converge, with the retrain at 20 and at 40 iterations.

usage: python -m benchmarks.forget_quality [--out benchmarks/results/forget_quality.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, machine, require, write_json
from consumer.tsv import read_interactions
from unlearn_core import Hyperparameters, train
from unlearn_core.ids import IdIndex
from unlearn_core.retrain_check import (
    compare_with_retraining,
    random_pair_deletions,
    random_user_deletions,
    split_held_out,
)

CASES = [
    # (kind, regularization, deletion scope, retrain iterations)
    ("implicit", 1.0, "5% of pairs", 20),
    ("implicit", 1.0, "20 whole users", 20),
    ("explicit", 0.3, "5% of pairs", 20),
    ("explicit", 0.3, "20 whole users", 20),
    ("explicit", 0.1, "5% of pairs", 20),
    ("explicit", 0.1, "5% of pairs", 40),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR / "ml-100k" / "u.data")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/forget_quality.json"))
    args = parser.parse_args()
    threadpool_limits(1, "blas")
    require(args.data)

    rows_out = []
    for kind, reg, scope, retrain_iterations in CASES:
        params = Hyperparameters(kind, factors=32, regularization=reg, alpha=1.0)  # type: ignore[arg-type]
        rows = read_interactions(args.data, params.kind)
        users, items = IdIndex(), IdIndex()
        u, i = users.add(rows.users), items.add(rows.items)
        data, held_out = split_held_out(u, i, rows.weights, (len(users), len(items)), kind)
        model, _ = train(data, users.ids, items.ids, params, 20, seed=0)
        if scope == "5% of pairs":
            deletions = random_pair_deletions(data, 0.05, seed=1)
        else:
            deletions = random_user_deletions(data, 20, seed=1)
        result = compare_with_retraining(model, data, deletions, held_out, retrain_iterations)
        row = {
            "kind": kind,
            "regularization": reg,
            "scope": scope,
            "retrain_iterations": retrain_iterations,
            **result.to_dict(),
            "forget_seconds": result.unlearned.seconds,
            "retrain_seconds": [card.seconds for card in result.retrained],
        }
        rows_out.append(row)
        _print_row(row)
    write_json(args.out, {"machine": machine(), "data": str(args.data), "cases": rows_out})


def _print_row(row: dict) -> None:
    metric = "recall_at_20" if row["kind"] == "implicit" else "rmse"
    retrained = row["retrained"]

    def span(name: str) -> str:
        values = [card[name] for card in retrained]
        return (
            f"{min(values):.4f}..{max(values):.4f}"
            if name != "loss"
            else f"{min(values):.1f}..{max(values):.1f}"
        )

    print(
        f"{row['kind']:8s} reg {row['regularization']:<4} {row['scope']:15s} "
        f"retrain {row['retrain_iterations']} it | deleted score "
        f"{row['original']['deleted_mean_score']:.4f} -> "
        f"{row['unlearned']['deleted_mean_score']:.4f}"
        f" (retrain {span('deleted_mean_score')}) | {metric} {row['unlearned'][metric]:.4f}"
        f" (retrain {span(metric)}) | attack AUC {row['original']['attack_auc']:.4f} -> "
        f"{row['unlearned']['attack_auc']:.4f} (retrain {span('attack_auc')}) | "
        f"loss {row['unlearned']['loss']:.1f} (retrain {span('loss')}) | "
        f"sweeps {row['sweeps']} | checks {row['checks']}"
    )


if __name__ == "__main__":
    main()
