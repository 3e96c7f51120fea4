"""Ingest (shards/routing.py): each event to its shard's inbox in the input's time order,
a deletion never creating an id, and what a batch records of its partitions; on one
redis-server and on a Cluster."""

from __future__ import annotations

import numpy as np
import redis

from consumer.events import Deletion, Interaction, Source
from consumer.shards.messages import Routed
from consumer.shards.routing import advance, marks, route
from consumer.state.bootstrap import load
from consumer.state.layout import shard_of
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.kafka_helpers import unique


def test_a_batch_takes_each_partition_forward_only_and_marks_its_last_fingerprint():
    sources = [Source("t", 0, 5, fingerprint="a"), Source("t", 0, 7, fingerprint="b"),
               Source("t", 1, 2), Source("t", 0, 6, fingerprint="c")]  # fmt: skip
    assert advance({"t:0": 9, "t:1": 1}, sources) == {"t:0": 9, "t:1": 2}
    assert marks(sources) == {"t:0": "7:b"}  # partition 1's message has no fingerprint


def test_events_go_to_their_shards_in_time_order_and_deletions_create_no_id(
    redis_client: redis.Redis,
):
    model, data = binary_model(5, 30, 10, 0.3, factors=4, iterations=2)
    state = ModelState(redis_client, unique("routing"))
    load(state, model, data, np.full(data.nnz, 1e9), shards=4)
    late = Interaction("u3", "i-new", 1.0, 50.0, Source("i", 0, 1, stamp=5_000))
    early = Deletion("u3", "i1", 40.0, "r", Source("d", 0, 1, stamp=4_000))
    unseen = Deletion("u-never", None, 40.0, "q", Source("d", 0, 2, stamp=4_500))
    routed = route(state, 4, [late], [early, unseen], {"d:0": (0, 1)}, {})
    user = int(state.lookup("user", ["u3"])[0])
    mine = [m for m in routed[shard_of(user, 4)]
            if isinstance(m, Routed) and m.event.user == "u3"]  # fmt: skip
    assert [m.event for m in mine] == [early, late]  # the deletion came first
    assert mine[0].reapplied and not mine[1].reapplied  # acknowledged before, lost since
    assert state.lookup("user", ["u-never"])[0] < 0  # a deletion names ids, never makes one
    assert sum(len(v) for v in routed.values()) == 3
