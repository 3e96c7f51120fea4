"""Loading a model into a real redis-server and exporting it back."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.state.bootstrap import export, load, pair_timestamps
from consumer.state.store import ModelState, StateError
from tests.conftest import params_for
from unlearn_core import Interactions, loss, train


@pytest.fixture
def model_and_data(random_data):
    _, data = random_data(n_users=45, n_items=30, density=0.25, seed=11)
    params = params_for("implicit", factors=6)
    model, _ = train(
        data, [f"user {n}" for n in range(45)], [f"item-{n}" for n in range(30)], params, 10
    )
    return model, data


def test_load_then_export_gives_back_the_model_and_data(redis_client, model_and_data):
    model, data = model_and_data
    state = ModelState(redis_client, "roundtrip")
    load(state, model, data, np.arange(data.nnz, dtype=float) + 1e9, shards=4)
    meta = state.meta()
    assert (meta.users, meta.items, meta.shards) == (45, 30, 4)
    assert meta.params == model.params
    exported, exported_data = export(state)
    assert exported.user_ids.tolist() == model.user_ids.tolist()
    assert exported.item_ids.tolist() == model.item_ids.tolist()
    np.testing.assert_array_equal(exported.user_factors, model.user_factors)
    np.testing.assert_array_equal(exported.item_factors, model.item_factors)
    assert (exported_data.by_user != data.by_user).nnz == 0


def test_both_directions_and_timestamps_are_stored(redis_client, model_and_data):
    model, data = model_and_data
    state = ModelState(redis_client, "rows")
    stamps = np.arange(data.nnz, dtype=float) + 1_000_000_000
    load(state, model, data, stamps, shards=3)
    users = state.read_rows("user", np.arange(45), 3)
    items = state.read_rows("item", np.arange(30), 3)
    assert sum(len(r) for r in users) == sum(len(r) for r in items) == data.nnz
    by_pair = {(u, int(r["other"])): int(r["ts"]) for u, row in enumerate(users) for r in row}
    for i, row in enumerate(items):
        for record in row:
            assert by_pair[(int(record["other"]), i)] == int(record["ts"])
    assert sorted(by_pair.values()) == stamps.astype(int).tolist()


def test_ids_counts_and_the_objective_per_shard(redis_client, model_and_data):
    model, data = model_and_data
    state = ModelState(redis_client, "ids")
    load(state, model, data, np.zeros(data.nnz), shards=4)
    assert state.lookup("user", ["user 3", "nobody"]).tolist() == [3, -1]
    assert state.allocate("user", ["user 3", "newcomer"]).tolist() == [3, 45]
    assert state.ids_of("user", [45]) == ["newcomer"]
    shards = state.read_shard_status(range(4))
    # Each shard counts its users' pairs; the shares of the objective sum to it.
    assert [int(shards[s]["interactions"]) for s in range(4)] == [
        int(data.row_counts()[s::4].sum()) for s in range(4)
    ]
    expected = loss(data, model.user_factors, model.item_factors, model.params)
    assert float(state.read_status()["loss"]) == pytest.approx(expected, rel=1e-6)


def test_an_item_lives_in_slices_of_its_users_shards(redis_client, model_and_data):
    model, data = model_and_data
    state = ModelState(redis_client, "slices")
    load(state, model, data, np.zeros(data.nnz), shards=3)
    dense = data.by_user.toarray()
    seen = 0
    for shard in range(3):
        for item, piece in state.read_shard_rows("item", shard).items():
            users = piece["other"].astype(int)
            assert (np.diff(users) > 0).all()
            assert users.tolist() == [u for u in np.flatnonzero(dense[:, item]) if u % 3 == shard]
            seen += len(users)
    assert seen == data.nnz


def test_a_second_load_needs_replace(redis_client, model_and_data):
    model, data = model_and_data
    state = ModelState(redis_client, "twice")
    load(state, model, data, np.zeros(data.nnz), shards=2)
    with pytest.raises(StateError, match="--replace"):
        load(state, model, data, np.zeros(data.nnz), shards=2)
    load(state, model, data, np.zeros(data.nnz), shards=2, replace=True)
    assert state.meta().users == 45


def test_missing_namespace_is_a_clear_error(redis_client):
    with pytest.raises(StateError, match="unlearn load"):
        ModelState(redis_client, "nothing-here").meta()


def test_a_summed_pair_keeps_its_earliest_event_and_a_rating_its_latest():
    # A deletion must reach every event a stored weight holds: for a sum, the earliest;
    # a rating replaces the one before, so only the latest is in the weight.
    users, items, times = np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([5.0, 9.0, 3.0])
    for kind, expected in (("implicit", [5.0, 3.0]), ("explicit", [9.0, 3.0])):
        data = Interactions.from_triples(users, items, [1.0, 1.0, 1.0], (2, 2), kind)
        stamps = pair_timestamps(data, users, items, times, kind)
        assert stamps.tolist() == expected  # CSR order: (0,1) then (1,0)
