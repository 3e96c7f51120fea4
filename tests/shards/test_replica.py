"""The replica of the factors (shards/replica.py): read from Redis a chunk at a time, its
Gramians and its finiteness kept as rows change; on one redis-server and on a Cluster."""

from __future__ import annotations

import numpy as np
import redis

from consumer.shards.replica import Replica
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.kafka_helpers import unique

USERS, SHARDS = 1_400, 2  # 700 users a shard: Redis scans a hash that large in chunks


def _loaded(client: redis.Redis) -> tuple[ModelState, object]:
    model, data = binary_model(6, USERS, 23, 0.3, factors=4, iterations=2)
    state = ModelState(client, unique("replica"))
    load(state, model, data, np.full(data.nnz, 1e9), shards=SHARDS)
    return state, model


def test_a_replica_read_in_small_chunks_holds_every_factor_and_their_gramians(
    redis_client: redis.Redis, monkeypatch
):
    state, model = _loaded(redis_client)
    scanned = []
    real = state.scan_shard_factors

    def counted(side, shard, k, count=16):
        for rows, values in real(side, shard, k, count=count):
            scanned.append(len(rows))
            yield rows, values

    monkeypatch.setattr(state, "scan_shard_factors", counted)
    replica = Replica(state, state.meta())
    replica.load()
    assert max(scanned) < USERS // SHARDS  # a shard's users came in several chunks
    for side, expected in (("user", model.user_factors), ("item", model.item_factors)):
        assert np.array_equal(replica.factors[side], expected)
        exact = expected.astype(np.float64).T @ expected.astype(np.float64)
        assert np.allclose(replica.gramians.full(side), exact, rtol=1e-9, atol=1e-9)


def test_a_row_redis_no_longer_holds_is_read_back_as_zero(redis_client: redis.Redis):
    state, model = _loaded(redis_client)
    replica = Replica(state, state.meta())
    replica.load()
    shard = 5 % SHARDS
    state.client.hdel(state.layout.shard(shard).factors("user"), 5)
    replica._reload(shard)
    assert not replica.factors["user"][5].any()
    others = np.delete(np.arange(USERS), 5)
    assert np.array_equal(replica.factors["user"][others], model.user_factors[others])


def test_finiteness_follows_the_rows_as_they_are_set(redis_client: redis.Redis):
    state, _ = _loaded(redis_client)
    replica = Replica(state, state.meta())
    replica.load()
    assert replica.finite
    bad = np.full((2, 4), 0.5, dtype=np.float32)
    bad[1, 2] = np.nan
    replica.set_rows("item", np.array([3, 7]), bad)
    assert not replica.finite
    replica.set_rows("item", np.array([3]), np.ones((1, 4), dtype=np.float32))
    assert not replica.finite  # row 7 still holds a NaN
    replica.set_rows("item", np.array([7]), np.ones((1, 4), dtype=np.float32))
    assert replica.finite
