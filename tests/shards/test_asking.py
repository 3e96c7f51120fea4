"""Parts asked of other shards (shards/asking.py): a part still queued in its shard's
inbox is left alone, one taken and not done within the retry is asked again, a request
taken over is asked at once; on one redis-server and on a Cluster."""

from __future__ import annotations

import numpy as np
import redis

from consumer.events import Deletion, Source
from consumer.shards.asking import PartsAsked, part_message, taken
from consumer.shards.messages import Purge, Solve, Waiter, encode
from consumer.shards.requests import Request, item_part, items_part, purge_part, user_part
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.kafka_helpers import unique


def pair_request(items_shard: int) -> Request:
    deletion = Deletion("u1", "i9", 100.0, "req-1", Source("deletions", 0, 7), 101.0, None, 99.0)
    parts = {user_part(0): None, items_part(items_shard): None}
    return Request(deletion, 0, 1, 9, parts, items={items_shard: [9, 13]})


def test_an_entry_is_taken_once_the_cursor_reaches_it_comparing_ids_as_numbers():
    assert taken("5-0", "5-0") and taken("9-1", "10-0")
    assert not taken("10-0", "9-9") and not taken("5-0", None)
    assert taken("", "1-0")  # asked with no entry recorded: taken once anything was


def test_each_part_is_asked_with_its_message():
    request = pair_request(3)
    solve = part_message(request, items_part(3))
    assert solve == Solve((9, 13), Waiter(0, request.source, items_part(3)))
    item = Deletion(None, "i9", 100.0, "req-2", Source("deletions", 0, 8), 101.0, None, 99.0)
    whole = Request(item, 2, -1, 9, {purge_part(1): None, item_part(2): None})
    purge = Purge(9, 100.0, Waiter(2, whole.source, purge_part(1)))
    assert part_message(whole, purge_part(1)) == purge
    assert part_message(whole, item_part(2)) is None  # the item waits for its purges


def test_a_part_is_asked_again_only_once_taken_and_overdue(redis_client: redis.Redis):
    model, data = binary_model(3, 20, 12, 0.3, factors=4, iterations=2)
    state = ModelState(redis_client, unique("asking"))
    load(state, model, data, np.full(data.nnz, 1e9), shards=4)
    now = [1000.0]
    asking = PartsAsked(state, lambda: now[0], retry_s=10.0)
    request = pair_request(3)
    message = part_message(request, items_part(3))
    ids = state.log.send({3: [encode([message])]})
    asking.sent({3: [message]}, ids, [request], now[0])
    inbox = state.layout.shard(3).inbox
    assert asking.waiting and redis_client.xlen(inbox) == 1

    now[0] = 1005.0  # within the retry
    assert asking.ask_again([request]) == 0
    now[0] = 1020.0  # overdue, but still queued in the inbox: its owner will take it
    assert asking.ask_again([request]) == 0
    redis_client.set(state.layout.shard(3).cursor, ids[3][0])  # taken, never answered
    now[0] = 1040.0
    assert asking.ask_again([request]) == 1
    assert redis_client.xlen(inbox) == 2

    asking.answered(request.source)
    assert not asking.waiting
    asking.taken_over([request.source])  # another owner's request, now this one's
    assert asking.ask_again([request]) == 1  # asked at once, whatever the retry
