"""The observed data: a users x items matrix of weights, and changes to it.

A pair that is absent from the matrix counts as never observed. Forgetting removes
entries; learning adds weight (implicit feedback) or replaces a rating (explicit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from unlearn_core.params import Kind

IndexArray = np.ndarray  # int64 row or column indices


def _as_index(values: object) -> IndexArray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Interactions:
    """Observed weights, users in rows and items in columns (CSR, sorted, no explicit zeros)."""

    by_user: sp.csr_array

    @classmethod
    def from_triples(
        cls,
        users: IndexArray,
        items: IndexArray,
        weights: np.ndarray,
        shape: tuple[int, int],
        kind: Kind,
    ) -> Interactions:
        """Build from events in arrival order.

        implicit: repeated events of one pair add their weights.
        explicit: a later rating of a pair replaces an earlier one.
        """
        users, items = _as_index(users), _as_index(items)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if kind == "explicit":
            users, items, weights = _keep_last(users, items, weights, shape[1])
        matrix = sp.coo_array((weights, (users, items)), shape=shape).tocsr()
        matrix.sum_duplicates()
        return cls(_drop_zeros(matrix))

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Interactions:
        return cls(sp.csr_array(shape, dtype=np.float64))

    @property
    def shape(self) -> tuple[int, int]:
        return self.by_user.shape  # type: ignore[return-value]

    @property
    def nnz(self) -> int:
        return int(self.by_user.nnz)

    @cached_property
    def by_item(self) -> sp.csr_array:
        """The transpose, items in rows: what item solves read."""
        return self.by_user.T.tocsr()

    @cached_property
    def entry_keys(self) -> np.ndarray:
        """user * n_items + item for every entry, globally sorted (CSR order)."""
        rows = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.by_user.indptr))
        return rows * self.shape[1] + self.by_user.indices.astype(np.int64)

    def row_counts(self) -> np.ndarray:
        return np.diff(self.by_user.indptr)

    def column_counts(self) -> np.ndarray:
        return np.bincount(self.by_user.indices, minlength=self.shape[1])

    def weights_of(self, users: IndexArray, items: IndexArray) -> np.ndarray:
        """Stored weight of each pair, 0 where the pair is not observed."""
        keys = _as_index(users) * self.shape[1] + _as_index(items)
        pos, found = locate(self.entry_keys, keys)
        out = np.zeros(keys.shape, dtype=np.float64)
        out[found] = self.by_user.data[pos[found]]
        return out

    def resized(self, shape: tuple[int, int]) -> Interactions:
        """The same data in a larger matrix (new users or items appended, unobserved)."""
        if shape == self.shape:
            return self
        if shape[0] < self.shape[0] or shape[1] < self.shape[1]:
            raise ValueError(f"cannot shrink interactions from {self.shape} to {shape}")
        indptr = np.concatenate(
            [self.by_user.indptr, np.full(shape[0] - self.shape[0], self.by_user.indptr[-1])]
        )
        return Interactions(
            sp.csr_array((self.by_user.data, self.by_user.indices, indptr), shape=shape)
        )


@dataclass(frozen=True)
class Change:
    """What one batch does to the data: removals first, then additions.

    Removals: single pairs, a user's whole history, an item's whole history.
    Additions: (user, item, weight) events, aggregated by the model kind's rule.
    """

    remove_pair_users: IndexArray = field(default_factory=lambda: np.empty(0, np.int64))
    remove_pair_items: IndexArray = field(default_factory=lambda: np.empty(0, np.int64))
    remove_users: IndexArray = field(default_factory=lambda: np.empty(0, np.int64))
    remove_items: IndexArray = field(default_factory=lambda: np.empty(0, np.int64))
    add_users: IndexArray = field(default_factory=lambda: np.empty(0, np.int64))
    add_items: IndexArray = field(default_factory=lambda: np.empty(0, np.int64))
    add_weights: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))

    def __post_init__(self) -> None:
        for name in (
            "remove_pair_users",
            "remove_pair_items",
            "remove_users",
            "remove_items",
            "add_users",
            "add_items",
        ):
            object.__setattr__(self, name, _as_index(getattr(self, name)))
        object.__setattr__(
            self, "add_weights", np.asarray(self.add_weights, dtype=np.float64).reshape(-1)
        )
        if len(self.remove_pair_users) != len(self.remove_pair_items):
            raise ValueError("remove_pair_users and remove_pair_items differ in length")
        if not len(self.add_users) == len(self.add_items) == len(self.add_weights):
            raise ValueError("add_users, add_items and add_weights differ in length")
        if not np.all(np.isfinite(self.add_weights)):
            raise ValueError("add_weights must be finite")

    @classmethod
    def deletions(
        cls,
        pair_users: IndexArray = (),
        pair_items: IndexArray = (),
        users: IndexArray = (),
        items: IndexArray = (),
    ) -> Change:
        return cls(
            remove_pair_users=pair_users,
            remove_pair_items=pair_items,
            remove_users=users,
            remove_items=items,
        )

    @classmethod
    def additions(cls, users: IndexArray, items: IndexArray, weights: np.ndarray) -> Change:
        return cls(add_users=users, add_items=items, add_weights=weights)

    @property
    def is_empty(self) -> bool:
        return not (
            len(self.remove_pair_users)
            or len(self.remove_users)
            or len(self.remove_items)
            or len(self.add_users)
        )

    def max_indices(self) -> tuple[int, int]:
        """Largest user and item index the change names (-1 where none)."""
        users = [self.remove_pair_users, self.remove_users, self.add_users]
        items = [self.remove_pair_items, self.remove_items, self.add_items]
        return (
            max((int(a.max()) for a in users if len(a)), default=-1),
            max((int(a.max()) for a in items if len(a)), default=-1),
        )


@dataclass(frozen=True)
class ChangeSummary:
    """What a change did, for reports and receipts."""

    removed: int  # interactions removed
    added: int  # addition events applied
    pairs_not_found: int  # pair deletions that named an unobserved pair
    users_not_found: int  # user deletions of a user with no interactions
    items_not_found: int  # item deletions of an item with no interactions
    changed_users: IndexArray  # the changed pairs (removed, then added), user side
    changed_items: IndexArray  # the changed pairs, item side

    @property
    def touched_users(self) -> IndexArray:
        """Users whose data changed, each once."""
        return np.unique(self.changed_users)

    @property
    def touched_items(self) -> IndexArray:
        """Items whose data changed, each once."""
        return np.unique(self.changed_items)


def apply_change(
    data: Interactions, change: Change, kind: Kind
) -> tuple[Interactions, ChangeSummary]:
    """Return the data after the change, and what it did. The input is not modified."""
    max_user, max_item = change.max_indices()
    data = data.resized((max(data.shape[0], max_user + 1), max(data.shape[1], max_item + 1)))
    n_items = data.shape[1]
    keys = data.entry_keys
    by_user = data.by_user
    entry_users = keys // n_items
    entry_items = by_user.indices

    removed_mask = np.zeros(data.nnz, dtype=bool)
    pair_keys = change.remove_pair_users * n_items + change.remove_pair_items
    pos, found = locate(keys, pair_keys)
    removed_mask[pos[found]] = True
    counts_u = data.row_counts()
    counts_i = data.column_counts()
    if len(change.remove_users):
        starts, ends = by_user.indptr[change.remove_users], by_user.indptr[change.remove_users + 1]
        removed_mask[_ranges(starts, ends)] = True
    if len(change.remove_items):
        removed_mask |= np.isin(entry_items, change.remove_items)

    touched_users = [entry_users[removed_mask]]
    touched_items = [entry_items[removed_mask].astype(np.int64)]
    n_removed = int(removed_mask.sum())
    if n_removed:
        keep = ~removed_mask
        users_kept = entry_users[keep]
        result = sp.csr_array(
            (by_user.data[keep], entry_items[keep], _indptr(users_kept, data.shape[0])),
            shape=data.shape,
        )
    else:
        result = by_user

    if len(change.add_users):
        add_users, add_items, add_weights = change.add_users, change.add_items, change.add_weights
        if kind == "implicit" and np.any(add_weights < 0):
            raise ValueError("implicit-feedback weights must be >= 0")
        if kind == "explicit" and np.any(add_weights == 0):
            raise ValueError("explicit ratings must be non-zero (a zero cannot be stored)")
        if kind == "explicit":
            add_users, add_items, add_weights = _keep_last(
                add_users, add_items, add_weights, n_items
            )
            # A new rating replaces the old one: drop the old entries first.
            current = Interactions(result)
            pos, found = locate(current.entry_keys, add_users * n_items + add_items)
            if found.any():
                keep = np.ones(current.nnz, dtype=bool)
                keep[pos[found]] = False
                result = sp.csr_array(
                    (
                        result.data[keep],
                        result.indices[keep],
                        _indptr((current.entry_keys // n_items)[keep], data.shape[0]),
                    ),
                    shape=data.shape,
                )
        added = sp.coo_array((add_weights, (add_users, add_items)), shape=data.shape).tocsr()
        result = (result + added).tocsr()
        result.sum_duplicates()
        result = _drop_zeros(result)
        touched_users.append(add_users)
        touched_items.append(add_items)

    summary = ChangeSummary(
        removed=n_removed,
        added=len(change.add_users),
        pairs_not_found=int(len(pair_keys) - found.sum()),
        users_not_found=int(np.count_nonzero(counts_u[change.remove_users] == 0)),
        items_not_found=int(np.count_nonzero(counts_i[change.remove_items] == 0)),
        changed_users=np.concatenate(touched_users),
        changed_items=np.concatenate(touched_items),
    )
    return Interactions(result), summary


def locate(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of keys in a sorted array, and which of them are present."""
    pos = np.searchsorted(sorted_keys, keys)
    pos_clipped = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    found = (pos < len(sorted_keys)) & (
        sorted_keys[pos_clipped] == keys if len(sorted_keys) else False
    )
    return pos_clipped, np.asarray(found, dtype=bool)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) for each pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def _indptr(sorted_rows: np.ndarray, n_rows: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(sorted_rows, minlength=n_rows))])


def _keep_last(
    users: IndexArray, items: IndexArray, weights: np.ndarray, n_items: int
) -> tuple[IndexArray, IndexArray, np.ndarray]:
    """For each pair keep only its last event (explicit ratings replace each other)."""
    keys = users * n_items + items
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    last = len(keys) - 1 - first_in_reversed
    return users[last], items[last], weights[last]


def _drop_zeros(matrix: sp.csr_array) -> sp.csr_array:
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix
