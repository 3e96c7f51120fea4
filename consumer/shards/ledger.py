"""The objective, accounted per shard.

A shard's share: the observed terms of its users' pairs, the ALS-WR penalties of its
users and of its items, and in shard 0 the implicit model's all-pairs term (it depends on
every factor, through the Gramians). The shares sum to the objective. `unlearn load`
writes them exactly; every commit then adds the exact change it made (its re-solved rows'
terms, the all-pairs term's change), so the sum follows the objective. With several owners
committing at once, a change is computed against the factors its owner had read: the sum
can drift from the objective by what concurrent commits did to each other's terms, and an
engine that owns every shard recounts it exactly (Engine.reset_objective, `exact_shares`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from consumer.state.layout import shard_of
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState
from unlearn_core.objective import (
    all_pairs_term,
    observed_term_values,
    observed_terms,
    row_penalty_values,
)
from unlearn_core.params import Hyperparameters


def pair_shares(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    params: Hyperparameters,
    shards: int,
) -> np.ndarray:
    """The observed terms of these pairs, summed per user's shard."""
    users = np.asarray(users, dtype=np.int64)
    scores = np.einsum(
        "nk,nk->n", user_factors[users], item_factors[np.asarray(items, np.int64)],
        dtype=np.float64,
    )  # fmt: skip
    values = observed_term_values(scores, weights, params)
    return np.bincount(shard_of(users, shards), weights=values, minlength=shards)


def penalty_shares(
    counts: np.ndarray, factors: np.ndarray, params: Hyperparameters, shards: int
) -> np.ndarray:
    """ALS-WR's penalties of every row of one side (`counts`: each row's pairs), per shard."""
    norms = np.sum(np.asarray(factors, dtype=np.float64) ** 2, axis=1)
    values = row_penalty_values(np.asarray(counts)[: len(norms)], norms, params)
    return np.bincount(shard_of(np.arange(len(values)), shards), weights=values, minlength=shards)


def all_pairs(user_factors: np.ndarray, item_factors: np.ndarray, params: Hyperparameters) -> float:
    """The implicit model's all-pairs term, from float64 Gramians (as the replica keeps
    them, unlearn_core/gramians.py)."""
    xs, ys = (np.asarray(f, dtype=np.float64) for f in (user_factors, item_factors))
    return all_pairs_term(xs.T @ xs, ys.T @ ys, params)


def touched_terms(
    user_rows: dict[int, np.ndarray],
    item_rows: dict[int, np.ndarray],
    users: np.ndarray,
    items: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    params: Hyperparameters,
    shards: int,
) -> dict[int, float]:
    """Per shard, the objective's terms that re-solving these users and items changes:
    the observed pairs of the users and of the items (each pair once: an item's pairs with
    one of the users are the user's) and, for ALS-WR, their penalties. Before and after a
    re-solve only these and the all-pairs term differ. One gather per row."""
    xs, ys = user_factors, item_factors
    touched = np.zeros(len(xs), dtype=bool)
    touched[users] = True
    explicit = params.kind != "implicit"
    out: dict[int, float] = defaultdict(float)
    for u in users.tolist():
        row = user_rows[u]
        value = observed_terms(ys[row["other"]] @ xs[u], row["weight"], params)
        if explicit:
            value += params.regularization * len(row) * float(xs[u].astype(np.float64) @ xs[u])
        out[shard_of(u, shards)] += value
    for i in items.tolist():
        row = item_rows[i]
        others = row["other"]
        keep = ~touched[others]
        value = observed_terms(xs[others[keep]] @ ys[i], row["weight"][keep], params)
        if explicit:
            value += params.regularization * len(row) * float(ys[i].astype(np.float64) @ ys[i])
        out[shard_of(i, shards)] += value
    return out


class Ledger:
    """Each shard's share of the objective and its stored pairs, as its commits account
    them (read from the shard's status, then followed commit by commit)."""

    def __init__(self) -> None:
        self._shards: dict[int, tuple[float, int]] = {}  # shard -> (share, pairs)

    @property
    def loss(self) -> float:
        """The objective on the current data, as the shards account it."""
        return sum(loss for loss, _ in self._shards.values())

    @property
    def interactions(self) -> int:
        return sum(count for _, count in self._shards.values())

    def share(self, shard: int) -> float:
        return self._shards.get(shard, (0.0, 0))[0]

    def read(self, state: ModelState, shards: Iterable[int]) -> None:
        """These shards as Redis holds them (taken over, or written by another owner)."""
        for shard, status in state.read_shard_status(shards).items():
            self._shards[shard] = (
                float(status.get("loss", 0.0)),
                int(status.get("interactions", 0)),
            )

    def add(self, shard: int, write: ShardWrite) -> None:
        """A commit of the shard that held: its change of the objective and of the pairs."""
        loss, count = self._shards.get(shard, (0.0, 0))
        self._shards[shard] = (loss + write.loss_delta, count + write.interactions_delta)


def exact_shares(
    state: ModelState, factors: Mapping[str, np.ndarray], params: Hyperparameters, shards: int
) -> dict[int, float]:
    """Each shard's share of the objective, exactly, from every stored pair (read one
    shard's rows at a time) and the current factors."""
    xs, ys = factors["user"], factors["item"]
    out = np.zeros(shards)
    user_counts = np.zeros(len(xs), dtype=np.int64)
    item_counts = np.zeros(len(ys), dtype=np.int64)
    for shard in range(shards):
        rows = state.read_shard_rows("user", shard)
        if not rows:
            continue
        users = np.concatenate([np.full(len(r), u) for u, r in rows.items()])
        records = np.concatenate(list(rows.values()))
        out += pair_shares(users, records["other"], records["weight"], xs, ys, params, shards)
        np.add.at(user_counts, users, 1)
        np.add.at(item_counts, records["other"].astype(np.int64), 1)
    out += penalty_shares(user_counts, xs, params, shards)
    out += penalty_shares(item_counts, ys, params, shards)
    out[0] += all_pairs(xs, ys, params)
    return dict(enumerate(out.tolist()))
