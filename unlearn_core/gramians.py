"""Factor Gramians kept per shard of rows, current by rank-one updates.

Solving a row needs F'F of the other side (implicit), and the implicit objective's
all-pairs term needs both sides'. Recomputing them costs n x k^2 per product; changing r
rows changes them by r rank-one terms, so they are updated in r x k^2 and recomputed
exactly only when every row changes. Kept per shard (row n in shard n % shards), so a
store that keeps rows sharded can keep each shard's partial sum beside its rows.
"""

from __future__ import annotations

import numpy as np


class Gramians:
    def __init__(self, factors: dict[str, np.ndarray], shards: int) -> None:
        self.shards = shards
        self.partial: dict[str, np.ndarray] = {}
        self.reset(factors)

    def reset(self, factors: dict[str, np.ndarray]) -> None:
        """Recompute from scratch: sum of x x' over each shard's rows, in float64."""
        for side, matrix in factors.items():
            k = matrix.shape[1]
            self.partial[side] = np.zeros((self.shards, k, k), dtype=np.float64)
            for shard in range(self.shards):
                rows = matrix[shard :: self.shards].astype(np.float64)
                self.partial[side][shard] = rows.T @ rows

    def replace(self, side: str, rows: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        """Rows `rows` of `side` change from the factors `old` to `new`."""
        if not len(rows):
            return
        old, new = old.astype(np.float64), new.astype(np.float64)
        shard_of = np.asarray(rows) % self.shards
        for shard in np.unique(shard_of):
            mine = shard_of == shard
            self.partial[side][shard] += new[mine].T @ new[mine] - old[mine].T @ old[mine]

    def full(self, side: str) -> np.ndarray:
        return self.partial[side].sum(axis=0)

    def shard(self, side: str, shard: int) -> np.ndarray:
        return self.partial[side][shard]
