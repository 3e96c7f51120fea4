"""The forgetting cycle of one owner: rounds of exact re-solves on the active set, the
touched rows' last re-solve, and one commit of what moved.

Until the flush, the cycle's re-solves live in the replica only (the batches between its
slices solve against them) and the values Redis holds are kept aside (`stored`). The
flush writes, per owned shard in one fenced commit, every row that moved more than the
write tolerance since it was stored, with the objective's exact change; every other row
goes back to its stored value. So Redis and the factors topic see a cycle once, at its
end, and only the rows it really moved. A cycle cut short (a crash, Redis away, the shard
taken) loses only its uncommitted rounds: the touched rows were committed by their batch
before its receipts went out.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from consumer.consolidation.cycle import FLUSH, REST, ROUNDS, TOUCH_UP, Cycle, CyclePolicy
from consumer.consolidation.forgetting import Forgetting, Moved
from consumer.shards.ledger import touched_terms
from consumer.state.layout import ROW_DTYPE, shard_of
from consumer.state.shard_log import ShardWrite
from unlearn_core.active_set import SIDES, Pressure, confidences, other_side, row_mass
from unlearn_core.model import pair_scores
from unlearn_core.objective import all_pairs_term
from unlearn_core.solve import solve_rows

log = logging.getLogger("unlearn.consolidation")

# The touched rows' last re-solve alternates until what is left of their movement (the
# last step's, projected at its rate of shrinking) is below this, relatively: a deleted
# pair moves its rows by 2e-4 or more on MovieLens (docs/state.md), so a row within 1e-5
# of its exact solve without the pair is 20 times closer to it than to the solve with it;
# float32 storage itself rounds at 6e-8.
TOUCH_UP_PRECISION = 1e-5
F32_MAX = float(np.finfo(np.float32).max)
# Rows' stored interactions a cycle keeps between its rounds (each round reads its rows'
# data, and a row is re-solved in several rounds): bounded, and dropped as a whole beyond.
ROW_CACHE_BYTES = 64 << 20


@dataclass
class Step:
    """What one call of `Consolidator.step` did."""

    phase: str
    side: str = ""
    rows: int = 0  # rows looked at
    solved: int = 0  # rows re-solved
    seconds: float = 0.0
    written: int = 0  # rows a flush wrote
    ended: bool = False  # the cycle ended with this step
    overtime: int = 0  # of `solved`, rows re-solved in overtime (past the settle rule)


class Consolidator:
    def __init__(self, policy: CyclePolicy | None = None) -> None:
        self.policy = policy or CyclePolicy()
        self.cycle = Cycle(self.policy)
        self.pressure = Pressure()
        # side -> row -> the value Redis holds, for rows the cycle moved and has not written
        self.stored: dict[str, dict[int, np.ndarray]] = {side: {} for side in SIDES}
        self.touched: dict[str, set[int]] = {side: set() for side in SIDES}
        self.engine = None  # consumer.engine.Engine
        self.last: dict | None = None  # the last cycle's figures, for status and tests
        # The settle rule ended the last cycle while events arrived: it is taken up again
        # once the input is quiet (cycle.py says why).
        self.unfinished = False
        self._quiet = False
        # Deleted pairs since the model was last at rest, and the rows re-solved for them
        # in overtime (past the settle rule, the input quiet): at most `quiet_reach` a pair.
        self.forgotten_since_rest = 0
        self.overtime_solved = 0
        self._solved_in_round = 0
        self.rows = _RowCache()
        self._pairs_watched = (np.empty((0, 2), np.int64), np.empty((0, 2), np.int64))

    def attach(self, engine) -> None:
        """Work through this engine from now on. A rebuilt engine read its replica from
        Redis: the cycle's uncommitted rows are gone from it, so they are forgotten here."""
        if engine is not self.engine:
            self.engine = engine
            self.stored = {side: {} for side in SIDES}
            self.rows = _RowCache()

    @property
    def resting(self) -> bool:
        """No cycle under way, and none left to take up."""
        return self.cycle.resting and not self.unfinished

    # ----- what starts a cycle ----------------------------------------------------------

    def seed(self, forgetting: Forgetting) -> None:
        """A commit forgot something: press on the neighbours of what moved, watch its
        deleted pairs, remember its touched rows."""
        if not forgetting:
            return
        engine = self.engine
        for side, moved in forgetting.moved.items():
            if not len(moved.rows):
                continue
            if moved.neighbours is None:
                moved = self._neighbours_owned(side, moved)
            self.pressure.push(side, moved.movements, moved.lengths, moved.neighbours,
                               moved.confidence)  # fmt: skip
            if len(moved.neighbours):  # observed pairs near the deletion, as (user, item)
                owners = np.repeat(moved.rows, moved.lengths)
                pairs = (owners, moved.neighbours) if side == "user" else (moved.neighbours, owners)
                self.cycle.observed.add(np.stack(pairs, axis=1))
        for side, rows in forgetting.touched.items():
            self.touched[side] |= {r for r in rows if shard_of(r, engine.shards) in engine.owned}
        self.cycle.open()
        self.cycle.deleted.add(forgetting.pairs)
        self.cycle.figures.forgotten += len(forgetting.pairs)
        self.forgotten_since_rest += len(forgetting.pairs)

    def _neighbours_owned(self, side: str, moved: Moved) -> Moved:
        """Rows another owner moved: their neighbours among this owner's rows, read here
        (a user's row from its shard; an item's slices in the owned shards)."""
        engine = self.engine
        if side == "user":
            data = engine.state.read_row_bytes("user", moved.rows, engine.shards)
        else:
            owned = sorted(engine.owned)
            found = engine.state.read_slice_bytes({s: moved.rows.tolist() for s in owned})
            data = [b"".join(found.get((s, i), b"") for s in owned) for i in moved.rows.tolist()]
        lengths = np.array([len(d) for d in data], dtype=np.int64) // ROW_DTYPE.itemsize
        joined = np.frombuffer(b"".join(data), dtype=ROW_DTYPE)
        return Moved(moved.rows, moved.movements, lengths, joined["other"].astype(np.int64),
                     confidences(joined["weight"], engine.params))  # fmt: skip

    def committed(self, solved: dict[str, np.ndarray]) -> None:
        """A batch wrote these rows (at their current value): nothing of the cycle's to keep
        aside for them any more."""
        for side, rows in solved.items():
            stored = self.stored[side]
            for row in rows.tolist():
                stored.pop(row, None)
            self.rows.forget(side, rows)  # their data may have changed too

    # ----- the cycle, a step at a time ------------------------------------------------------

    def due(self, since_last_event_ms: float, input_waiting: bool) -> bool:
        self._quiet = not input_waiting and since_last_event_ms >= self.policy.quiet_ms
        if self.cycle.resting:
            return self.unfinished and self._quiet
        return self.cycle.due(since_last_event_ms, input_waiting)

    def step(self) -> Step:
        """One slice of the cycle: part of a round, the touch-up, or the flush."""
        started = time.perf_counter()
        cycle = self.cycle
        if cycle.resting and self.unfinished:  # taken up: on to rest
            self.unfinished = False
            cycle.take_up()
        if cycle.phase == ROUNDS:
            out = self._round_slice()
        elif cycle.phase == TOUCH_UP:
            out = self._touch_up()
        elif cycle.phase == FLUSH:
            out = self._flush_and_end()
        else:
            out = Step(REST)
        out.seconds = time.perf_counter() - started
        if cycle.phase == ROUNDS and out.rows:
            cycle.sliced(out.seconds)
        cycle.figures.seconds += out.seconds
        return out

    def _round_slice(self) -> Step:
        cycle = self.cycle
        rows = cycle.next_rows()
        while rows is None:  # the round under way is done: the next one, or the end
            if not self._next_round():
                cycle.phase = TOUCH_UP
                return Step(ROUNDS)
            rows = cycle.next_rows()
        side = cycle.side
        solved = self._resolve(side, rows, pressed_only=True)
        self._solved_in_round += solved
        cycle.figures.solved += solved
        overtime = solved if cycle.overtime else 0
        if cycle.overtime:
            self.overtime_solved += solved
            if self.overtime_solved >= self.policy.quiet_reach * self.forgotten_since_rest:
                cycle.figures.ended_by = "reach"  # overtime's share is spent
                cycle.phase = TOUCH_UP
        return Step(ROUNDS, side, len(rows), solved, overtime=overtime)

    def _next_round(self) -> bool:
        """Close the round under way; open the next. False when the rounds are over."""
        cycle = self.cycle
        if len(cycle.queue) or cycle.position:  # a round was under way
            cycle.round_done(self._solved_in_round > 0)
        elif cycle.pair_start is not None:
            cycle.round_done(False)
        self._solved_in_round = 0
        if cycle.side == "item" and cycle.pair_start is not None:
            if cycle.pair_done(*self._pair_scores(), quiet=self._quiet):
                return False
            cycle.pair_start = None
        if cycle.at_rest_early():
            return False
        side = "user" if cycle.pair_start is None else "item"
        if side == "user":
            self.engine.refresh()  # what other owners committed meanwhile
            cycle.pair_start = self._sample_scores()
        cycle.start_round(side, self._owned_pressed(side))
        return True

    def _owned_pressed(self, side: str) -> np.ndarray:
        engine = self.engine
        rows = self.pressure.pressed(side)
        return rows[np.isin(shard_of(rows, engine.shards), list(engine.owned))]

    def _sample_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples' pairs and their scores now (deleted, observed)."""
        factors = self.engine.replica.factors
        out = []
        for sample in (self.cycle.deleted, self.cycle.observed):
            pairs = sample.pairs
            inside = (pairs[:, 0] < len(factors["user"])) & (pairs[:, 1] < len(factors["item"]))
            pairs = pairs[inside]
            out.append((pairs, pair_scores(factors["user"], factors["item"], pairs[:, 0],
                                           pairs[:, 1])))  # fmt: skip
        self._pairs_watched = (out[0][0], out[1][0])
        return out[0][1], out[1][1]

    def _pair_scores(self):
        before = self.cycle.pair_start
        factors = self.engine.replica.factors
        deleted, observed = self._pairs_watched
        after = (
            pair_scores(factors["user"], factors["item"], deleted[:, 0], deleted[:, 1]),
            pair_scores(factors["user"], factors["item"], observed[:, 0], observed[:, 1]),
        )
        return (before[0], after[0]), (before[1], after[1])

    def _resolve(self, side: str, rows: np.ndarray, pressed_only: bool) -> int:
        """Re-solve these rows exactly (those pressed over the tolerance, if asked), keep
        their stored values aside, press on their neighbours. Returns how many it solved."""
        engine, pressure, tolerance = self.engine, self.pressure, self.policy.tolerance
        rows = rows[rows < len(engine.replica.factors[side])]
        if pressed_only:
            rows = rows[pressure.over(side, rows, tolerance)]
        if not len(rows):
            return 0
        data = _RowData.read(engine, side, rows, self.rows)
        if pressed_only:
            pressure.know_mass(side, rows, data.mass(engine.replica.factors[other_side(side)]))
            chosen = pressure.ratio(side, rows) > tolerance
            if not chosen.any():
                return 0
            data = data.subset(chosen)
        self._solve(side, data)
        return len(data.rows)

    def _solve(self, side: str, data: _RowData) -> np.ndarray:
        """Solve these rows exactly against the replica; keep their stored values aside,
        press on their neighbours. Returns each row's relative movement."""
        engine, replica = self.engine, self.engine.replica
        rows, other = data.rows, other_side(side)
        solved = solve_rows(
            data.matrix(len(replica.factors[other])), np.arange(len(rows)),
            replica.factors[other], engine.params, replica.gramians.full(other),
            num_threads=engine.solve_threads,
        )  # fmt: skip
        bad = ~np.isfinite(solved).all(axis=1) | (np.abs(solved).max(axis=1) > F32_MAX)
        solved[bad] = replica.factors[side][rows[bad]]  # a row no float32 holds stays
        old = replica.factors[side][rows].copy()
        stored = self.stored[side]
        for row, value in zip(rows.tolist(), old, strict=True):
            stored.setdefault(row, value)
        replica.set_rows(side, rows, solved)
        movements = np.linalg.norm(replica.factors[side][rows] - old, axis=1)
        self.pressure.relieve(side, rows)
        self.pressure.push(side, movements, data.lengths, data.neighbours, data.confidence)
        scale = np.maximum(np.linalg.norm(replica.factors[side][rows], axis=1), 1e-30)
        return movements / scale

    def _touch_up(self) -> Step:
        """The touched rows once more, alternating, until none moves: at rest each is the
        exact solve of its data against the other side as the cycle left it."""
        engine = self.engine
        data = {}
        for side in SIDES:
            rows = np.array(sorted(self.touched[side]), dtype=np.int64)
            rows = rows[np.isin(shard_of(rows, engine.shards), list(engine.owned))]
            rows = rows[rows < len(engine.replica.factors[side])]
            if len(rows):
                data[side] = _RowData.read(engine, side, rows, self.rows)
        solved, previous = 0, None
        for _ in range(self.policy.touch_ups if data else 0):
            moved = max(float(self._solve(side, d).max(initial=0.0)) for side, d in data.items())
            solved += sum(len(d.rows) for d in data.values())
            # Alternating solves converge linearly: what is left after a step that moved
            # m, shrinking by q a step, is about m q / (1 - q).
            if previous is None or previous == 0.0:
                left = moved
            else:
                shrink = min(moved / previous, 0.99)
                left = moved * shrink / (1.0 - shrink)
            if left <= TOUCH_UP_PRECISION:
                break
            previous = moved
        self.cycle.figures.solved += solved
        self.cycle.phase = FLUSH
        return Step(TOUCH_UP, rows=solved, solved=solved)

    def _flush_and_end(self) -> Step:
        written = self.flush()
        figures = self.cycle.end()
        figures.written += written
        # Left to be taken up: its touched rows are touched up again at its real end, so
        # that at rest each is the exact solve of its data against what the rounds left.
        self.unfinished = figures.ended_by == "settled"
        self.last = {
            "rounds": figures.rounds, "solved": figures.solved, "forgotten": figures.forgotten,
            "reach": figures.reach, "written": figures.written, "ended_by": figures.ended_by,
            "seconds": figures.seconds, "overtime_solved": self.overtime_solved,
        }  # fmt: skip
        if not self.unfinished:  # at rest: overtime's share starts again
            self.forgotten_since_rest = self.overtime_solved = 0
            self.touched = {side: set() for side in SIDES}
        log.info(
            "forgetting cycle ended (%s) after %d round pairs: %d rows re-solved for %d "
            "deleted pairs (%.1f each), %d written, %.2f s", figures.ended_by, figures.rounds,
            figures.solved, figures.forgotten, figures.reach, figures.written, figures.seconds,
        )  # fmt: skip
        return Step(FLUSH, written=written, ended=True)

    def rest(
        self, forgetting: list[Forgetting] = (), steps: int = 1_000_000, quiet: bool = False
    ) -> dict | None:
        """Seed these, then run the cycle until it rests (tests, offline callers): the
        last cycle's figures. Not `quiet`, the settle rule ends it as while events arrive
        (it may be left `unfinished`); `quiet`, as once the input is quiet: a cycle left
        unfinished is taken up, and the rounds run to rest, max_rounds or overtime's share."""
        self._quiet = quiet
        for part in forgetting:
            self.seed(part)
        for _ in range(steps):
            if self.resting if quiet else self.cycle.resting:
                break
            self.step()
        return self.last

    # ----- writing what moved -------------------------------------------------------------

    def flush(self) -> int:
        """Commit every kept-aside row that moved more than the write tolerance (touched
        rows: more than float32 precision), each owned shard in one fenced commit with the
        objective's exact change; put the others back. Returns the rows written."""
        engine = self.engine
        if engine is None or not any(self.stored.values()):
            return 0
        replica = engine.replica
        chosen: dict[str, np.ndarray] = {}
        for side in SIDES:
            rows = np.array(sorted(self.stored[side]), dtype=np.int64)
            if not len(rows):
                chosen[side] = rows
                continue
            before = np.array([self.stored[side][r] for r in rows.tolist()], dtype=np.float32)
            now = replica.factors[side][rows]
            scale = np.maximum(np.linalg.norm(before, axis=1), 1e-30)
            moved = np.linalg.norm(now - before, axis=1) / scale
            touched = np.isin(rows, list(self.touched[side]))
            limit = np.where(touched, TOUCH_UP_PRECISION, self.policy.write_tolerance)
            owned = np.isin(shard_of(rows, engine.shards), list(engine.owned))
            keep = (moved > limit) & owned
            back = ~keep & owned
            replica.set_rows(side, rows[back], before[back])  # back to what Redis holds
            for shard in set(shard_of(rows[~owned], engine.shards).tolist()):
                replica.known.pop(shard, None)  # another owner's now: read it again
            chosen[side] = rows[keep]
        writes = self._writes(chosen)
        self.stored = {side: {} for side in SIDES}
        if not writes:
            return 0
        written = engine.commit_owned(writes)
        return sum(
            len(w.factors["user"]) + len(w.factors["item"])
            for s, w in writes.items()
            if s in written
        )

    def _writes(self, chosen: dict[str, np.ndarray]) -> dict[int, ShardWrite]:
        """Per shard, the chosen rows' factors and the objective's exact change (their
        terms with the stored values against the new ones, and the all-pairs term)."""
        engine = self.engine
        replica, params, shards = engine.replica, engine.params, engine.shards
        users, items = chosen["user"], chosen["item"]
        if not len(users) and not len(items):
            return {}
        user_rows, item_rows = (
            {
                row: np.frombuffer(value, dtype=ROW_DTYPE)
                for row, value in zip(
                    chosen[side].tolist(), self.rows.get(engine, side, chosen[side]), strict=True
                )
            }
            for side in SIDES
        )
        now = {side: replica.factors[side][chosen[side]].copy() for side in SIDES}

        def terms() -> tuple[dict[int, float], float]:
            g = {side: replica.gramians.full(side) for side in SIDES}
            return touched_terms(
                user_rows, item_rows, users, items, replica.factors["user"],
                replica.factors["item"], params, shards,
            ), all_pairs_term(g["user"], g["item"], params)  # fmt: skip

        after, all_after = terms()
        for side in SIDES:
            before = np.array([self.stored[side][r] for r in chosen[side].tolist()],
                              dtype=np.float32).reshape(-1, engine.params.factors)  # fmt: skip
            replica.set_rows(side, chosen[side], before)
        before_terms, all_before = terms()
        for side in SIDES:
            replica.set_rows(side, chosen[side], now[side])
        writes: dict[int, ShardWrite] = defaultdict(ShardWrite)
        for side in SIDES:
            for row, value in zip(chosen[side].tolist(), now[side], strict=True):
                writes[shard_of(row, shards)].factors[side][row] = value
        for shard in writes:
            writes[shard].loss_delta = after.get(shard, 0.0) - before_terms.get(shard, 0.0)
            writes[shard].status["consolidation"] = "settled"
        writes[min(writes)].loss_delta += all_after - all_before
        return dict(writes)

    def abandon(self, shards: set[int]) -> None:
        """These shards went to another owner: put their rows back as Redis holds them and
        let their pressure go."""
        engine = self.engine
        for side in SIDES:
            rows = [r for r in self.stored[side] if shard_of(r, engine.shards) in shards]
            if rows:
                values = np.array([self.stored[side].pop(r) for r in rows], dtype=np.float32)
                engine.replica.set_rows(side, np.array(rows, dtype=np.int64), values)
            self.touched[side] = {
                r for r in self.touched[side] if shard_of(r, engine.shards) not in shards
            }


_EMPTY = np.empty(0, dtype=ROW_DTYPE)


@dataclass
class _RowData:
    """Some rows' stored interactions, joined: what their solves and pressure read."""

    rows: np.ndarray
    lengths: np.ndarray
    neighbours: np.ndarray
    weights: np.ndarray
    confidence: np.ndarray

    @classmethod
    def read(cls, engine, side: str, rows: np.ndarray, cache: _RowCache) -> _RowData:
        data = cache.get(engine, side, rows)
        lengths = np.array([len(d) for d in data], dtype=np.int64) // ROW_DTYPE.itemsize
        joined = np.frombuffer(b"".join(data), dtype=ROW_DTYPE)
        neighbours = joined["other"].astype(np.int64)
        engine.replica.grow(other_side(side), int(neighbours.max(initial=-1)) + 1)
        return cls(rows, lengths, neighbours, joined["weight"].astype(np.float64),
                   confidences(joined["weight"], engine.params))  # fmt: skip

    def subset(self, mask: np.ndarray) -> _RowData:
        entries = np.repeat(mask, self.lengths)
        return _RowData(self.rows[mask], self.lengths[mask], self.neighbours[entries],
                        self.weights[entries], self.confidence[entries])  # fmt: skip

    def mass(self, other: np.ndarray) -> np.ndarray:
        return row_mass(self.lengths, self.neighbours, self.confidence, other)

    def matrix(self, columns: int) -> sp.csr_array:
        indptr = np.concatenate([[0], np.cumsum(self.lengths)])
        return sp.csr_array(
            (self.weights, self.neighbours.astype(np.int32), indptr),
            shape=(len(self.rows), columns),
        )


def _join(slices: list[np.ndarray | None]) -> np.ndarray:
    parts = [s for s in slices if s is not None and len(s)]
    return np.concatenate(parts) if parts else _EMPTY


class _RowCache:
    """Rows' stored interactions, as read (bytes), kept while they do not change."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, bytes]] = {side: {} for side in SIDES}
        self.size = 0

    def get(self, engine, side: str, rows: np.ndarray) -> list[bytes]:
        known = self.rows[side]
        missing = np.array([r for r in rows.tolist() if r not in known], dtype=np.int64)
        if len(missing):
            found = engine.state.read_row_bytes(side, missing, engine.shards)
            if self.size + sum(len(b) for b in found) > ROW_CACHE_BYTES:
                self.rows, self.size = {s: {} for s in SIDES}, 0
                known = self.rows[side]
            for row, value in zip(missing.tolist(), found, strict=True):
                known[row] = value
                self.size += len(value)
        return [known[r] for r in rows.tolist()]

    def forget(self, side: str, rows: np.ndarray) -> None:
        known = self.rows[side]
        for row in rows.tolist():
            value = known.pop(row, None)
            if value is not None:
                self.size -= len(value)
