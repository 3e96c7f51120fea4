"""A deployment's model, as a capacity plan sees it: its size, and how much of the model an
event's re-solves read.

A deletion or an interaction re-solves one user and one item exactly: the user's against
the factors of every item in its row, the item's against the factors of every user in
its column. So an event's work grows with the rows it touches, and events do not touch
rows at random: a row with n interactions is touched n times as often as a row with one.
The work per event is therefore proportional to the size-biased mean row length, sum(n^2)
/ sum(n), of each side (its `neighbours`), which a long-tailed catalogue makes far larger
than the plain mean.

From a data set the figure is exact (`Shape.of_counts`). For a model one only knows the
size of, it is drawn from the shape real interaction data has (unlearn_core.synthetic's
generator, which matches MovieLens-20M): item popularity a power law over rank (exponent
0.5), user activity log-normal (sigma 1.0) with at least 20 interactions per user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POPULARITY_EXPONENT = 0.5
ACTIVITY_SIGMA = 1.0
MIN_PER_USER = 20
FIRST_EXCESS = 1.2  # the generator draws 20 % more pairs than it keeps (duplicates dropped)
SAMPLE_USERS = 200_000  # users' activity drawn for this many, scaled to the whole
GRID = 256
ITEMS_AT_ONCE = 8192


@dataclass(frozen=True)
class Shape:
    users: int
    items: int
    interactions: int
    factors: int
    user_neighbours: float  # size-biased mean length of a user's row
    item_neighbours: float  # size-biased mean length of an item's column

    def __post_init__(self) -> None:
        for name in ("users", "items", "interactions", "factors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.interactions > self.users * self.items:
            raise ValueError(
                f"{self.interactions:,} interactions do not fit {self.users:,} users x "
                f"{self.items:,} items"
            )

    @property
    def rows(self) -> int:
        return self.users + self.items

    @property
    def factor_bytes(self) -> int:
        """The model's factors: every row's k float32 values."""
        return self.rows * self.factors * 4

    @property
    def neighbours(self) -> float:
        """Factor rows an event's two re-solves read (a user's items, an item's users)."""
        return self.user_neighbours + self.item_neighbours

    @property
    def work(self) -> float:
        """An event's arithmetic relative to one neighbour at k = 64: building a row's
        normal equations costs k^2 per neighbour."""
        return self.neighbours * (self.factors / 64) ** 2

    @classmethod
    def of_counts(cls, user_counts: np.ndarray, item_counts: np.ndarray, factors: int) -> Shape:
        """The exact shape of a data set, from each row's number of interactions."""
        users = np.asarray(user_counts, dtype=np.float64)
        items = np.asarray(item_counts, dtype=np.float64)
        total = float(users.sum())
        return cls(
            len(users), len(items), int(total), factors,
            float((users**2).sum() / total), float((items**2).sum() / total),
        )  # fmt: skip

    @classmethod
    def typical(
        cls,
        users: int,
        items: int,
        interactions: int,
        factors: int = 64,
        popularity_exponent: float = POPULARITY_EXPONENT,
        activity_sigma: float = ACTIVITY_SIGMA,
    ) -> Shape:
        """The shape a model of this size has when its data is drawn as the module's
        docstring says, computed from the draws' counts (not by drawing every pair): each
        user draws items by popularity, a repeat of an item counts once, and the pairs
        are thinned at random to `interactions`."""
        if min(users, items, interactions) < 1:
            raise ValueError("users, items and interactions must each be at least 1")
        rng = np.random.default_rng(0)
        activity = rng.lognormal(0.0, activity_sigma, min(users, SAMPLE_USERS))
        draws = activity / activity.mean() * (interactions / users) * FIRST_EXCESS
        counts = np.clip(draws.astype(np.int64), MIN_PER_USER, max(items // 2, 1))
        popularity = np.arange(1, items + 1, dtype=np.float64) ** -popularity_exponent
        popularity /= popularity.sum()
        # Distinct items among c draws, sum_i 1 - (1 - p_i)^c, on a grid of c (log-spaced:
        # counts span orders of magnitude), each user taking its grid point.
        grid = np.unique(np.geomspace(counts.min(), counts.max(), GRID).astype(np.int64))
        point = np.clip(np.searchsorted(grid, counts), 0, len(grid) - 1)
        users_at = np.bincount(point, minlength=len(grid)) * (users / len(counts))
        distinct = np.zeros(len(grid))
        per_item = np.empty(items)  # expected users of each item before the thinning
        for start in range(0, items, ITEMS_AT_ONCE):  # items x grid: P(item drawn)
            seen = -np.expm1(np.outer(np.log1p(-popularity[start : start + ITEMS_AT_ONCE]), grid))
            distinct += seen.sum(axis=0)
            per_item[start : start + ITEMS_AT_ONCE] = seen @ users_at
        kept = min(1.0, interactions / float(users_at @ distinct))  # the thinning
        per_user = distinct[point] * kept
        # Thinning k of d keeps Binomial(d, q): E[k^2] = d q (1 - q) + (d q)^2.
        user_neighbours = (1 - kept) + float((per_user**2).sum() / per_user.sum())
        per_item *= kept  # an item's count about its expectation is about Poisson
        item_neighbours = 1.0 + float((per_item**2).sum() / per_item.sum())
        user_neighbours, item_neighbours = min(user_neighbours, items), min(item_neighbours, users)
        return cls(users, items, interactions, factors, user_neighbours, item_neighbours)
