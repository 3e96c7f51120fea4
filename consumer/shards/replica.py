"""The factors an instance solves against: a replica of every factor, with its Gramians,
kept current with what each shard's owner commits.

An exact re-solve of a row needs the factors of all its neighbours (a popular item's are
almost every user's) and the other side's Gramian; reading them from Redis per batch
would cost more than solving. So every instance keeps every factor in memory (k x 4
bytes a row: 42 MB at MovieLens-20M's shape, k = 64) and the Gramians by rank-one
updates. Before each batch it reads each shard's commit counter; for a shard another
instance moved, it reads the rows that shard's change log lists since, or the shard's
factors whole when the log no longer reaches back or names another history (a restore).
The interactions, the bulk of the state, are never replicated: an instance reads the rows
it solves, when it solves them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from consumer.state.layout import rows_of_shard
from consumer.state.store import SIDES, Meta, ModelState
from unlearn_core.gramians import Gramians

Known = tuple[int, str | None]  # a shard's commits so far, and the newest one's id


class Replica:
    def __init__(self, state: ModelState, meta: Meta) -> None:
        self.state = state
        self.shards = meta.shards
        self.k = meta.params.factors
        self.factors = {
            side: np.zeros((meta.count(side), self.k), dtype=np.float32) for side in SIDES
        }
        self.known: dict[int, Known] = {}
        self.nonfinite: dict[str, set[int]] = {side: set() for side in SIDES}
        self.gramians = Gramians(self.factors, self.shards)
        # What other owners' commits forgot, as their change logs say (encoded), since
        # last taken: a forgetting cycle presses on this instance's rows from it.
        self.forgotten: list[bytes] = []

    def load(self) -> None:
        """Every shard's factors, shard by shard."""
        for shard, known in self.state.log.read_generations(range(self.shards)).items():
            self._reload(shard)
            self.known[shard] = known

    def refresh(self, skip: Iterable[int] = ()) -> dict[int, Known]:
        """Bring the shards other owners moved up to date (not `skip`: this instance's
        own, which only it writes). Returns every shard's (commits, newest id) in Redis."""
        now = self.state.log.read_generations(range(self.shards))
        skip = set(skip)
        for shard, (generation, head) in now.items():
            if shard not in skip:
                self.catch_up(shard, generation, head)
        return now

    def catch_up(self, shard: int, generation: int, head: str | None) -> bool:
        """Read what the shard committed since the replica last saw it. True if it moved."""
        known = self.known.get(shard)
        if known == (generation, head):
            return False
        changes = None
        if known is not None and generation > known[0]:
            changes = self.state.log.read_change_log(shard, *known)
        if changes is None:
            self._reload(shard)
        else:
            self.forgotten += changes[2]
            for side, rows in zip(SIDES, changes[:2], strict=True):
                rows_array = np.array(sorted(rows), dtype=np.int64)
                if len(rows_array):
                    self.grow(side, int(rows_array.max()) + 1)
                    self.set_rows(
                        side, rows_array,
                        self.state.read_factors(side, rows_array, self.shards, self.k),
                    )  # fmt: skip
        self.known[shard] = (generation, head)
        return True

    def take_forgotten(self) -> list[bytes]:
        out, self.forgotten = self.forgotten, []
        return out

    def committed(self, shard: int, generation: int, head: str) -> None:
        """This instance's own commit: the replica already holds what it wrote."""
        self.known[shard] = (generation, head)

    def _reload(self, shard: int) -> None:
        """The shard's factors as Redis holds them, a chunk at a time (the transient
        memory is a chunk's, not the shard's); a row Redis no longer holds is zero."""
        for side in SIDES:
            seen: list[np.ndarray] = []
            for rows, values in self.state.scan_shard_factors(side, shard, self.k):
                self.grow(side, int(rows.max()) + 1)
                self.set_rows(side, rows, values)
                seen.append(rows)
            rows = rows_of_shard(shard, self.shards, len(self.factors[side]))
            gone = np.setdiff1d(rows, np.concatenate(seen)) if seen else rows
            gone = gone[self.factors[side][gone].any(axis=1)]
            if len(gone):
                self.set_rows(side, gone, np.zeros((len(gone), self.k), dtype=np.float32))

    def set_rows(self, side: str, rows: np.ndarray, factors: np.ndarray) -> None:
        """New factors for some rows, the Gramians following."""
        new = np.asarray(factors, dtype=np.float32)
        self.gramians.replace(side, rows, self.factors[side][rows], new)
        self.factors[side][rows] = new
        finite = np.isfinite(new).all(axis=1)
        nonfinite = self.nonfinite[side]
        if not finite.all() or nonfinite:
            nonfinite.difference_update(np.asarray(rows)[finite].tolist())
            nonfinite.update(np.asarray(rows)[~finite].tolist())

    @property
    def finite(self) -> bool:
        """Is every factor a finite number? Kept as rows are set (every write goes through
        set_rows), so a step does not scan the whole model to know."""
        return not any(self.nonfinite.values())

    def grow(self, side: str, rows: int) -> None:
        current = self.factors[side]
        if rows > len(current):
            grown = np.zeros((rows, self.k), dtype=np.float32)
            grown[: len(current)] = current
            self.factors[side] = grown
