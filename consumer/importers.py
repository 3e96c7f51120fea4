"""Models trained elsewhere, as `unlearn` model files (`unlearn import`).

Scores are dot products of factors, so importing is copying the factors with their ids;
what must be converted is the objective the factors came from, so that forgetting
continues the same objective:

- `implicit` (Hu-Koren-Volinsky as implicit >= 0.5 fits it): an observed pair with value r
  has confidence alpha_i * r, an unobserved one 1, and the penalty is reg (|X|^2 + |Y|^2).
  `unlearn` writes the confidence 1 + alpha * w. For the usual binary data (r = w = 1) the
  two agree exactly with alpha = alpha_i - 1; for weighted data, load weights
  w = (alpha_i * r - 1) / alpha (with alpha = 1: w = alpha_i * r - 1) and they agree
  exactly again. The penalty is the same. CPU and GPU models save the same file.
- `spark`: Spark MLlib's `ALSModel` (`model.save(DIR)`: `DIR/userFactors` and
  `DIR/itemFactors` as Parquet, columns `id` and `features`; or those two DataFrames
  written with `df.write.parquet`). Spark does not save the estimator's objective with
  the model: kind, regParam and alpha are given. Explicit ALS is ALS-WR in both (the
  penalty regParam * n_u |x_u|^2 + regParam * n_i |y_i|^2): the same objective, exactly.
  Spark's implicit ALS keeps that count-scaled penalty, where `unlearn`'s implicit
  objective (and implicit's) has a plain one: the factors import exactly, but forgetting
  then continues `unlearn`'s objective, so the import says `objective: "changed"`.
- `npy`: factor matrices (.npy, or .csv with one row per line) with id lists, and the
  hyperparameters given on the command line.

Ids may come in any numpy dtype: integers (and integral floats) become their decimal
text, as they appear in the interactions files; anything else its str().
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from consumer.errors import InputError
from unlearn_core.model import FactorModel
from unlearn_core.params import Hyperparameters


def ids_as_text(ids: np.ndarray) -> np.ndarray:
    """Ids of any dtype as the text the interactions files carry."""
    ids = np.asarray(ids).reshape(-1)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64).astype(np.str_)
    if ids.dtype.kind == "f" and np.all(np.isfinite(ids)) and np.all(ids == np.round(ids)):
        return ids.astype(np.int64).astype(np.str_)
    if ids.dtype.kind in "US":
        return ids.astype(np.str_)
    return np.array([str(x) for x in ids.tolist()], dtype=np.str_)


def read_ids(path: str | Path | None, count: int, side: str) -> np.ndarray:
    """An id list: .npy (numeric or text; not pickled objects), or text, one id per line.
    None: the row numbers 0..count-1, as implicit and numpy matrices index them."""
    if path is None:
        return np.arange(count).astype(np.str_)
    path = Path(path)
    if path.suffix == ".npy":
        try:
            ids = ids_as_text(np.load(path, allow_pickle=False))
        except ValueError as exc:
            why = "object arrays need pickle, which is never loaded: save the ids as text"
            raise InputError(path, why + " (one per line) or as a str/int array") from exc
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        ids = np.array([line.strip() for line in lines if line.strip()], dtype=np.str_)
    if len(ids) != count:
        raise InputError(path, f"{len(ids)} {side} ids for {count} {side} factor rows")
    if len(np.unique(ids)) != len(ids):
        raise InputError(path, f"{side} ids are not unique")
    return ids


def from_implicit(
    path: str | Path, user_ids: str | Path | None, item_ids: str | Path | None
) -> FactorModel:
    """A model file written by implicit's `model.save(path)` (ALS, CPU or GPU)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"cannot read an implicit model: {exc}") from exc
    missing = {"user_factors", "item_factors", "regularization", "alpha"} - arrays.keys()
    if missing:
        raise InputError(path, f"not an implicit ALS model file: missing {sorted(missing)}")
    users, items = arrays["user_factors"], arrays["item_factors"]
    alpha = float(arrays["alpha"])
    if alpha < 1:
        raise InputError(path, f"implicit alpha {alpha} < 1: its confidence alpha * r is "
                         "below an unobserved pair's 1 for r = 1, which 1 + alpha * w cannot "
                         "express with w >= 0")  # fmt: skip
    # implicit's GPU models keep factors padded to a multiple of 32 columns on some builds:
    # the real rank is `factors`.
    k = int(arrays.get("factors", users.shape[1]))
    params = Hyperparameters("implicit", k, float(arrays["regularization"]), alpha - 1.0)
    return FactorModel.create(
        read_ids(user_ids, len(users), "user"), read_ids(item_ids, len(items), "item"),
        users[:, :k], items[:, :k], params,
    )  # fmt: skip


def read_matrix(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        if path.suffix == ".npy":
            matrix = np.load(path, allow_pickle=False)
        else:
            matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read a factor matrix: {exc}") from exc
    if matrix.ndim != 2 or not np.all(np.isfinite(matrix)):
        raise InputError(path, "a factor matrix is 2-D and finite")
    return matrix


def read_spark_factors(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A Spark factor DataFrame saved as Parquet: (ids, factors), sorted by id."""
    import pyarrow.parquet as pq  # a dependency, imported only by the commands that read it

    try:
        table = pq.read_table(str(directory), columns=["id", "features"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(directory, f"not a Spark factor table (id, features): {exc}") from exc
    ids = np.asarray(table.column("id").to_numpy())
    features = table.column("features").to_pylist()
    if not features:
        return ids, np.zeros((0, 0), dtype=np.float32)
    ranks = {len(f) for f in features}
    if len(ranks) != 1 or any(f is None for f in features):
        raise InputError(directory, f"factor rows of different lengths: {sorted(ranks)}")
    factors = np.asarray(features, dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    return ids[order], factors[order]


def from_spark(
    source: str | Path,
    item_factors: str | Path | None,
    objective: Callable[[int], Hyperparameters],
) -> FactorModel:
    """Spark's saved ALSModel directory (or its user factors' Parquet directory, with
    the item factors' given)."""
    source = Path(source)
    if item_factors is None:
        users_dir, items_dir = source / "userFactors", source / "itemFactors"
        if not users_dir.is_dir() or not items_dir.is_dir():
            raise InputError(source, "not a saved ALSModel (no userFactors/ and itemFactors/): "
                             "give the user factors' Parquet and --item-factors")  # fmt: skip
    else:
        users_dir, items_dir = source, Path(item_factors)
    user_ids, users = read_spark_factors(users_dir)
    item_ids, items = read_spark_factors(items_dir)
    if users.shape[1] != items.shape[1]:
        raise InputError(items_dir, f"rank {items.shape[1]} where the users' is {users.shape[1]}")
    return FactorModel.create(
        ids_as_text(user_ids), ids_as_text(item_ids), users, items, objective(users.shape[1])
    )


def from_matrices(
    user_factors: str | Path,
    item_factors: str | Path,
    user_ids: str | Path | None,
    item_ids: str | Path | None,
    objective: Callable[[int], Hyperparameters],
) -> FactorModel:
    """The matrices with their ids; `objective` gives the hyperparameters for their rank."""
    users, items = read_matrix(user_factors), read_matrix(item_factors)
    if users.shape[1] != items.shape[1]:
        raise InputError(item_factors, f"{items.shape[1]} columns where the user factors "
                         f"have {users.shape[1]}")  # fmt: skip
    params = objective(users.shape[1])
    return FactorModel.create(
        read_ids(user_ids, len(users), "user"), read_ids(item_ids, len(items), "item"),
        users, items, params,
    )  # fmt: skip
