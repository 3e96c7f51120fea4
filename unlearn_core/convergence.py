"""A convergence measure that rotations cannot fool: the relative change of scores.

Factors are only defined up to an invertible transform (X R, Y R^-T leave every score
unchanged), so comparing factors says nothing. Scores on a fixed sample of pairs are
cheap (sample x k flops) and change only when the model's predictions change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unlearn_core.interactions import Interactions
from unlearn_core.model import pair_scores

DEFAULT_SAMPLE_SIZE = 8192


@dataclass(frozen=True)
class ScoreSample:
    """A fixed set of pairs whose scores are tracked from sweep to sweep.

    Half are observed pairs (where the data pulls hardest), half are uniform over the
    matrix (what ranking depends on).
    """

    users: np.ndarray
    items: np.ndarray
    observed: int = 0  # the first `observed` pairs are observed ones (draw)

    @classmethod
    def draw(
        cls, data: Interactions, size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0
    ) -> ScoreSample:
        rng = np.random.default_rng(seed)
        n_users, n_items = data.shape
        if n_users == 0 or n_items == 0:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64))
        n_observed = min(size // 2, data.nnz)
        entries = rng.choice(data.nnz, size=n_observed, replace=False) if n_observed else []
        keys = data.entry_keys[entries]
        n_uniform = size - n_observed
        users = np.concatenate([keys // n_items, rng.integers(0, n_users, n_uniform)])
        items = np.concatenate([keys % n_items, rng.integers(0, n_items, n_uniform)])
        return cls(users.astype(np.int64), items.astype(np.int64), n_observed)

    @classmethod
    def of_pairs(
        cls, users: np.ndarray, items: np.ndarray, size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0
    ) -> ScoreSample:
        """At most `size` of the given pairs (all of them when there are few)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if len(users) > size:
            keep = np.random.default_rng(seed).choice(len(users), size=size, replace=False)
            users, items = users[keep], items[keep]
        return cls(users, items)

    def scores(self, user_factors: np.ndarray, item_factors: np.ndarray) -> np.ndarray:
        return pair_scores(user_factors, item_factors, self.users, self.items)


def relative_change(before: np.ndarray, after: np.ndarray) -> float:
    """|after - before| / |before| (0 when nothing changed, 1 when both were zero and now not)."""
    diff = float(np.linalg.norm(after - before))
    if diff == 0.0:
        return 0.0
    scale = float(np.linalg.norm(before))
    return diff / scale if scale > 0 else 1.0


DEFAULT_TOP_N = 10
DEFAULT_RANK_SAMPLE = 1000


@dataclass(frozen=True)
class TopNSample:
    """What a fixed sample of users would be shown: each one's top-N among the items they
    have not interacted with. Sweeps that no longer change these lists no longer change
    what users see, whatever they still do to the scores' last digits."""

    users: np.ndarray
    known: tuple[np.ndarray, ...]  # each sampled user's items, never recommended
    n: int

    @classmethod
    def draw(
        cls,
        data: Interactions,
        size: int = DEFAULT_RANK_SAMPLE,
        n: int = DEFAULT_TOP_N,
        seed: int = 0,
        first: np.ndarray | None = None,
    ) -> TopNSample:
        """`size` users: up to half from `first` (the users a change touched: their lists
        move most), the rest uniform."""
        rng = np.random.default_rng(seed)
        n_users = data.shape[0]
        chosen = np.unique(np.asarray(first if first is not None else [], dtype=np.int64))
        if len(chosen) > size // 2:
            chosen = rng.choice(chosen, size=size // 2, replace=False)
        others = np.setdiff1d(np.arange(n_users), chosen)
        extra = min(size - len(chosen), len(others))
        users = np.sort(np.concatenate([chosen, rng.choice(others, extra, replace=False)]))
        indptr, indices = data.by_user.indptr, data.by_user.indices
        known = tuple(indices[indptr[u] : indptr[u + 1]] for u in users.tolist())
        return cls(users.astype(np.int64), known, min(n, max(data.shape[1], 1)))

    def top(self, user_factors: np.ndarray, item_factors: np.ndarray) -> np.ndarray:
        """Each sampled user's top-N item indices (as a set: order within it not kept)."""
        if len(self.users) == 0 or item_factors.shape[0] == 0:
            return np.empty((len(self.users), 0), dtype=np.int64)
        scores = user_factors[self.users].astype(np.float64) @ item_factors.astype(np.float64).T
        for row, items in enumerate(self.known):
            scores[row, items] = -np.inf
        n = min(self.n, scores.shape[1])
        if n == scores.shape[1]:
            return np.argsort(-scores, axis=1)
        return np.argpartition(-scores, n - 1, axis=1)[:, :n]


def top_n_change(before: np.ndarray, after: np.ndarray) -> float:
    """The fraction of recommendation slots that changed: 1 - mean |before ∩ after| / N."""
    if before.size == 0:
        return 0.0
    pairs = zip(before, after, strict=True)
    kept = sum(len(np.intersect1d(b, a, assume_unique=True)) for b, a in pairs)
    return 1.0 - kept / before.size
