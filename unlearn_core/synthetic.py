"""Generated interaction data with the long tails of real recommender data.

Item popularity follows a power law, user activity a log-normal, and users prefer items
of a few latent tastes, so a low-rank model has structure to find. Used where the
MovieLens files are absent (their license forbids shipping them) and for scale tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class SyntheticEvents:
    users: np.ndarray  # int64 user index per event
    items: np.ndarray  # int64 item index per event
    weights: np.ndarray  # float64 rating 1..5
    timestamps: np.ndarray  # float64 unix seconds, within one year

    def __len__(self) -> int:
        return len(self.users)


def long_tailed_events(
    n_users: int = 1000,
    n_items: int = 1700,
    mean_per_user: float = 100.0,
    popularity_exponent: float = 1.0,
    tastes: int = 12,
    seed: int = 0,
    start: float = 1_700_000_000.0,
) -> SyntheticEvents:
    """Distinct (user, item) events, MovieLens-100K-like by default."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    item_taste = rng.integers(0, tastes, n_items)
    user_taste = rng.integers(0, tastes, n_users)
    activity = rng.lognormal(np.log(mean_per_user) - 0.5, 1.0, n_users)
    counts = np.clip(activity.astype(np.int64), 5, n_items // 2)
    users, items = [], []
    for user, count in enumerate(counts):
        # A user draws from the global popularity, tilted toward its own taste.
        weights = popularity * np.where(item_taste == user_taste[user], 8.0, 1.0)
        chosen = rng.choice(n_items, size=count, replace=False, p=weights / weights.sum())
        users.append(np.full(count, user, dtype=np.int64))
        items.append(chosen.astype(np.int64))
    user_arr, item_arr = np.concatenate(users), np.concatenate(items)
    liked = item_taste[item_arr] == user_taste[user_arr]
    ratings = np.clip(np.round(rng.normal(np.where(liked, 4.2, 3.0), 0.9)), 1, 5)
    timestamps = start + rng.uniform(0, 365 * SECONDS_PER_DAY, len(user_arr))
    return SyntheticEvents(user_arr, item_arr, ratings.astype(np.float64), timestamps)


def power_law_pairs(
    n_users: int,
    n_items: int,
    nnz: int,
    popularity_exponent: float = 0.5,
    min_per_user: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`nnz` distinct (user, item) pairs, vectorised for tens of millions of pairs.

    Item popularity follows a power law over rank (exponent 0.5 gives MovieLens-20M's most
    popular item about 0.3% of all ratings, as it has), user activity a log-normal with at
    least `min_per_user` pairs (MovieLens-20M: 138,493 users, 26,744 items, 20,000,263
    ratings, every user with at least 20). Draws are made with some excess, duplicates
    dropped, and a random subset of exactly `nnz` kept. Returns (users, items), int64,
    sorted by user then item.
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    popularity = popularity[rng.permutation(n_items)]  # popular items anywhere in the index
    popularity /= popularity.sum()
    activity = rng.lognormal(0.0, 1.0, n_users)
    excess = 1.2
    while True:
        draws = activity / activity.sum() * nnz * excess
        counts = np.clip(draws.astype(np.int64), min_per_user, n_items // 2)
        users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
        keys = np.unique(users * n_items + rng.choice(n_items, size=len(users), p=popularity))
        if len(keys) >= nnz:
            break
        excess *= 1.2
    keys = np.sort(rng.choice(keys, size=nnz, replace=False))
    return keys // n_items, keys % n_items
