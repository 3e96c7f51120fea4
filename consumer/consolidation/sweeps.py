"""ALS continued on request: full sweeps of the owned shards, for whoever wants a model
brought closer to convergence (`unlearn consolidate`, or `consolidate_sweeps` on start).

Never started by the service on its own: a loaded or swapped model is the operator's, and
forgetting needs only its cycles (worker.py). A sweep runs as slices, blocks of rows of one
side re-solved exactly against the other side's current factors (block coordinate
descent: the objective never increases), each committed at once with its exact change of
the objective. The sweeps end after the number asked, or once a sweep lowers the objective
by less than `tolerance` of itself.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from consumer.shards.batch import _csr
from consumer.state.layout import rows_of_shard, shard_of
from consumer.state.shard_log import ShardWrite
from unlearn_core.active_set import SIDES, other_side
from unlearn_core.objective import all_pairs_term, observed_term_values, row_penalty_values
from unlearn_core.solve import solve_rows


@dataclass
class SliceOutcome:
    """One block of a sweep."""

    side: str
    start: int
    rows: int
    loss_before: float
    loss: float
    seconds: float = 0.0


@dataclass
class SweepOutcome:
    loss_before: float
    loss: float
    slices: list[SliceOutcome]

    @property
    def improvement(self) -> float:
        """The sweep's relative decrease of the objective."""
        return (self.loss_before - self.loss) / max(abs(self.loss_before), 1e-300)


@dataclass
class SweepRequest:
    """Sweeps asked for: at most `sweeps` (0: until the tolerance is met)."""

    sweeps: int = 0
    tolerance: float = 1e-4
    done: int = 0
    side: int = 0
    start: int = 0
    rows_per_slice: int = 256
    sweep_loss: float | None = None  # the objective when the sweep under way began

    def finished(self, improvement: float | None) -> bool:
        if self.sweeps and self.done >= self.sweeps:
            return True
        return improvement is not None and improvement < self.tolerance


class Sweeps:
    """Full sweeps through an engine's owned shards."""

    def __init__(self, engine) -> None:  # engine: consumer.engine.Engine
        self.engine = engine
        self._order: dict[str, tuple[tuple, np.ndarray]] = {}

    def sizes(self) -> dict[str, int]:
        return {side: len(self.order(side)) for side in SIDES}

    def order(self, side: str) -> np.ndarray:
        """The owned shards' rows of one side, shard by shard: a slice is a run of them."""
        engine = self.engine
        size = len(engine.replica.factors[side])
        key = (size, tuple(sorted(engine.owned)))
        if side not in self._order or self._order[side][0] != key:
            order = [rows_of_shard(s, engine.shards, size) for s in sorted(engine.owned)]
            rows = np.concatenate(order) if order else np.empty(0, np.int64)
            self._order[side] = (key, rows)
        return self._order[side][1]

    def step(self, request: SweepRequest, slice_ms: float = 10.0) -> tuple[SliceOutcome, bool]:
        """The request's next slice; True once it completed the request's last sweep."""
        sizes = self.sizes()
        if request.side == 0 and request.start >= sizes["user"]:
            request.side, request.start = 1, 0
        if request.sweep_loss is None:
            request.sweep_loss = self.engine.loss
        outcome = self.slice(SIDES[request.side], request.start, request.rows_per_slice)
        request.start += outcome.rows
        if outcome.seconds > 0:
            scaled = request.rows_per_slice * min(max(slice_ms / 1000 / outcome.seconds, 0.5), 2)
            request.rows_per_slice = int(min(max(scaled, 16), 8192))
        if request.side == 0 or request.start < sizes["item"]:
            return outcome, False
        improvement = (request.sweep_loss - outcome.loss) / max(abs(request.sweep_loss), 1e-300)
        request.done += 1
        request.side, request.start, request.sweep_loss = 0, 0, None
        return outcome, request.finished(improvement)

    def sweep(self, rows_per_slice: int = 1024) -> SweepOutcome:
        """One full sweep of the owned shards as slices (every user block, then items)."""
        first = self.engine.loss
        slices = []
        for side in SIDES:
            for start in range(0, len(self.order(side)), rows_per_slice):
                slices.append(self.slice(side, start, rows_per_slice))
        return SweepOutcome(first, self.engine.loss, slices)

    def slice(self, side: str, start: int, count: int) -> SliceOutcome:
        """Re-solve `count` rows of one side of the owned shards, from position `start` of
        their order, exactly, against the current factors of the other; committed at once."""
        engine = self.engine
        started = time.perf_counter()
        engine.refresh()
        rows = self.order(side)[start : start + count].astype(np.int64)
        loss = engine.loss
        out = SliceOutcome(side, start, len(rows), loss, loss)
        if not len(rows):
            return out
        other = other_side(side)
        stored = engine.state.read_rows(side, rows, engine.shards)
        replica = engine.replica
        matrix = _csr(stored, len(replica.factors[other]))
        before = self._block_terms(side, rows, matrix)
        gramians = {s: replica.gramians.full(s) for s in SIDES}
        solved = solve_rows(
            matrix, np.arange(len(rows)), replica.factors[other], engine.params,
            replica.gramians.full(other), num_threads=engine.solve_threads,
        )  # fmt: skip
        if (
            not np.isfinite(solved).all()
            or np.abs(solved).max(initial=0) > np.finfo(np.float32).max
        ):
            raise ArithmeticError(f"a {side} slice gave factors no float32 holds")
        old = replica.factors[side][rows].copy()
        replica.set_rows(side, rows, solved)
        try:
            after = self._block_terms(side, rows, matrix)
            writes: dict[int, ShardWrite] = defaultdict(ShardWrite)
            for (shard, value_before), value_after in zip(
                before.items(), after.values(), strict=True
            ):
                writes[shard].loss_delta += value_after - value_before
            for n in rows.tolist():
                writes[shard_of(n, engine.shards)].factors[side][n] = replica.factors[side][n]
            change = all_pairs_term(
                replica.gramians.full("user"), replica.gramians.full("item"), engine.params
            ) - all_pairs_term(gramians["user"], gramians["item"], engine.params)
            writes[min(writes)].loss_delta += change
            engine.commit_owned(dict(writes))
        except BaseException:
            replica.set_rows(side, rows, old)
            raise
        out.loss = engine.loss
        out.seconds = time.perf_counter() - started
        return out

    def _block_terms(self, side: str, rows: np.ndarray, matrix) -> dict[int, float]:
        """Per shard, the observed terms of these rows' pairs (and their ALS-WR penalties),
        with the current factors: all that a block's re-solve changes besides Gramians."""
        engine = self.engine
        other = other_side(side)
        mine, theirs = engine.replica.factors[side], engine.replica.factors[other]
        owners = np.repeat(rows, np.diff(matrix.indptr))
        scores = np.einsum("nk,nk->n", mine[owners], theirs[matrix.indices], dtype=np.float64)
        values = observed_term_values(scores, matrix.data, engine.params)
        per_row = np.bincount(np.repeat(np.arange(len(rows)), np.diff(matrix.indptr)),
                              weights=values, minlength=len(rows))  # fmt: skip
        norms = np.sum(mine[rows].astype(np.float64) ** 2, axis=1)
        per_row = per_row + row_penalty_values(np.diff(matrix.indptr), norms, engine.params)
        out: dict[int, float] = defaultdict(float)
        for row, value in zip(rows.tolist(), per_row.tolist(), strict=True):
            out[shard_of(row, engine.shards)] += value
        return dict(sorted(out.items()))
