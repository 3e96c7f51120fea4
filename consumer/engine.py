"""The micro-batch engine: a batch of events in, Unlearn-ALS on the touched rows, state out.

Per batch: skip events already applied (offsets), resolve ids, drop interactions older
than a deletion of their scope (tombstones), edit the touched rows, re-solve every touched
user then every touched item exactly (unlearn_core.solve_rows), and make it all durable in
one redo-logged commit (store.commit_batch). Receipts are built here and recorded with the
state; the service publishes them only after the commit.

The engine keeps a replica of all factors in memory: the solves need the factors of every
neighbour of a touched row, and reading them from Redis per batch would cost more than the
solves. Several engines (instances) may share a namespace: each batch runs under the
namespace's write lease (state/lease.py), first bringing the replica up to date with what
other instances committed since (the change log), and every write is fenced by the
lease's token, so batches from different instances apply one after the other.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import redis
import scipy.sparse as sp

from consumer.events import Deletion, Interaction, Source
from consumer.receipts import Receipt
from consumer.state.layout import (
    ROW_DTYPE,
    item_tombstone,
    pair_tombstone,
    receipt_shard,
    shard_major,
    shard_of,
    tombstone,
    user_tombstone,
)
from consumer.state.lease import LeaseBusy, LeaseLost
from consumer.state.store import SIDES, ModelState, ShardWrite
from unlearn_core.convergence import relative_change
from unlearn_core.gramians import Gramians
from unlearn_core.interactions import Interactions
from unlearn_core.loss import loss
from unlearn_core.model import pair_scores
from unlearn_core.objective import all_pairs_term, observed_terms, row_penalties
from unlearn_core.rows import merge_events
from unlearn_core.solve import solve_rows

SAMPLE_PAIRS = 4096
# The largest value a float32 holds: stored weights and the confidences built from them.
_F32_MAX = float(np.finfo(np.float32).max)
_NOTHING_LOADED = -1  # generation of an engine whose replica is still empty


def source_key(source: Source) -> str:
    return source.key


class Unprocessable(Exception):
    """Events the state cannot take (a pair's weights sum beyond float32): named, so the
    service dead-letters exactly them and applies the rest of the batch."""

    def __init__(self, sources: list[Source], detail: str) -> None:
        super().__init__(detail)
        self.sources = sources
        self.detail = detail


class BatchFailed(Exception):
    """The batch failed before anything of it was written (its in-memory effects undone):
    some event in it cannot be processed. The service splits the batch to find it."""


class StateRolledBack(Exception):
    """Redis holds older offsets than this engine committed: the state was restored from
    an older snapshot (or a failover lost writes). The lost events must be replayed."""

    def __init__(self, behind: dict[str, tuple[int, int]]) -> None:
        # partition key -> (offset the state holds, offset this engine had committed)
        super().__init__(
            ", ".join(f"{k}: state at {a}, committed {c}" for k, (a, c) in behind.items())
        )
        self.behind = behind


# Failures that are not the batch's content: Redis trouble and instances taking turns.
_PASSING = (redis.RedisError, LeaseLost, LeaseBusy, StateRolledBack)


@dataclass
class BatchOutcome:
    receipts: list[Receipt] = field(default_factory=list)  # new, to publish
    resent: list[Receipt] = field(default_factory=list)  # replayed deletions
    applied: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> offset
    interactions_applied: int = 0
    interactions_applied_new: int = 0  # of them, pairs not stored before (count grows)
    interactions_late: int = 0  # covered by a deletion processed in an earlier batch
    interactions_suppressed: int = 0  # covered by a deletion of this batch (in its receipt)
    events_replayed: int = 0
    removed: int = 0  # stored interactions removed
    users_solved: int = 0
    items_solved: int = 0
    residual: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: read, solve, write
    learned_ts: list[float] = field(default_factory=list)  # event times of what was learned
    loss: float = float("nan")  # the training objective on the current data, after the batch


@dataclass
class SliceOutcome:
    """One block of a consolidation sweep."""

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
        """The sweep's relative decrease of the objective (the stopping rule's measure)."""
        return (self.loss_before - self.loss) / max(abs(self.loss_before), 1e-300)


class Engine:
    def __init__(
        self, state: ModelState, clock: Callable[[], float] = time.time, solve_threads: int = 1
    ) -> None:
        self.state = state
        self.clock = clock
        self.solve_threads = solve_threads  # BLAS stays at one thread per call
        rng = np.random.default_rng(0)
        self._sample_seed = rng.integers(0, 2**31, 2)
        self.generation = _NOTHING_LOADED
        self.head: str | None = None  # the id of the newest commit the replica reflects
        self.diverged = False  # set when a refresh found Redis on another history
        # partition key -> the last offset this engine committed: Redis holding less means
        # the state went back in time (a restore, a failover that lost writes).
        self.committed: dict[str, int] = {}
        self._order: dict[str, np.ndarray] = {}  # side -> its consolidation sweep order
        with self._exclusive():  # finishes an interrupted batch, then loads everything
            pass

    def _reload(self) -> None:
        state = self.state
        self.generation, self.head = state.head()
        self.meta = state.meta()
        self.params = self.meta.params
        self.shards = self.meta.shards
        self.factors = {side: state.read_all_factors(side, self.meta) for side in SIDES}
        self.gramians = Gramians(self.factors, self.shards)
        self.interactions = int(state.read_status().get("interactions", 0))
        self.loss = self.full_loss()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the write lease, with the replica brought up to date with Redis.

        A batch another instance left half-written (it died mid-commit) is finished first:
        its redo log holds final values, and this batch must start from them.
        """
        generation, head, pending = self.state.lease.acquire()
        try:
            recovered = pending and self.state.recover()
            if recovered:
                generation, head = self.state.head()
            reloaded = self._refresh(generation, head)
            if recovered:  # the crashed batch's objective went with it: recompute
                if not reloaded:
                    self.loss = self.full_loss()
                self.state.client.hset(self.state.layout.status, "loss", repr(self.loss))
            yield
        finally:
            self.state.lease.release()

    def _refresh(self, generation: int, head: str | None) -> bool:
        """Read the factors other instances changed since this engine last committed.

        True when everything was reloaded (and the objective recomputed from all rows).
        Each commit names the one before it, so a Redis that went back to an older
        snapshot (and perhaps moved on from there) is noticed: everything is reloaded.
        """
        if generation == self.generation and head == self.head:
            return False
        state = self.state
        changes = None
        if self.generation != _NOTHING_LOADED and generation > self.generation:
            changes = state.read_changes(self.generation, self.head)
        elif self.generation != _NOTHING_LOADED:
            self.diverged = True  # Redis is at or behind our own last commit, elsewhere
        if changes is None:
            self._reload()
            return True
        meta = state.meta()
        for side, changed in zip(SIDES, changes, strict=True):
            self.grow(side, meta.count(side))
            rows = np.array(sorted(changed), dtype=np.int64)
            if len(rows):
                self.set_rows(
                    side, rows, state.read_factors(side, rows, self.shards, self.params.factors)
                )
        status = state.read_status()
        self.interactions = int(status.get("interactions", 0))
        self.loss = float(status["loss"]) if "loss" in status else self.full_loss()
        self.generation, self.head = generation, head
        return False

    # ----- the batch ------------------------------------------------------------------

    def process(
        self,
        interactions: list[Interaction],
        deletions: list[Deletion],
        acknowledged: Mapping[str, tuple[int, int]] | None = None,
        skipped: Sequence[Source] = (),
    ) -> BatchOutcome:
        """One batch, durable when this returns.

        `acknowledged`: partition key -> the offsets [first, last] acknowledged to Kafka
        before the state lost them (after a rollback; first -1: every offset up to last);
        the receipts of those requests say `reapplied`.
        `skipped`: messages of the batch that have no effect (dead-lettered); their
        offsets are recorded as done all the same.
        """
        with self._exclusive():
            return self._process(interactions, deletions, acknowledged or {}, skipped)

    def _process(
        self,
        interactions: list[Interaction],
        deletions: list[Deletion],
        acknowledged: Mapping[str, tuple[int, int]],
        skipped: Sequence[Source],
    ) -> BatchOutcome:
        started = time.perf_counter()
        out = BatchOutcome()
        applied = self.check_not_behind()
        sources = [*(e.source for e in (*interactions, *deletions)), *skipped]
        out.applied = _advance(applied, sources)

        def done(source: Source) -> bool:
            return applied.get(source.partition_key, -1) >= source.offset

        fresh_i = [e for e in interactions if not done(e.source)]
        fresh_d = [e for e in deletions if not done(e.source)]
        out.events_replayed = len(interactions) + len(deletions) - len(fresh_i) - len(fresh_d)
        for deletion in deletions:
            if done(deletion.source):
                receipt = self._stored_receipt(deletion.source)
                if receipt is not None:
                    out.resent.append(receipt.again())
        if not fresh_i and not fresh_d:
            if any(offset > applied.get(key, -1) for key, offset in out.applied.items()):
                self._commit({}, out.applied, sources)
            return out

        batch = _Batch(self, fresh_i, fresh_d)
        try:
            batch.read()
            out.phases["read"] = time.perf_counter() - started
            batch.edit(out)
            solved = time.perf_counter()
            before = self._sample_scores()
            loss_before = batch.local_loss(batch.original) + self._global_loss()
            batch.solve()
            loss_after = batch.local_loss(batch.rows) + self._global_loss()
        except Unprocessable:
            batch.undo()
            raise
        except Exception as exc:
            if isinstance(exc, _PASSING):  # Redis trouble: the service retries
                batch.undo()
                raise
            batch.undo()
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        out.loss = self.loss + loss_after - loss_before
        out.residual = relative_change(before, self._sample_scores())
        out.users_solved, out.items_solved = len(batch.touched["user"]), len(batch.touched["item"])
        out.phases["solve"] = time.perf_counter() - solved
        written = time.perf_counter()
        out.receipts = batch.receipts(out.residual, acknowledged)
        try:
            self._commit(
                batch.shard_writes(out.receipts),
                out.applied,
                sources,
                status=self._status(out),
                interactions_delta=out.interactions_applied_new - out.removed,
            )
        except BaseException:
            batch.undo()  # whatever Redis holds now, the replica is rebuilt from it
            raise
        self.loss = out.loss
        self.interactions += out.interactions_applied_new - out.removed
        out.phases["write"] = time.perf_counter() - written
        return out

    def check_not_behind(self) -> dict[str, int]:
        """The state's applied offsets; StateRolledBack when they are older than this
        engine's own commits (Redis restored from an older snapshot, a lossy failover)."""
        applied = self.state.read_applied()
        behind = {
            key: (applied.get(key, -1), offset)
            for key, offset in self.committed.items()
            if applied.get(key, -1) < offset
        }
        if behind:
            raise StateRolledBack(behind)
        return applied

    def _commit(
        self,
        writes: dict[int, ShardWrite],
        applied: dict[str, int],
        sources: list[Source] | None = None,
        **kw,
    ) -> None:
        marks = _marks(sources or [])
        self.generation, self.head = self.state.commit_batch(writes, applied, marks=marks, **kw)
        self.committed.update(applied)

    # ----- consolidation --------------------------------------------------------------

    def full_loss(self) -> float:
        """The objective on all stored data, from scratch (start-up, after every sweep)."""
        return loss(self._all_data(), self.factors["user"], self.factors["item"], self.params)

    def _all_data(self) -> Interactions:
        rows = self.state.read_all_rows("user", self.meta)
        n_users, n_items = (len(self.factors[side]) for side in SIDES)
        return _interactions(rows, n_users, n_items, self.params.kind)

    def _global_loss(self) -> float:
        """The objective's terms that depend on all factors at once (the implicit model's
        all-pairs term), from the Gramians: a batch updates the rest from its rows."""
        return all_pairs_term(self.gramians.full("user"), self.gramians.full("item"), self.params)

    def consolidate_slice(self, side: str, start: int, count: int) -> SliceOutcome:
        """Re-solve `count` rows of one side, from position `start` of its shard-major
        order (layout.shard_major), exactly, against the current factors of the other: one
        block of block coordinate descent. Reads only those rows; the objective cannot
        increase (each row is solved to its exact minimum)."""
        with self._exclusive():
            return self._slice(side, start, count)

    def _slice(self, side: str, start: int, count: int) -> SliceOutcome:
        started = time.perf_counter()
        other = "item" if side == "user" else "user"
        rows = self._sweep_order(side)[start : start + count]
        out = SliceOutcome(side, start, len(rows), self.loss, self.loss)
        if not len(rows):
            return out
        stored = self.state.read_rows(side, rows, self.shards)
        matrix = _csr(stored, len(self.factors[other]))
        before = self._block_terms(side, rows, matrix) + self._global_loss()
        solved = solve_rows(
            matrix, np.arange(len(rows)), self.factors[other], self.params,
            self.gramians.full(other), num_threads=self.solve_threads,
        )  # fmt: skip
        if not np.isfinite(solved).all() or np.abs(solved).max(initial=0) > _F32_MAX:
            raise ArithmeticError(f"a {side} slice gave factors no float32 holds")
        old = self.factors[side][rows].copy()
        self.set_rows(side, rows, solved)
        try:
            after = self._block_terms(side, rows, matrix) + self._global_loss()
            out.loss = self.loss + after - before
            writes: dict[int, ShardWrite] = defaultdict(ShardWrite)
            for n in rows.tolist():
                writes[shard_of(n, self.shards)].factors[side][n] = self.factors[side][n]
            for shard, write in writes.items():
                write.gramians = {side: self.gramians.shard(side, shard)}
            status = {"loss": repr(out.loss), "updated_at": repr(self.clock())}
            self._commit(dict(writes), {}, status=status)
        except BaseException:
            self.set_rows(side, rows, old)  # whatever Redis holds, the replica is rebuilt
            raise
        self.loss = out.loss
        out.seconds = time.perf_counter() - started
        return out

    def _sweep_order(self, side: str) -> np.ndarray:
        size = len(self.factors[side])
        if self._order.get(side, np.empty(0)).shape[0] != size:
            self._order[side] = shard_major(self.shards, size).astype(np.int64)
        return self._order[side]

    def _block_terms(self, side: str, rows: np.ndarray, matrix: sp.csr_array) -> float:
        """The objective's observed terms of these rows' pairs (and their ALS-WR penalties),
        with the current factors: all that a block's re-solve changes besides Gramians."""
        other = "item" if side == "user" else "user"
        mine, theirs = self.factors[side], self.factors[other]
        owners = np.repeat(rows, np.diff(matrix.indptr))
        scores = np.einsum("nk,nk->n", mine[owners], theirs[matrix.indices], dtype=np.float64)
        norms = np.sum(mine[rows].astype(np.float64) ** 2, axis=1)
        penalty = row_penalties(np.diff(matrix.indptr), norms, self.params)
        return observed_terms(scores, matrix.data, self.params) + penalty

    def consolidate(self, rows_per_slice: int = 1024) -> SweepOutcome:
        """One full sweep as slices (every user block, then every item block)."""
        first = self.loss
        slices = []
        for side in SIDES:
            for start in range(0, len(self.factors[side]), rows_per_slice):
                slices.append(self.consolidate_slice(side, start, rows_per_slice))
        return SweepOutcome(first, self.loss, slices)

    # ----- helpers --------------------------------------------------------------------

    def factors_finite(self) -> bool:
        return all(bool(np.isfinite(f).all()) for f in self.factors.values())

    def set_rows(self, side: str, rows: np.ndarray, factors: np.ndarray) -> None:
        """New factors for some rows, the Gramians following."""
        new = np.asarray(factors, dtype=np.float32)
        self.gramians.replace(side, rows, self.factors[side][rows], new)
        self.factors[side][rows] = new

    def grow(self, side: str, rows: int) -> None:
        current = self.factors[side]
        if rows > len(current):
            grown = np.zeros((rows, self.params.factors), dtype=np.float32)
            grown[: len(current)] = current
            self.factors[side] = grown

    def _partial_gramians(self, shard: int) -> dict[str, np.ndarray]:
        return {side: self.gramians.shard(side, shard) for side in SIDES}

    def _sample_scores(self) -> np.ndarray:
        users, items = self.factors["user"], self.factors["item"]
        if len(users) == 0 or len(items) == 0:
            return np.zeros(0)
        rng = np.random.default_rng(self._sample_seed)
        return pair_scores(
            users,
            items,
            rng.integers(0, len(users), SAMPLE_PAIRS),
            rng.integers(0, len(items), SAMPLE_PAIRS),
        )

    def _status(self, out: BatchOutcome) -> dict[str, str]:
        last = {
            "at": self.clock(),
            "interactions_applied": out.interactions_applied,
            "interactions_late": out.interactions_late,
            "deletions": len(out.receipts),
            "removed": out.removed,
            "users_solved": out.users_solved,
            "items_solved": out.items_solved,
            "residual": out.residual,
            "loss": out.loss,
        }
        return {
            "last_batch": json.dumps(last),
            "residual": repr(out.residual),
            "loss": repr(out.loss),
            "updated_at": repr(last["at"]),
        }

    def _stored_receipt(self, source: Source) -> Receipt | None:
        stored = self.state.read_receipt(receipt_shard(source.key, self.shards), source.key)
        return Receipt.from_json(stored) if stored is not None else None


class _Batch:
    """The working set of one batch: touched rows, edited in memory, then solved.

    Until the commit, its only effect outside itself is on the engine's factor replica
    (the solves); `undo` puts that back, so a batch that fails leaves the engine as if it
    had never run.
    """

    def __init__(self, engine: Engine, interactions: list[Interaction], deletions: list[Deletion]):
        self.engine = engine
        self.state = engine.state
        self.shards = engine.shards
        self.kind = engine.params.kind
        self.interactions = interactions
        self.deletions = deletions
        self.rows: dict[str, dict[int, np.ndarray]] = {side: {} for side in SIDES}
        self.original: dict[str, dict[int, np.ndarray]] = {side: {} for side in SIDES}
        self.touched: dict[str, set[int]] = {side: set() for side in SIDES}
        self.tombstones: dict[str, tuple[int, float]] = {}  # field -> (shard, T) to write
        # deletion position -> the distinct pairs it removed (stored, or arriving with it)
        self.removed_by: dict[int, set[tuple[int, int]]] = defaultdict(set)
        self.replaced: list[tuple[str, np.ndarray, np.ndarray]] = []  # for undo

    def read(self) -> None:
        state = self.state
        self.iu = state.allocate("user", [e.user for e in self.interactions])
        self.ii = state.allocate("item", [e.item for e in self.interactions])
        self.du = state.allocate("user", [d.user for d in self.deletions if d.user is not None])
        self.di = state.allocate("item", [d.item for d in self.deletions if d.item is not None])
        meta = state.meta()
        self.engine.grow("user", meta.users)
        self.engine.grow("item", meta.items)
        self.deletion_rows = self._deletion_indices()
        self.limits = self._tombstone_limits()
        users = set(self.iu.tolist()) | {u for u, _, _ in self.deletion_rows if u >= 0}
        items = set(self.ii.tolist()) | {i for _, i, _ in self.deletion_rows if i >= 0}
        self._load("user", users)
        self._load("item", items)
        # Whole-history deletions reach every row on the other side of the history.
        more_items = {
            int(j)
            for u, i, t in self.deletion_rows
            if i < 0
            for j in self.rows["user"][u]["other"][self.rows["user"][u]["ts"] <= t]
        }
        more_users = {
            int(v)
            for u, i, t in self.deletion_rows
            if u < 0
            for v in self.rows["item"][i]["other"][self.rows["item"][i]["ts"] <= t]
        }
        self._load("item", more_items)
        self._load("user", more_users)

    def edit(self, out: BatchOutcome) -> None:
        for position, (u, i, t) in enumerate(self.deletion_rows):
            removed = self.removed_by[position]
            if u >= 0 and i >= 0:
                if self._remove("user", u, {i}, t):
                    removed.add((u, i))
                self._remove("item", i, {u}, t)
            elif u >= 0:
                for j in self._take("user", u, t):
                    removed.add((u, j))
                    self._remove("item", j, {u}, t)
            else:
                for v in self._take("item", i, t):
                    removed.add((v, i))
                    self._remove("user", v, {i}, t)
            out.removed += len(removed)
        additions: dict[str, dict[int, list[tuple[int, float, float]]]] = {
            side: defaultdict(list) for side in SIDES
        }
        sources: dict[tuple[int, int], list[Source]] = defaultdict(list)
        for event, u, i in zip(self.interactions, self.iu.tolist(), self.ii.tolist(), strict=True):
            if event.ts <= self.limits.get((u, i), -np.inf):
                out.interactions_late += 1  # an earlier batch's deletion covers it
                continue
            covering = self._covering(u, i, event.ts)
            if covering is not None:  # this batch's deletion covers it: never learned
                self.removed_by[covering].add((u, i))
                out.interactions_suppressed += 1
                continue
            additions["user"][u].append((i, event.weight, event.ts))
            additions["item"][i].append((u, event.weight, event.ts))
            sources[(u, i)].append(event.source)
            out.interactions_applied += 1
            out.learned_ts.append(event.ts)
        for side in SIDES:
            for row, events in additions[side].items():
                before = len(self.rows[side][row])
                merged = _merge(self.rows[side][row], events, self.kind)
                if side == "user":
                    self._check_weights(row, merged, sources)
                self.rows[side][row] = merged
                self.touched[side].add(row)
                if side == "user":
                    out.interactions_applied_new += len(self.rows[side][row]) - before

    def _covering(self, u: int, i: int, ts: float) -> int | None:
        """The first deletion of this batch whose scope and time cover the pair's event."""
        for position, (du, di, t) in enumerate(self.deletion_rows):
            if ts <= t and du in (u, -1) and di in (i, -1):
                return position
        return None

    def _check_weights(
        self, user: int, row: np.ndarray, sources: dict[tuple[int, int], list[Source]]
    ) -> None:
        """A pair's weights may each be valid and still sum beyond float32, or make a
        confidence (1 + alpha w) no float32 solve can hold: those events are refused."""
        weight = row["weight"].astype(np.float64)
        confidence = 1.0 + self.engine.params.alpha * np.abs(weight)
        bad = ~np.isfinite(weight) | (np.abs(weight) > _F32_MAX) | (confidence > _F32_MAX)
        if bad.any():
            culprits = [src for j in row["other"][bad].tolist() for src in sources[(user, int(j))]]
            if culprits:
                raise Unprocessable(culprits, "the pair's weights sum beyond float32")

    def solve(self) -> None:
        engine, params = self.engine, self.engine.params
        for side, other in (("user", "item"), ("item", "user")):
            rows = np.array(sorted(self.touched[side]), dtype=np.int64)
            if not len(rows):
                continue
            matrix = _csr([self.rows[side][int(n)] for n in rows], len(engine.factors[other]))
            solved = solve_rows(
                matrix,
                np.arange(len(rows)),
                engine.factors[other],
                params,
                engine.gramians.full(other),
                num_threads=engine.solve_threads,
            )
            if not np.isfinite(solved).all() or np.abs(solved).max() > _F32_MAX:
                raise ArithmeticError(f"a {side} solve gave factors no float32 holds")
            self.replaced.append((side, rows, engine.factors[side][rows].copy()))
            engine.set_rows(side, rows, solved)

    def undo(self) -> None:
        """Put back the factors the solves replaced, newest first."""
        while self.replaced:
            side, rows, old = self.replaced.pop()
            self.engine.set_rows(side, rows, old)

    def local_loss(self, rows: dict[str, dict[int, np.ndarray]]) -> float:
        """The objective's terms that involve a touched row, with the given rows' data.

        Observed pairs of touched users and items (each pair once) and, for ALS-WR, the
        touched rows' penalties. Before and after a batch only these terms (and the implicit
        model's all-pairs term) differ, so the batch updates the objective exactly.
        """
        engine, params = self.engine, self.engine.params
        users, items = engine.factors["user"], engine.factors["item"]
        # Each pair once: all of a touched user's row; of a touched item's row, the users
        # not touched. One gather per row (its neighbours), times its own factor.
        touched_user = np.zeros(len(users), dtype=bool)
        touched_user[list(self.touched["user"])] = True
        scores, weights = [], []
        for row in self.touched["user"]:
            records = rows["user"][row]
            scores.append(items[records["other"]] @ users[row])
            weights.append(records["weight"])
        for row in self.touched["item"]:
            records = rows["item"][row]
            records = records[~touched_user[records["other"]]]
            scores.append(users[records["other"]] @ items[row])
            weights.append(records["weight"])
        if not scores:
            return 0.0
        s = np.concatenate(scores).astype(np.float64)
        w = np.concatenate(weights).astype(np.float64)
        penalty = 0.0
        if params.kind != "implicit":
            for side in SIDES:
                touched = np.array(sorted(self.touched[side]), dtype=np.int64)
                counts = np.array([len(rows[side][n]) for n in touched], dtype=np.float64)
                norms = np.sum(engine.factors[side][touched].astype(np.float64) ** 2, axis=1)
                penalty += row_penalties(counts, norms, params)
        return observed_terms(s, w, params) + penalty

    def receipts(
        self, residual: float, acknowledged: Mapping[str, tuple[int, int]]
    ) -> list[Receipt]:
        now = self.engine.clock()
        out = []
        for position, deletion in enumerate(self.deletions):
            source = deletion.source
            started = (
                deletion.requested_at if deletion.requested_at is not None else deletion.received
            )
            out.append(
                Receipt(
                    request_id=deletion.request_id,
                    scope=deletion.scope,
                    user=deletion.user,
                    item=deletion.item,
                    removed=len(self.removed_by.get(position, ())),
                    kept_newer=self._kept(position),
                    event_ts=deletion.ts,
                    ts_adjusted=deletion.ts_adjusted,
                    received_at=deletion.received,
                    applied_at=now,
                    latency_seconds=now - started,
                    residual=residual,
                    source=source.key,
                    reapplied=_within(source.offset, acknowledged.get(source.partition_key)),
                )
            )
        return out

    def _kept(self, position: int) -> int:
        """The scope's pairs still stored after the batch (each newer than the deletion)."""
        u, i, _ = self.deletion_rows[position]
        if u >= 0 and i >= 0:
            return int(np.isin(i, self.rows["user"][u]["other"]))
        return len(self.rows["user"][u]) if u >= 0 else len(self.rows["item"][i])

    def shard_writes(self, receipts: list[Receipt]) -> dict[int, ShardWrite]:
        engine = self.engine
        writes: dict[int, ShardWrite] = defaultdict(ShardWrite)
        for side in SIDES:
            for row in self.touched[side]:
                write = writes[shard_of(row, self.shards)]
                write.factors[side][row] = engine.factors[side][row]
                write.rows[side][row] = self.rows[side][row]
        for name, (shard, t) in self.tombstones.items():
            writes[shard].tombstones[name] = t
        for receipt in receipts:
            shard = receipt_shard(receipt.source, self.shards)
            writes[shard].receipts[receipt.source] = receipt.to_json()
        for shard, write in writes.items():
            write.gramians = engine._partial_gramians(shard)
        return dict(writes)

    # ----- internals --------------------------------------------------------------------

    def _deletion_indices(self) -> list[tuple[int, int, float]]:
        """(user index or -1, item index or -1, T) per deletion, in order."""
        users, items = iter(self.du.tolist()), iter(self.di.tolist())
        return [
            (
                next(users) if d.user is not None else -1,
                next(items) if d.item is not None else -1,
                d.ts,
            )
            for d in self.deletions
        ]

    def _tombstone_limits(self) -> dict[tuple[int, int], float]:
        """The latest deletion time of an earlier batch covering each interaction's pair.

        This batch's own deletions are matched in `edit` (what they suppress goes into
        their receipts); their tombstones are written with the batch.
        """
        fields: dict[int, list[str]] = defaultdict(list)
        for u, i in zip(self.iu.tolist(), self.ii.tolist(), strict=True):
            fields[shard_of(u, self.shards)] += [pair_tombstone(u, i), user_tombstone(u)]
            fields[shard_of(i, self.shards)].append(item_tombstone(i))
        for u, i, _ in self.deletion_rows:
            name, shard = tombstone(u, i, self.shards)
            fields[shard].append(name)
        known = self.state.read_tombstones({s: sorted(set(f)) for s, f in fields.items()})
        limits = {
            (u, i): max(
                known.get(pair_tombstone(u, i), -np.inf),
                known.get(user_tombstone(u), -np.inf),
                known.get(item_tombstone(i), -np.inf),
            )
            for u, i in zip(self.iu.tolist(), self.ii.tolist(), strict=True)
        }
        for u, i, t in self.deletion_rows:
            name, shard = tombstone(u, i, self.shards)
            if t > known.get(name, -np.inf):
                known[name] = t
                self.tombstones[name] = (shard, t)
        return limits

    def _load(self, side: str, indices: set[int]) -> None:
        missing = np.array(sorted(indices - self.rows[side].keys()), dtype=np.int64)
        if len(missing):
            stored = self.state.read_rows(side, missing, self.shards)
            for n, row in zip(missing.tolist(), stored, strict=True):
                self.rows[side][n] = row.copy()
                self.original[side][n] = self.rows[side][n]  # edits replace, never mutate

    def _remove(self, side: str, row: int, others: set[int], t: float) -> int:
        current = self.rows[side][row]
        drop = np.isin(current["other"], list(others)) & (current["ts"] <= t)
        if drop.any():
            self.rows[side][row] = current[~drop]
            self.touched[side].add(row)
        return int(drop.sum())

    def _take(self, side: str, row: int, t: float) -> list[int]:
        current = self.rows[side][row]
        drop = current["ts"] <= t
        if drop.any():
            self.rows[side][row] = current[~drop]
            self.touched[side].add(row)
        return current["other"][drop].astype(np.int64).tolist()


def _merge(row: np.ndarray, events: list[tuple[int, float, float]], kind: str) -> np.ndarray:
    """Events (other index, weight, time) into a stored row (unlearn_core.rows)."""
    other = np.fromiter((e[0] for e in events), np.int64, len(events))
    weight = np.fromiter((e[1] for e in events), np.float64, len(events))
    ts = np.clip(np.fromiter((e[2] for e in events), np.float64, len(events)), 0, 2**32 - 1)
    keys, merged_weight, merged_ts = merge_events(
        row["other"],
        row["weight"],
        row["ts"],
        other,
        weight,
        ts.astype(np.int64),
        kind,  # type: ignore[arg-type]
    )
    out = np.empty(len(keys), dtype=ROW_DTYPE)
    with np.errstate(over="ignore"):  # a sum beyond float32 is refused by the caller
        out["other"], out["weight"], out["ts"] = keys, merged_weight, merged_ts
    return out


def _csr(rows: list[np.ndarray], n_columns: int) -> sp.csr_array:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    if len(rows) and indptr[-1]:
        records = np.concatenate(rows)
        indices, data = records["other"].astype(np.int32), records["weight"].astype(np.float64)
    else:
        indices, data = np.empty(0, np.int32), np.empty(0, np.float64)
    return sp.csr_array((data, indices, indptr), shape=(len(rows), n_columns))


def _interactions(
    rows: dict[int, np.ndarray], n_users: int, n_items: int, kind: str
) -> Interactions:
    users = np.concatenate(
        [np.full(len(r), n, dtype=np.int64) for n, r in rows.items()] or [np.empty(0, np.int64)]
    )
    records = np.concatenate(list(rows.values()) or [np.empty(0, ROW_DTYPE)])
    return Interactions.from_triples(
        users,
        records["other"].astype(np.int64),
        records["weight"].astype(np.float64),
        (n_users, n_items),
        kind,  # type: ignore[arg-type]
    )


def _marks(sources: list[Source]) -> dict[str, str]:
    """Per partition, the fingerprint mark of the batch's last message that has one."""
    last: dict[str, Source] = {}
    for source in sources:
        best = last.get(source.partition_key)
        if source.fingerprint and (best is None or source.offset > best.offset):
            last[source.partition_key] = source
    return {key: f"{s.offset}:{s.fingerprint}" for key, s in last.items()}


def _advance(applied: dict[str, int], sources: list[Source]) -> dict[str, int]:
    """The batch's partitions and how far it takes each (never back): other partitions'
    offsets belong to other instances and are not written."""
    out: dict[str, int] = {}
    for source in sources:
        key = source.partition_key
        out[key] = max(out.get(key, applied.get(key, -1)), source.offset)
    return out


def _within(offset: int, span: tuple[int, int] | None) -> bool:
    return span is not None and span[0] <= offset <= span[1]
