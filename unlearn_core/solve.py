"""Exact least-squares row solves (Cholesky), batched and vectorised.

Solving row r of X against fixed factors Y means minimising the loss over x_r alone:

implicit:  (G + reg I + Y_r' diag(alpha w_r) Y_r) x = Y_r' (1 + alpha w_r),   G = Y'Y
explicit:  (Y_r' Y_r + reg n_r I) x = Y_r' w_r

Only the row's observed entries appear besides the global Gramian G, so a batch of rows
costs sum(n_r) k^2, whatever the size of the matrix. Rows are grouped by length and
padded, so the work is a few batched matmuls and one batched Cholesky solve per group.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dposv as _posv

from unlearn_core.params import Hyperparameters

# Rows at least this long are solved one matmul each; shorter ones in padded batches,
# where one batched call amortises Python's per-row overhead.
_LONG_ROW = 128

# Below this many multiply-adds per thread, a thread pool costs more than it saves.
_MIN_WORK_PER_THREAD = 1 << 20

# Upper bound on the padded (rows x length x k) block built at once, in float64 elements:
# 2^22 elements = 32 MiB, large enough for BLAS to run at full speed.
_BLOCK_ELEMENTS = 1 << 22


class SingularSystemError(ArithmeticError):
    """A row's normal equations are not positive definite (NaN or infinite inputs)."""


def gramian(factors: np.ndarray) -> np.ndarray:
    """F'F, accumulated in the factors' dtype (as the sweeps do) and returned in float64."""
    return (factors.T @ factors).astype(np.float64)


def solve_rows(
    matrix: sp.csr_array,
    rows: np.ndarray,
    other: np.ndarray,
    params: Hyperparameters,
    other_gramian: np.ndarray | None = None,
    num_threads: int = 1,
) -> np.ndarray:
    """Exact solution for each listed row of `matrix` (rows x others, weights) given `other`.

    Returns float64 factors of shape (len(rows), k). A row with no entries gets a zero
    factor: its right-hand side is zero (implicit), or it has no data at all (explicit).
    The sums of outer products are accumulated in the dtype of `other` (float32 factors:
    float32, as the sweeps do); the Cholesky solve always runs in float64.

    num_threads > 1 splits the rows over a thread pool (0: one thread per core). BLAS
    calls release the GIL, so this scales when BLAS itself runs one thread per call.
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    k = other.shape[1]
    out = np.zeros((len(rows), k), dtype=np.float64)
    if len(rows) == 0:
        return out
    dtype = np.float32 if other.dtype == np.float32 else np.float64
    # Never a copy of `other` (all of one side's factors: a service's whole replica).
    other = np.asarray(other, dtype=dtype)
    lengths = np.diff(matrix.indptr)[rows]
    base = None
    if params.kind == "implicit":
        base = (gramian(other) if other_gramian is None else other_gramian).copy()
        base[np.diag_indices(k)] += params.regularization

    def solve_part(positions: np.ndarray) -> np.ndarray:
        return _solve_part(matrix, rows[positions], lengths[positions], other, params, base)

    parts = _partition(lengths, _workers(num_threads, int(lengths.sum()) * k * k))
    if len(parts) == 1:
        out[parts[0]] = solve_part(parts[0])
    else:
        for positions, solved in zip(parts, _pool().map(solve_part, parts), strict=True):
            out[positions] = solved
    return out


def _solve_part(
    matrix: sp.csr_array,
    rows: np.ndarray,
    lengths: np.ndarray,
    other: np.ndarray,
    params: Hyperparameters,
    base: np.ndarray | None,
) -> np.ndarray:
    """Build and solve the normal equations of some rows (one worker's share)."""
    k = other.shape[1]
    lhs = np.empty((len(rows), k, k), dtype=np.float64)
    rhs = np.empty((len(rows), k), dtype=np.float64)
    long_rows = lengths >= _LONG_ROW
    for group in _groups_by_length(lengths, k, np.flatnonzero(~long_rows)):
        lhs[group], rhs[group] = _normal_equations_padded(
            matrix, rows[group], lengths[group], other, params
        )
    for position in np.flatnonzero(long_rows):
        lhs[position], rhs[position] = _normal_equations_one(
            matrix, int(rows[position]), other, params
        )
    diagonal = (slice(None), np.arange(k), np.arange(k))
    if base is not None:  # implicit
        lhs += base
        return _cholesky_solve(lhs, rhs)
    # ALS-WR: a row without data has nothing to fit, its factor stays zero.
    lhs[diagonal] += params.regularization * lengths[:, None]
    out = np.zeros((len(rows), k), dtype=np.float64)
    has_data = lengths > 0
    out[has_data] = _cholesky_solve(lhs[has_data], rhs[has_data])
    return out


def _workers(num_threads: int, work: int) -> int:
    """Threads worth using: below ~1M multiply-adds a pool costs more than it saves."""
    wanted = (os.cpu_count() or 1) if num_threads <= 0 else num_threads
    return max(1, min(wanted, work // _MIN_WORK_PER_THREAD))


def _partition(lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """Split positions into `parts` shares of similar total length (longest dealt first)."""
    if parts <= 1:
        return [np.arange(len(lengths))]
    order = np.argsort(lengths, kind="stable")[::-1]
    shares = [np.sort(order[n::parts]) for n in range(parts)]
    return [share for share in shares if len(share)]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="unlearn-solve")


def _row_weights(weights: np.ndarray, params: Hyperparameters) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry weights of the outer products and of the right-hand side."""
    if params.kind == "implicit":
        outer = params.alpha * weights
        return outer, np.where(weights > 0, 1.0 + outer, 0.0)
    return (weights != 0).astype(weights.dtype), weights


def _normal_equations_one(
    matrix: sp.csr_array, row: int, other: np.ndarray, params: Hyperparameters
) -> tuple[np.ndarray, np.ndarray]:
    """One long row: a single well-shaped matmul beats padding it into a batch."""
    start, stop = matrix.indptr[row], matrix.indptr[row + 1]
    block = other[matrix.indices[start:stop]]
    weights = matrix.data[start:stop]
    if weights[0] == weights[-1] and np.all(weights == weights[0]):
        # Equal weights (binary implicit data): the weights factor out of both sums, so the
        # block is neither scaled nor copied.
        outer_one, rhs_one = _row_weights(weights[:1], params)
        return (block.T @ block) * outer_one[0], block.sum(axis=0) * rhs_one[0]
    outer_w, rhs_w = _row_weights(weights.astype(block.dtype), params)
    # Outer-product weights are >= 0, so Z'Z with Z = sqrt(w) * block: numpy hands a
    # product of a matrix with its own transpose to the symmetric kernel (syrk).
    scaled = block * np.sqrt(outer_w)[:, None]
    return scaled.T @ scaled, block.T @ rhs_w


def _normal_equations_padded(
    matrix: sp.csr_array,
    rows: np.ndarray,
    lengths: np.ndarray,
    other: np.ndarray,
    params: Hyperparameters,
) -> tuple[np.ndarray, np.ndarray]:
    """Many short rows at once, padded to the longest (padding is zero, of weight 0)."""
    block, weights = _gather(matrix, rows, lengths, other)
    outer_w, rhs_w = _row_weights(weights, params)
    block_t = block.transpose(0, 2, 1)
    lhs = np.matmul(block_t * outer_w[:, None, :], block)
    rhs = np.matmul(block_t, rhs_w[:, :, None])[:, :, 0]
    return lhs, rhs


def _groups_by_length(lengths: np.ndarray, k: int, positions: np.ndarray) -> Iterator[np.ndarray]:
    """The given positions, sorted by row length, cut into blocks of bounded padded size."""
    order = positions[np.argsort(lengths[positions], kind="stable")]
    widths = np.maximum(lengths[order], 1).astype(np.int64) * k
    start = 0
    while start < len(order):
        # Sorted ascending, a block's padded size (rows x last width) only grows with its end,
        # so the largest end within budget is found by one binary search.
        sizes = (np.arange(start, len(order)) - start + 1) * widths[start:]
        stop = start + max(int(np.searchsorted(sizes, _BLOCK_ELEMENTS, side="right")), 1)
        yield order[start:stop]
        start = stop


def _gather(
    matrix: sp.csr_array, rows: np.ndarray, lengths: np.ndarray, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, max_len, k) block of the other side's factors and (rows, max_len) weights.
    The padding past a row's length has weight 0 and repeats the row's first neighbour: a
    factor the row reads anyway (a zero weight alone would not cancel a non-finite factor
    of some other row), and no copy or zeroing of the block."""
    width = max(int(lengths.max()), 1)
    if lengths.max() == 0:  # only empty rows (the matrix may hold no entry at all)
        k = other.shape[1]
        return np.zeros((len(rows), 1, k), other.dtype), np.zeros((len(rows), 1), other.dtype)
    offsets = np.arange(width)
    valid = offsets[None, :] < lengths[:, None]
    starts = matrix.indptr[rows]
    positions = np.where(valid, starts[:, None] + offsets[None, :], 0)
    first = matrix.indices[np.minimum(starts, len(matrix.indices) - 1)]
    columns = np.where(valid, matrix.indices[positions], first[:, None])
    weights = np.where(valid, matrix.data[positions], 0.0).astype(other.dtype)
    block = other[columns]
    empty = lengths == 0
    if empty.any():  # nothing of its own to repeat
        block[empty] = 0
    return block, weights


def _cholesky_solve(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve each (k x k) SPD system of a batch by Cholesky (LAPACK posv); rhs is (batch, k).

    One posv call per system: for k ~ 64 this beats scipy's batched solve, which also
    estimates every condition number.
    """
    if not (np.all(np.isfinite(lhs)) and np.all(np.isfinite(rhs))):
        raise SingularSystemError("row normal equations contain NaN or infinity")
    out = np.empty(rhs.shape, dtype=np.float64)
    for n in range(len(lhs)):
        _, out[n], info = _posv(lhs[n], rhs[n], lower=True)
        if info != 0:
            raise SingularSystemError(
                f"row normal equations are not positive definite (LAPACK posv info={info})"
            )
    return out
