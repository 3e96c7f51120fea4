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
        return cls(users.astype(np.int64), items.astype(np.int64))

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
