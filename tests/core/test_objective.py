"""The objective's parts add up to the whole, for both models."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import params_for
from unlearn_core import loss, pair_scores
from unlearn_core.gramians import Gramians
from unlearn_core.objective import all_pairs_term, observed_terms, row_penalties


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_the_terms_sum_to_the_objective(random_data, kind):
    _, data = random_data(n_users=20, n_items=15, kind=kind, seed=3)
    params = params_for(kind, factors=3, regularization=0.7)
    rng = np.random.default_rng(1)
    users = rng.normal(size=(20, 3)).astype(np.float32)
    items = rng.normal(size=(15, 3)).astype(np.float32)
    rows = np.repeat(np.arange(20), np.diff(data.by_user.indptr))
    scores = pair_scores(users, items, rows, data.by_user.indices)
    gram = Gramians({"user": users, "item": items}, shards=4)
    parts = (
        observed_terms(scores, data.by_user.data, params)
        + all_pairs_term(gram.full("user"), gram.full("item"), params)
        + row_penalties(data.row_counts(), np.sum(users.astype(float) ** 2, axis=1), params)
        + row_penalties(data.column_counts(), np.sum(items.astype(float) ** 2, axis=1), params)
    )
    assert parts == pytest.approx(loss(data, users, items, params), rel=1e-6)


def test_rank_one_updates_keep_the_gramians_exact():
    rng = np.random.default_rng(2)
    factors = {"user": rng.normal(size=(30, 4)).astype(np.float32)}
    gram = Gramians(factors, shards=3)
    rows = np.array([0, 4, 29])
    new = rng.normal(size=(3, 4)).astype(np.float32)
    gram.replace("user", rows, factors["user"][rows], new)
    factors["user"][rows] = new
    exact = factors["user"].astype(np.float64).T @ factors["user"].astype(np.float64)
    np.testing.assert_allclose(gram.full("user"), exact, rtol=1e-6)
    shard = factors["user"][1::3].astype(np.float64)
    np.testing.assert_allclose(gram.shard("user", 1), shard.T @ shard, rtol=1e-6)
