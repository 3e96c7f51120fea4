"""A trained bi-linear model: ids, factors and the hyperparameters that define its loss."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from unlearn_core.params import Hyperparameters

FACTOR_DTYPE = np.float32


@dataclass(frozen=True)
class FactorModel:
    """score(u, i) = user_factors[u] . item_factors[i].

    Ids are opaque strings; row u of user_factors belongs to user_ids[u].
    """

    user_ids: np.ndarray  # str, shape (n_users,)
    item_ids: np.ndarray  # str, shape (n_items,)
    user_factors: np.ndarray  # float32, shape (n_users, k)
    item_factors: np.ndarray  # float32, shape (n_items, k)
    params: Hyperparameters

    def __post_init__(self) -> None:
        k = self.params.factors
        for name, ids, factors in (
            ("user", self.user_ids, self.user_factors),
            ("item", self.item_ids, self.item_factors),
        ):
            if factors.ndim != 2 or factors.shape != (len(ids), k):
                raise ValueError(
                    f"{name}_factors has shape {factors.shape}, expected ({len(ids)}, {k})"
                )
            if not np.all(np.isfinite(factors)):
                raise NonFiniteFactorsError(f"{name}_factors contain NaN or infinity")
        if len(set(self.user_ids.tolist())) != len(self.user_ids):
            raise ValueError("user_ids are not unique")
        if len(set(self.item_ids.tolist())) != len(self.item_ids):
            raise ValueError("item_ids are not unique")

    @classmethod
    def create(
        cls,
        user_ids: object,
        item_ids: object,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        params: Hyperparameters,
    ) -> FactorModel:
        return cls(
            user_ids=np.asarray(user_ids, dtype=np.str_).reshape(-1),
            item_ids=np.asarray(item_ids, dtype=np.str_).reshape(-1),
            user_factors=np.ascontiguousarray(user_factors, dtype=FACTOR_DTYPE),
            item_factors=np.ascontiguousarray(item_factors, dtype=FACTOR_DTYPE),
            params=params,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)

    @cached_property
    def user_index(self) -> dict[str, int]:
        return {uid: n for n, uid in enumerate(self.user_ids.tolist())}

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {iid: n for n, iid in enumerate(self.item_ids.tolist())}

    def with_factors(self, user_factors: np.ndarray, item_factors: np.ndarray) -> FactorModel:
        return replace(
            self,
            user_factors=np.ascontiguousarray(user_factors, dtype=FACTOR_DTYPE),
            item_factors=np.ascontiguousarray(item_factors, dtype=FACTOR_DTYPE),
        )

    def with_ids(self, user_ids: list[str], item_ids: list[str]) -> FactorModel:
        """Append new users and items with zero factors (they have no data yet)."""
        k = self.params.factors
        users = np.concatenate([self.user_ids, np.asarray(user_ids, dtype=np.str_)])
        items = np.concatenate([self.item_ids, np.asarray(item_ids, dtype=np.str_)])
        return FactorModel.create(
            users,
            items,
            np.vstack([self.user_factors, np.zeros((len(user_ids), k), FACTOR_DTYPE)]),
            np.vstack([self.item_factors, np.zeros((len(item_ids), k), FACTOR_DTYPE)]),
            self.params,
        )

    def scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of the pairs (users[n], items[n]), in float64."""
        return pair_scores(self.user_factors, self.item_factors, users, items)


class NonFiniteFactorsError(ArithmeticError):
    """Factors hold NaN or infinity: the model is unusable and must not be saved."""


def pair_scores(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    chunk: int = 1 << 16,
) -> np.ndarray:
    """x_u . y_i for many pairs, in chunks so memory stays bounded.

    Products are summed in the factors' own dtype (float32 factors: a k-term float32 dot,
    relative error ~1e-7) and returned as float64; gathering in float64 would double the
    memory traffic that dominates this function.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    out = np.empty(len(users), dtype=np.float64)
    for start in range(0, len(users), chunk):
        stop = start + chunk
        xu = user_factors[users[start:stop]]
        yi = item_factors[items[start:stop]]
        out[start:stop] = np.einsum("nk,nk->n", xu, yi)
    return out
