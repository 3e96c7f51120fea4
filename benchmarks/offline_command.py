"""`unlearn forget` end to end (the command: start, files, forget, write) against retraining
with `implicit`, side by side on MovieLens, with the retraining checks of its output.

usage: python -m benchmarks.offline_command [--repeats 5] [--before CHECKOUT]

For each case (ML-1M, 1 % of pairs; ML-100K, 5 %; binary, as offline_forget): a model
trained here (15 iterations) on 90 % of the pairs, written as the command's inputs (the
interactions file, the model file, a deletions file of the chosen pairs). Then, alternating:
the `unlearn forget` command in a fresh process; an `implicit` ALS fit of 15 iterations on
the remaining pairs in this process (the data already in memory: the fit alone); and a
retrain as a command would run it (a fresh process that reads the remaining pairs' file
with Arrow and fits `implicit`, 15 iterations). Medians and ratios; the stages of the
command (from its report: reading, forgetting, writing); then the retraining checks of
the command's output against three retrains from scratch. `--before DIR` also runs the
command of another checkout (e.g. a worktree of an earlier commit) in the same rotation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import implicit
import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from benchmarks._common import DATA_DIR, machine, median, trained_on_binary, write_json
from consumer.model_file import load_model, save_model
from unlearn_core.interactions import apply_change
from unlearn_core.retrain_check import (
    compare_with_retraining,
    random_pair_deletions,
)

CASES = (
    ("ml-1m", DATA_DIR / "ml-1m" / "pairs.tsv", 64, 0.01),
    ("ml-100k", DATA_DIR / "ml-100k" / "u.data", 32, 0.05),
)

# What a user who retrains instead would run: read the file, fit, nothing else.
RETRAIN = """
import sys, time
started = time.perf_counter()
import implicit, numpy as np, pyarrow as pa, scipy.sparse as sp
from pyarrow import csv
table = csv.read_csv(sys.argv[1], read_options=csv.ReadOptions(autogenerate_column_names=True),
                     parse_options=csv.ParseOptions(delimiter="\\t"),
                     convert_options=csv.ConvertOptions(column_types={"f0": pa.string(),
                                                                      "f1": pa.string()}))
users = table.column(0).combine_chunks().dictionary_encode()
items = table.column(1).combine_chunks().dictionary_encode()
matrix = sp.csr_matrix((table.column(2).to_numpy(), (users.indices.to_numpy(),
                        items.indices.to_numpy())), shape=(len(users.dictionary),
                        len(items.dictionary)))
fit = implicit.cpu.als.AlternatingLeastSquares(factors=int(sys.argv[2]), regularization=1.0,
                                               alpha=2.0, iterations=15, random_state=0)
fit.fit(matrix, show_progress=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--before", type=Path, help="a checkout whose command runs beside")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/offline_command.json"))
    args = parser.parse_args()
    # implicit's own advice (it warns otherwise): its threads, one BLAS thread each; the
    # command does the same.
    threadpool_limits(1, "blas")
    cases = []
    for name, path, k, fraction in CASES:
        with tempfile.TemporaryDirectory(prefix="unlearn-offline-") as scratch:
            cases.append(_case(name, path, k, fraction, Path(scratch), args.repeats, args.before))
        print(json.dumps(cases[-1]["summary"]))
    write_json(args.out, {"machine": machine(), "cases": cases})


def _write_pairs(path: Path, users: list[str], items: list[str], matrix: sp.csr_array) -> None:
    coo = sp.coo_array(matrix)
    u, i = np.asarray(users, dtype=object), np.asarray(items, dtype=object)
    rows = zip(u[coo.row], i[coo.col], coo.data, strict=True)
    lines = (f"{a}\t{b}\t{w:g}\n" for a, b, w in rows)
    path.write_text("".join(lines), encoding="utf-8")


def _case(
    name: str,
    source: Path,
    k: int,
    fraction: float,
    scratch: Path,
    repeats: int,
    before: Path | None,
) -> dict:
    model, train_data, held_out, users, items = trained_on_binary(source, k)
    deletions = random_pair_deletions(train_data, fraction, seed=1)
    remaining, _ = apply_change(train_data, deletions, "implicit")
    files = {n: scratch / n for n in ("in.tsv", "del.tsv", "model.npz", "out.npz", "rest.tsv")}
    _write_pairs(files["in.tsv"], users, items, train_data.by_user)
    _write_pairs(files["rest.tsv"], users, items, remaining.by_user)
    u, i = np.asarray(users, dtype=object), np.asarray(items, dtype=object)
    pairs = zip(u[deletions.remove_pair_users], i[deletions.remove_pair_items], strict=True)
    files["del.tsv"].write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    save_model(model, files["model.npz"])
    command = [
        sys.executable, "-c", "import sys; from consumer.cli import main; sys.exit(main())",
        "forget", "--model", str(files["model.npz"]), "--interactions", str(files["in.tsv"]),
        "--deletions", str(files["del.tsv"]), "--out", str(files["out.npz"]),
    ]  # fmt: skip
    retrain_command = [sys.executable, "-c", RETRAIN, str(files["rest.tsv"]), str(k)]
    times: dict[str, list[float]] = {"command": [], "implicit_fit": [], "retrain_command": []}
    if before is not None:
        times["command_before"] = []
        before_env = os.environ | {"PYTHONPATH": str(before.resolve())}
    stages = []
    matrix = sp.csr_matrix(remaining.by_user)
    for _ in range(repeats):
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        times["command"].append(time.perf_counter() - started)
        stages.append(json.loads(out.strip().splitlines()[-1])["stage_seconds"])
        if before is not None:
            started = time.perf_counter()
            # From the checkout itself: `python -c` puts the working directory first on the path.
            subprocess.run(command, capture_output=True, check=True, env=before_env, cwd=before)
            times["command_before"].append(time.perf_counter() - started)
        fit = implicit.cpu.als.AlternatingLeastSquares(
            factors=k, regularization=1.0, alpha=2.0, iterations=15, random_state=0
        )
        started = time.perf_counter()
        fit.fit(matrix, show_progress=False)
        times["implicit_fit"].append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(retrain_command, check=True, env=os.environ | {"OPENBLAS_NUM_THREADS": "1"})
        times["retrain_command"].append(time.perf_counter() - started)
    forgotten = load_model(files["out.npz"])
    result = compare_with_retraining(
        model, train_data, deletions, held_out, 15, unlearned=forgotten
    )
    medians = {key: median(value) for key, value in times.items()}
    stage_medians = {key: median([s[key] for s in stages]) for key in stages[0]}
    return {
        "data": name,
        "shape": list(train_data.shape),
        "interactions": train_data.nnz,
        "factors": k,
        "fraction": fraction,
        "deleted_pairs": len(deletions.remove_pair_users),
        "seconds": times,
        "stage_seconds": stages,
        "checks": result.checks,
        "unlearned": vars(result.unlearned),
        "retrained": [vars(c) for c in result.retrained],
        "summary": {
            "data": name,
            "fraction": fraction,
            "medians_s": medians,
            "stage_medians_s": stage_medians,
            "command_over_implicit_fit": medians["command"] / medians["implicit_fit"],
            "command_over_retrain_command": medians["command"] / medians["retrain_command"],
            "before": str(before) if before is not None else None,
            "checks_pass": all(result.checks.values()),
        },
    }


if __name__ == "__main__":
    main()
