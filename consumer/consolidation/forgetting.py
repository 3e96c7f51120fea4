"""What a commit forgot: the rows that moved because data left the model, how far, and
who neighbours them, with a sample of the pairs removed. A forgetting cycle starts from
it (cycle.py); other owners read it from the commit's change log (`encode`/`decode`) to
press on their own rows that neighbour the ones that moved."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from consumer.state.layout import shard_of
from unlearn_core.active_set import SIDES

PAIRS_LOGGED = 64  # deleted pairs a commit's change log carries for other owners


@dataclass
class Moved:
    """Rows of one side that moved, each with its neighbours (the other side's indices,
    `lengths[n]` of them for row n) and the confidence of each pair; neighbours None:
    not known here (a foreign commit: the reader looks them up)."""

    rows: np.ndarray
    movements: np.ndarray
    lengths: np.ndarray | None = None
    neighbours: np.ndarray | None = None
    confidence: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> Moved:
        """The rows `mask` picks, with their neighbours."""
        if self.neighbours is None or self.lengths is None or self.confidence is None:
            return Moved(self.rows[mask], self.movements[mask])
        entries = np.repeat(mask, self.lengths)
        return Moved(self.rows[mask], self.movements[mask], self.lengths[mask],
                     self.neighbours[entries], self.confidence[entries])  # fmt: skip

    @classmethod
    def empty(cls) -> Moved:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64),
                   np.empty(0, np.int64), np.empty(0))  # fmt: skip


@dataclass
class Forgetting:
    moved: dict[str, Moved] = field(default_factory=lambda: {s: Moved.empty() for s in SIDES})
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))  # (u, i)
    touched: dict[str, set[int]] = field(default_factory=lambda: {s: set() for s in SIDES})

    def __bool__(self) -> bool:
        return bool(len(self.pairs) or any(len(m.rows) for m in self.moved.values()))

    def of_shard(self, shard: int, shards: int) -> Forgetting:
        """The part of it whose rows live in `shard` (pairs: by the user's shard)."""
        return self.of_shards({shard}, shards)

    def of_shards(self, wanted: set[int], shards: int) -> Forgetting:
        """The part of it whose rows live in these shards (pairs: by the user's shard)."""
        out = Forgetting()
        chosen = list(wanted)
        for side, moved in self.moved.items():
            mine = np.isin(shard_of(moved.rows, shards), chosen)
            out.moved[side] = moved.subset(mine)
            out.touched[side] = {r for r in self.touched[side] if shard_of(r, shards) in wanted}
        if len(self.pairs):
            out.pairs = self.pairs[np.isin(shard_of(self.pairs[:, 0], shards), chosen)]
        return out


def encode(forgetting: Forgetting) -> bytes:
    """The change log's field: rows and movements per side, then a few deleted pairs."""
    users, items = forgetting.moved["user"], forgetting.moved["item"]
    pairs = forgetting.pairs[:PAIRS_LOGGED]
    head = np.array([len(users.rows), len(items.rows), len(pairs)], dtype="<u4")
    return b"".join(
        [
            head.tobytes(),
            users.rows.astype("<u4").tobytes(), users.movements.astype("<f4").tobytes(),
            items.rows.astype("<u4").tobytes(), items.movements.astype("<f4").tobytes(),
            pairs.astype("<u4").tobytes(),
        ]
    )  # fmt: skip


def decode(payload: bytes) -> Forgetting:
    n_users, n_items, n_pairs = np.frombuffer(payload[:12], dtype="<u4").tolist()
    out = Forgetting()
    offset = 12
    for side, count in (("user", n_users), ("item", n_items)):
        rows = np.frombuffer(payload, "<u4", count, offset).astype(np.int64)
        offset += 4 * count
        movements = np.frombuffer(payload, "<f4", count, offset).astype(np.float64)
        offset += 4 * count
        out.moved[side] = Moved(rows, movements)
    out.pairs = np.frombuffer(payload, "<u4", 2 * n_pairs, offset).astype(np.int64).reshape(-1, 2)
    return out


def merge(parts: list[Forgetting]) -> Forgetting:
    """Several commits' forgetting as one (rows may repeat: their pressures add up)."""
    out = Forgetting()
    if not parts:
        return out
    for side in SIDES:
        moved = [p.moved[side] for p in parts]
        known = all(m.neighbours is not None for m in moved)
        out.moved[side] = Moved(
            np.concatenate([m.rows for m in moved]),
            np.concatenate([m.movements for m in moved]),
            np.concatenate([m.lengths for m in moved]) if known else None,
            np.concatenate([m.neighbours for m in moved]) if known else None,
            np.concatenate([m.confidence for m in moved]) if known else None,
        )
        for p in parts:
            out.touched[side] |= p.touched[side]
    out.pairs = np.concatenate([p.pairs for p in parts])
    return out
