"""What an auditor runs to check an erasure from the outside: re-solve a row from its
stored interactions against the other side's exported factors, in plain float64 numpy
(nothing of the product's solvers), and compare with the stored row."""

from __future__ import annotations

import numpy as np

from unlearn_core import Interactions
from unlearn_core.model import FactorModel


def exact_row(model: FactorModel, data: Interactions, side: str, row: int) -> np.ndarray:
    """The exact least-squares solve of one row given the other side's factors."""
    params = model.params
    if side == "user":
        matrix, other = data.by_user, model.item_factors.astype(np.float64)
    else:
        matrix, other = data.by_item, model.user_factors.astype(np.float64)
    start, stop = matrix.indptr[row], matrix.indptr[row + 1]
    ys, weights = other[matrix.indices[start:stop]], matrix.data[start:stop]
    k = other.shape[1]
    if params.kind == "implicit":
        confidence = 1.0 + params.alpha * weights
        lhs = other.T @ other + params.regularization * np.eye(k)
        lhs += (ys * (confidence - 1.0)[:, None]).T @ ys
        rhs = ys.T @ confidence
    else:
        if stop == start:
            return np.zeros(k)
        lhs = ys.T @ ys + params.regularization * (stop - start) * np.eye(k)
        rhs = ys.T @ weights
    return np.linalg.solve(lhs, rhs)


def fit(model: FactorModel, data: Interactions, side: str, row: int) -> float:
    """|stored - exact solve| / |exact solve|: how far the stored row is from its data."""
    factors = model.user_factors if side == "user" else model.item_factors
    exact = exact_row(model, data, side, row)
    scale = max(float(np.linalg.norm(exact)), 1e-30)
    return float(np.linalg.norm(factors[row] - exact)) / scale


def with_pair(
    data: Interactions, user: int, item: int, weight: float, kind: str = "implicit"
) -> Interactions:
    """The stored data with one pair put back."""
    coo = data.by_user.tocoo()
    return Interactions.from_triples(
        np.append(coo.row, user), np.append(coo.col, item), np.append(coo.data, weight),
        data.shape, kind,  # type: ignore[arg-type]
    )  # fmt: skip
