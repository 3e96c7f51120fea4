"""An owner's receipts (shards/receipting.py): stored with the commit that completes the
request and unsent until acknowledged; a request the trail already answered recorded
beside its first record; retention's own deletions counted, never receipted; what a
shard holds unsent sent again by the owner that takes it; on one server and a Cluster."""

from __future__ import annotations

import json

import numpy as np
import redis

from consumer.events import RETENTION_TOPIC, Deletion, Source
from consumer.shards.receipting import Receipts
from consumer.shards.requests import Request, user_part
from consumer.state.bootstrap import load
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.kafka_helpers import unique


def request(offset: int, topic: str = "deletions", done: bool = True) -> Request:
    deletion = Deletion("u1", "i2", 100.0, f"r{offset}", Source(topic, 0, offset), 101.0, None,
                        99.0)  # fmt: skip
    return Request(deletion, 0, 1, 2, {user_part(0): 102.0 if done else None}, removed=1)


def loaded(client: redis.Redis) -> ModelState:
    model, data = binary_model(4, 20, 12, 0.3, factors=4, iterations=2)
    state = ModelState(client, unique("receipts"))
    load(state, model, data, np.full(data.nnz, 1e9), shards=2)
    return state


def test_a_commit_stores_receipts_unsent_keeps_the_rest_pending(redis_client: redis.Redis):
    state = loaded(redis_client)
    receipts = Receipts(state, lambda: 200.0, shards=2)
    complete, waiting = request(1), request(2, done=False)
    expiring = request(3, topic=RETENTION_TOPIC)
    writes: dict[int, ShardWrite] = {}
    stored, expired = receipts.store(
        {0: {r.source: r for r in (complete, waiting, expiring)}}, writes
    )
    assert list(stored) == [complete.source] and expired == {0: 1}
    write = writes[0]
    assert write.unsent == [complete.source] and complete.source in write.receipts
    assert write.pending[complete.source] is None and write.pending[expiring.source] is None
    assert json.loads(write.pending[waiting.source])["parts"]  # still waiting: kept
    assert receipts.durable(stored, written={}) == []  # its shard's write was refused
    (receipt,) = receipts.durable(stored, written={0: (1, "id")})
    assert receipts.holds_unsent(receipt.key_in_trail, owned=[0])
    receipts.sent([receipt])
    assert not receipts.holds_unsent(receipt.key_in_trail, owned=[0])


def test_a_request_answered_before_is_recorded_beside_it(redis_client: redis.Redis):
    state = loaded(redis_client)
    first = request(5)
    redis_client.hset(state.layout.shard(0).receipts, first.source, first.receipt().to_json())
    receipts = Receipts(state, lambda: 300.0, shards=2)
    writes: dict[int, ShardWrite] = {}
    stored, _ = receipts.store({0: {first.source: request(5)}}, writes)
    ((_, again),) = stored.values()
    assert again.reapplied and again.record == f"{first.source}@102000"
    assert list(writes[0].receipts) == [again.record]  # never over the first record

    receipts.answered([request(6).source])  # the receipts topic shows it answered
    stored, _ = receipts.store({0: {request(6).source: request(6)}}, writes)
    ((_, answered),) = stored.values()
    assert answered.reapplied and answered.record is None


def test_a_shard_taken_over_sends_its_unsent_receipts_again(redis_client: redis.Redis):
    state = loaded(redis_client)
    receipt = request(8).receipt()
    keys = state.layout.shard(1)
    redis_client.hset(keys.receipts, receipt.key_in_trail, receipt.to_json())
    redis_client.sadd(keys.unsent, receipt.key_in_trail)
    receipts = Receipts(state, lambda: 400.0, shards=2)
    receipts.taken_over(1)
    assert receipts.resending
    (resent,) = receipts.take_resend()
    assert resent.resent and resent.request_id == receipt.request_id
    assert not receipts.resending and receipts.holds_unsent(receipt.key_in_trail, owned=[1])
