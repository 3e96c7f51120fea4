"""Full ALS sweeps: every user against fixed items, then every item against fixed users.

Two solvers:
- "cholesky": the exact batched solves of unlearn_core.solve (both model kinds);
- "cg": the conjugate-gradient solver of the `implicit` library (implicit model only), the
  fastest CPU sweep we know. Its confidence is the stored value v with A = Y'Y + reg I +
  sum (v - 1) y y', b = sum v y: passing v = 1 + alpha * w gives exactly our objective.
  Each CG step from the current factors lowers the row's quadratic, so sweeps stay monotone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import scipy.sparse as sp
from implicit.cpu import _als as implicit_als

from unlearn_core.interactions import Interactions
from unlearn_core.model import FACTOR_DTYPE
from unlearn_core.params import Hyperparameters
from unlearn_core.solve import solve_rows

Solver = Literal["cg", "cholesky"]
SOLVERS: tuple[Solver, ...] = ("cg", "cholesky")
CG_STEPS = 3  # implicit's default; warm-started, three steps per sweep are enough
# The touched rows' re-solve: their data changed, so their step is large. Warm-started, ten
# CG steps land within float32 precision of the exact solve (3e-5 of the step's length on
# MovieLens-1M, k = 64, where three steps leave 8e-2) at a fifth of the Cholesky's cost.
TOUCHED_CG_STEPS = 10


def default_solver(params: Hyperparameters) -> Solver:
    return "cg" if params.kind == "implicit" else "cholesky"


@dataclass(frozen=True)
class SweepContext:
    """The data in the layouts the solvers read, built once per run of sweeps."""

    data: Interactions
    params: Hyperparameters
    solver: Solver
    num_threads: int = 0  # 0: all cores

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.solver == "cg" and self.params.kind != "implicit":
            raise ValueError("the cg solver fits the implicit model only")

    @cached_property
    def user_confidence(self) -> sp.csr_matrix:
        return _confidence(self.data.by_user, self.params)

    @cached_property
    def item_confidence(self) -> sp.csr_matrix:
        return _confidence(self.data.by_item, self.params)

    def solve_users(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        """Re-solve every user in place."""
        if self.solver == "cg":
            implicit_als.least_squares_cg(
                self.user_confidence,
                user_factors,
                item_factors,
                self.params.regularization,
                num_threads=self.num_threads,
                cg_steps=CG_STEPS,
            )
        else:
            rows = np.arange(self.data.shape[0])
            user_factors[:] = solve_rows(
                self.data.by_user, rows, item_factors, self.params, num_threads=self.num_threads
            )

    def solve_items(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        """Re-solve every item in place."""
        if self.solver == "cg":
            implicit_als.least_squares_cg(
                self.item_confidence,
                item_factors,
                user_factors,
                self.params.regularization,
                num_threads=self.num_threads,
                cg_steps=CG_STEPS,
            )
        else:
            rows = np.arange(self.data.shape[1])
            item_factors[:] = solve_rows(
                self.data.by_item, rows, user_factors, self.params, num_threads=self.num_threads
            )

    def solve_some(
        self,
        side: str,
        rows: np.ndarray,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        cg_steps: int = TOUCHED_CG_STEPS,
    ) -> None:
        """Re-solve these rows of one side in place against the other side's factors: the
        touched step (CG warm-started, `cg_steps` steps; or the exact Cholesky)."""
        if not len(rows):
            return
        users_side = side == "user"
        mine, other = (user_factors, item_factors) if users_side else (item_factors, user_factors)
        if self.solver == "cg":
            confidence = self.user_confidence if users_side else self.item_confidence
            solved = mine[rows].copy()
            implicit_als.least_squares_cg(
                confidence[rows],
                solved,
                other,
                self.params.regularization,
                num_threads=self.num_threads,
                cg_steps=cg_steps,
            )
        else:
            weights = self.data.by_user if users_side else self.data.by_item
            solved = solve_rows(weights, rows, other, self.params, num_threads=self.num_threads)
        mine[rows] = solved.astype(FACTOR_DTYPE)

    def sweep(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        """One ALS sweep in place: users, then items."""
        self.solve_users(user_factors, item_factors)
        self.solve_items(user_factors, item_factors)


def _confidence(weights: sp.csr_array, params: Hyperparameters) -> sp.csr_matrix:
    """implicit's input: a float32 CSR whose values are the confidences 1 + alpha * w."""
    conf = sp.csr_matrix(
        (
            (1.0 + params.alpha * weights.data).astype(FACTOR_DTYPE),
            weights.indices.astype(np.int32),
            weights.indptr.astype(np.int32),
        ),
        shape=weights.shape,
    )
    return conf
