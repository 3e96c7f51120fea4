"""The training objective in parts, so a change to a few rows updates it exactly.

loss.py evaluates the whole objective; these are its terms, split the way a batch that
touches some users and items can recompute them: the observed pairs of the touched rows
(each pair once), the ALS-WR penalties of the touched rows, and, for implicit feedback, the
all-pairs term, which depends on the factors only through the two Gramians.
"""

from __future__ import annotations

import numpy as np

from unlearn_core.params import Hyperparameters


def observed_terms(scores: np.ndarray, weights: np.ndarray, params: Hyperparameters) -> float:
    """Sum over observed pairs of their share of the objective."""
    return float(np.sum(observed_term_values(scores, weights, params)))


def observed_term_values(
    scores: np.ndarray, weights: np.ndarray, params: Hyperparameters
) -> np.ndarray:
    """Each observed pair's share of the objective.

    implicit: c (1 - s)^2 - s^2 (the - s^2 because the all-pairs term counts every pair with
    weight 0 already); explicit: (w - s)^2.
    """
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if params.kind == "implicit":
        c = 1.0 + params.alpha * w
        return c * (1.0 - s) ** 2 - s**2
    return (w - s) ** 2


def row_penalties(counts: np.ndarray, squared_norms: np.ndarray, params: Hyperparameters) -> float:
    """ALS-WR's penalty of some rows: reg n_r |x_r|^2 (implicit: its penalty is global)."""
    return float(np.sum(row_penalty_values(counts, squared_norms, params)))


def row_penalty_values(
    counts: np.ndarray, squared_norms: np.ndarray, params: Hyperparameters
) -> np.ndarray:
    """Each row's ALS-WR penalty (zeros for implicit feedback)."""
    counts = np.asarray(counts, dtype=np.float64)
    if params.kind == "implicit":
        return np.zeros_like(counts)
    return params.regularization * counts * np.asarray(squared_norms, dtype=np.float64)


def all_pairs_term(
    user_gramian: np.ndarray, item_gramian: np.ndarray, params: Hyperparameters
) -> float:
    """implicit: sum over all pairs of s^2 = <X'X, Y'Y>, plus reg (|X|^2 + |Y|^2); 0 else."""
    if params.kind != "implicit":
        return 0.0
    all_pairs = float(np.sum(user_gramian * item_gramian))
    return all_pairs + params.regularization * float(
        np.trace(user_gramian) + np.trace(item_gramian)
    )
