"""What every benchmark needs: the machine it ran on, data loading, and a JSON writer."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from consumer.tsv import read_interactions
from unlearn_core import FactorModel, Interactions, train
from unlearn_core.ids import IdIndex
from unlearn_core.params import Hyperparameters, Kind
from unlearn_core.retrain_check import HeldOut, split_held_out

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("UNLEARN_DATA_DIR", REPO.parent / "shared" / "data"))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    blas = [
        f"{i['internal_api']} {i.get('version')} ({i.get('architecture')})"
        for i in threadpool_info()
    ]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": sorted(set(blas)),
        "command": _command_line(),
    }


def _command_line() -> str:
    """How this benchmark was started, as someone would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    if script.parent == REPO / "benchmarks":
        return " ".join(["python -m", f"benchmarks.{script.stem}", *sys.argv[1:]])
    return " ".join(["python", *sys.argv])


def load(path: Path, kind: Kind) -> tuple[Interactions, list[str], list[str]]:
    rows = read_interactions(path, kind)
    users, items = IdIndex(), IdIndex()
    u, i = rows.user_column.indices(users), rows.item_column.indices(items)
    data = Interactions.from_triples(u, i, rows.weights, (len(users), len(items)), kind)
    return data, users.ids, items.ids


def trained_on_binary(
    path: Path, k: int
) -> tuple[FactorModel, Interactions, HeldOut, list[str], list[str]]:
    """The offline benchmarks' case: a file's pairs as binary implicit feedback, 10 % held
    out, a model trained on the rest (15 iterations, seed 0, regularization 1, alpha 1)."""
    data, users, items = load(require(path), "implicit")
    binary = data.by_user.copy()
    binary.data[:] = 1.0
    rows = sp.coo_array(binary)
    train_data, held_out = split_held_out(rows.row, rows.col, rows.data, data.shape, "implicit")
    params = Hyperparameters("implicit", k, 1.0, 1.0)
    model, _ = train(train_data, users, items, params, 15, seed=0)
    return model, train_data, held_out, users, items


def require(path: Path) -> Path:
    if not path.is_file():
        sys.exit(f"{path} not found: this benchmark needs the MovieLens files in ../shared/data")
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
