"""Slow, dense, textbook versions of the row solve and the loss, for cross-checking.

They share no code with the fast paths: every pair is materialised, nothing is cached,
and the implicit solve uses the full confidence matrix instead of the Gramian trick.
Use them on small matrices only.
"""

from __future__ import annotations

import numpy as np

from unlearn_core.params import Hyperparameters


def dense_confidence_preference(
    weights: np.ndarray, params: Hyperparameters
) -> tuple[np.ndarray, np.ndarray]:
    """C and P for every pair of a dense weight matrix (implicit model)."""
    preference = (weights > 0).astype(np.float64)
    confidence = 1.0 + params.alpha * weights
    return confidence, preference


def reference_solve_rows(
    weights: np.ndarray, rows: list[int], other: np.ndarray, params: Hyperparameters
) -> np.ndarray:
    """Exact solves of the listed rows of a dense (rows x others) weight matrix."""
    other = np.asarray(other, dtype=np.float64)
    k = other.shape[1]
    out = np.zeros((len(rows), k))
    for n, r in enumerate(rows):
        w = np.asarray(weights[r], dtype=np.float64)
        if params.kind == "implicit":
            c, p = dense_confidence_preference(w, params)
            lhs = other.T @ np.diag(c) @ other + params.regularization * np.eye(k)
            rhs = other.T @ (c * p)
        else:
            observed = w != 0
            if not observed.any():
                continue
            y = other[observed]
            lhs = y.T @ y + params.regularization * observed.sum() * np.eye(k)
            rhs = y.T @ w[observed]
        out[n] = np.linalg.solve(lhs, rhs)
    return out


def reference_loss(
    weights: np.ndarray, users: np.ndarray, items: np.ndarray, params: Hyperparameters
) -> float:
    """The training objective, summed pair by pair over a dense weight matrix."""
    x = np.asarray(users, dtype=np.float64)
    y = np.asarray(items, dtype=np.float64)
    scores = x @ y.T
    if params.kind == "implicit":
        c, p = dense_confidence_preference(weights, params)
        data = float(np.sum(c * (p - scores) ** 2))
        penalty = params.regularization * (np.sum(x**2) + np.sum(y**2))
    else:
        observed = weights != 0
        data = float(np.sum(((weights - scores) ** 2)[observed]))
        n_u = observed.sum(axis=1)
        n_i = observed.sum(axis=0)
        penalty = params.regularization * (
            np.sum(n_u * np.sum(x**2, axis=1)) + np.sum(n_i * np.sum(y**2, axis=1))
        )
    return data + float(penalty)
