"""Fast solver and loss against the independent dense reference, on small random matrices."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from tests.conftest import params_for
from unlearn_core import Hyperparameters, SweepContext, loss, solve_rows
from unlearn_core.reference import reference_loss, reference_solve_rows
from unlearn_core.solve import _LONG_ROW, SingularSystemError
from unlearn_core.train import initial_factors

KINDS = ["implicit", "explicit"]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_row_solves_match_reference(random_data, kind, threads):
    weights, data = random_data(40, 25, density=0.3, kind=kind, seed=3)
    weights[5] = 0  # a user with no interactions
    data = type(data).from_triples(
        *np.nonzero(weights), weights[np.nonzero(weights)], weights.shape, kind
    )
    params = params_for(kind, factors=6)
    rng = np.random.default_rng(1)
    items = rng.standard_normal((25, 6))
    rows = np.arange(40)
    fast = solve_rows(data.by_user, rows, items, params, num_threads=threads)
    slow = reference_solve_rows(weights, list(rows), items, params)
    assert relative_error(fast, slow) < 1e-6
    assert np.all(fast[5] == 0)  # no data: a zero factor, as retraining gives


@pytest.mark.parametrize("kind", KINDS)
def test_long_rows_take_the_single_matmul_path_and_agree(random_data, kind):
    n_items = _LONG_ROW + 40
    weights, data = random_data(6, n_items, density=0.95, kind=kind, seed=4)
    assert np.diff(data.by_user.indptr).max() >= _LONG_ROW
    params = params_for(kind, factors=5)
    items = np.random.default_rng(2).standard_normal((n_items, 5))
    fast = solve_rows(data.by_user, np.arange(6), items, params)
    slow = reference_solve_rows(weights, list(range(6)), items, params)
    assert relative_error(fast, slow) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_item_solves_match_reference(random_data, kind):
    weights, data = random_data(30, 18, kind=kind, seed=5)
    params = params_for(kind, factors=4)
    users = np.random.default_rng(3).standard_normal((30, 4))
    fast = solve_rows(data.by_item, np.arange(18), users, params)
    slow = reference_solve_rows(weights.T, list(range(18)), users, params)
    assert relative_error(fast, slow) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_loss_matches_reference(random_data, kind):
    weights, data = random_data(25, 15, kind=kind, seed=6)
    params = params_for(kind)
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((25, 4)), rng.standard_normal((15, 4))
    assert loss(data, x, y, params) == pytest.approx(
        reference_loss(weights, x, y, params), rel=1e-10
    )


@pytest.mark.parametrize(
    ("kind", "solver"), [("implicit", "cholesky"), ("implicit", "cg"), ("explicit", "cholesky")]
)
def test_loss_never_increases_over_sweeps(random_data, kind, solver):
    weights, data = random_data(50, 30, density=0.2, kind=kind, seed=7)
    params = params_for(kind, factors=5, regularization=0.3)
    users, items = initial_factors(50, 30, params, seed=0)
    if solver == "cholesky":  # exact solves in float64: monotone to rounding
        users, items = users.astype(np.float64), items.astype(np.float64)
    context = SweepContext(data, params, solver)
    losses = [reference_loss(weights, users, items, params)]
    for _ in range(25):
        context.solve_users(users, items)
        losses.append(reference_loss(weights, users, items, params))
        context.solve_items(users, items)
        losses.append(reference_loss(weights, users, items, params))
    steps = np.diff(losses)
    # float32 CG may wobble at the last digits once converged; never by more.
    slack = 1e-9 if solver == "cholesky" else 1e-5
    assert np.all(steps <= slack * np.abs(losses[:-1])), steps.max()
    assert losses[-1] < losses[0]


def test_rotation_leaves_loss_unchanged(random_data):
    _, data = random_data(20, 12, seed=8)
    params = params_for("implicit")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((12, 4))
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    assert loss(data, x @ rotation, y @ rotation, params) == pytest.approx(loss(data, x, y, params))


def test_nan_input_raises_a_typed_error(random_data):
    _, data = random_data(10, 8, seed=9)
    items = np.ones((8, 4))
    items[2, 1] = np.nan
    with pytest.raises(SingularSystemError):
        solve_rows(data.by_user, np.arange(10), items, params_for("implicit"))


def test_solving_a_few_rows_reads_the_other_side_without_copying_it():
    """A service solves a handful of rows against a whole side's factors (its replica):
    the memory a solve takes is the rows', not a copy of that side."""
    rng = np.random.default_rng(5)
    other = rng.standard_normal((2_000_000, 8)).astype(np.float32)  # 64 MB
    matrix = sp.random_array((4, len(other)), density=2e-5, format="csr", rng=rng)
    matrix.data[:] = 1.0
    params = Hyperparameters("implicit", factors=8, regularization=1.0, alpha=2.0)
    gram = other.T.astype(np.float64) @ other.astype(np.float64)
    tracemalloc.start()
    try:
        solved = solve_rows(matrix, np.arange(4), other, params, gram)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(solved).all()
    assert peak < other.nbytes / 20


def test_padding_never_reads_a_factor_a_row_does_not_have():
    """Short rows are solved together, padded to the longest: a non-finite factor that no
    row refers to must not reach any row through the padding."""
    rng = np.random.default_rng(6)
    other = rng.standard_normal((50, 4))
    rows = [[1, 2], [3, 4, 5, 6, 7], [8]]  # of different lengths: padded in one block
    matrix = sp.csr_array((np.ones(8), np.concatenate(rows), [0, 2, 7, 8]), shape=(3, len(other)))
    params = Hyperparameters("implicit", factors=4, regularization=0.5, alpha=1.0)
    gram = other.T @ other
    clean = solve_rows(matrix, np.arange(3), other, params, gram)
    other[0] = np.nan  # row 0 of the other side is nobody's neighbour
    assert np.array_equal(solve_rows(matrix, np.arange(3), other, params, gram), clean)
