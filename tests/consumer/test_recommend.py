"""What `unlearn recommend` shows: never an item the user has, nor one they deleted
(unless asked), and for an unknown or erased user an empty list with the reason; on one
Redis server and on a Cluster."""

from __future__ import annotations

import numpy as np

from consumer.engine import Engine
from consumer.events import Deletion, Source
from consumer.recommend import recommend
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import params_for
from unlearn_core import train


def test_deleted_items_are_left_out_unless_asked_and_erased_users_get_nothing(
    redis_client, random_data
):
    _, data = random_data(n_users=30, n_items=20, density=0.4, seed=3)
    users, items = [f"u{n}" for n in range(30)], [f"i{n}" for n in range(20)]
    model, _ = train(data, users, items, params_for("implicit"), 15)
    state = ModelState(redis_client, "recommend")
    load(state, model, data, np.full(data.nnz, 1e9), shards=3)
    engine = Engine(state)
    first = recommend(state, "u4", 3).items[0].item
    # The user withdraws a pair they had: its item, back among the unseen ones, is not
    # shown to them again; nor is one they deleted without ever having it (a tombstone).
    had = items[int(data.by_user.indices[data.by_user.indptr[4]])]
    engine.process([], [Deletion("u4", had, 2e9, "r1", Source("d", 0, 0)),
                        Deletion("u4", first, 2e9, "r2", Source("d", 0, 1))])  # fmt: skip
    shown = [r.item for r in recommend(state, "u4", 20).items]
    assert had not in shown and first not in shown and shown
    everything = [r.item for r in recommend(state, "u4", 20, include_deleted=True).items]
    assert had in everything and first in everything
    # Erased whole, or never known: an empty list and why.
    engine.process([], [Deletion("u7", None, 2e9, "r3", Source("d", 0, 2))])
    erased = recommend(state, "u7", 5)
    assert erased.items == [] and "was erased" in (erased.why or "")
    unknown = recommend(state, "nobody", 5)
    assert unknown.items == [] and "not in the model" in (unknown.why or "")
