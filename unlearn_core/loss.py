"""The training objective, evaluated without touching unobserved pairs one by one."""

from __future__ import annotations

import numpy as np

from unlearn_core.interactions import Interactions
from unlearn_core.model import pair_scores
from unlearn_core.params import Hyperparameters


def loss(
    data: Interactions,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    params: Hyperparameters,
) -> float:
    """The objective that training and Unlearn-ALS minimise, on the current data.

    implicit: sum over ALL pairs of c (p - s)^2 = sum_all s^2 + sum_observed [c (p - s)^2 - s^2],
    and sum_all s^2 = <X'X, Y'Y>, so only observed pairs are visited.
    """
    rows = np.repeat(np.arange(data.shape[0]), np.diff(data.by_user.indptr))
    cols = data.by_user.indices
    w = data.by_user.data
    s = pair_scores(user_factors, item_factors, rows, cols)
    x_sq = np.einsum("nk,nk->n", user_factors, user_factors, dtype=np.float64)
    y_sq = np.einsum("nk,nk->n", item_factors, item_factors, dtype=np.float64)
    if params.kind == "implicit":
        c = 1.0 + params.alpha * w
        p = (w > 0).astype(np.float64)
        # float64 Gramians here: this term is large and the report compares losses closely.
        all_pairs = float(np.sum(_gramian64(user_factors) * _gramian64(item_factors)))
        observed = float(np.sum(c * (p - s) ** 2 - s**2))
        penalty = params.regularization * (x_sq.sum() + y_sq.sum())
        return all_pairs + observed + float(penalty)
    observed = float(np.sum((w - s) ** 2))
    penalty = params.regularization * (
        float(data.row_counts() @ x_sq) + float(data.column_counts() @ y_sq)
    )
    return observed + penalty


def _gramian64(factors: np.ndarray) -> np.ndarray:
    f = np.asarray(factors, dtype=np.float64)
    return f.T @ f
