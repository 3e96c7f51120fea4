"""A deletion request spanning owners (shards/requests.py): its receipt only when every
part is durable, each part counted once, and the pending form survives a round trip."""

from __future__ import annotations

from consumer.events import Deletion, Source
from consumer.shards.requests import (
    Request,
    item_part,
    items_part,
    part_shard,
    purge_part,
    user_part,
)


def pending_pair() -> Request:
    deletion = Deletion("u1", "i9", 100.0, "req-1", Source("deletions", 3, 41), 101.0, None, 99.0)
    parts = {user_part(2): None, items_part(5): None}
    return Request(deletion, coordinator=2, user=2, item=5, parts=parts)


def test_the_receipt_waits_for_every_part_and_counts_each_once():
    request = pending_pair()
    assert request.waiting() == ["user@2", "items@5"] and not request.complete()
    assert request.done(user_part(2), 101.5, removed=1)
    assert not request.complete()
    assert request.done(items_part(5), 102.0)
    assert not request.done(items_part(5), 103.0, removed=7)  # told twice: counted once
    assert not request.done("items@9", 103.0, removed=7)  # not a part of it
    assert request.complete()
    receipt = request.receipt()
    assert receipt.removed == 1
    assert receipt.applied_at == 102.0  # when the last part became durable
    assert receipt.latency_seconds == 102.0 - 99.0  # from the request's own time
    assert receipt.parts == (("items@5", 102.0), ("user@2", 101.5))
    assert receipt.source == "deletions:3:41"


def test_an_items_request_completes_its_purges_before_the_item():
    deletion = Deletion(None, "i9", 100.0, None, Source("deletions", 0, 7), 100.0)
    parts = {purge_part(s): None for s in range(3)} | {item_part(1): None}
    request = Request(deletion, coordinator=1, user=-1, item=9, parts=parts)
    for shard in range(2):
        request.done(purge_part(shard), 100.1, removed=2, kept=1)
    assert not request.purges_done()
    request.done(purge_part(2), 100.2, removed=1)
    assert request.purges_done() and not request.complete()
    request.done(item_part(1), 100.3)
    assert request.complete()
    assert (request.receipt().removed, request.receipt().kept_newer) == (5, 2)
    assert part_shard(item_part(1)) == 1 and part_shard("purge@12") == 12


def test_a_pending_request_survives_its_json_and_a_copy_is_independent():
    request = pending_pair()
    request.items = {5: [9, 11]}
    request.done(user_part(2), 101.5, removed=1)
    again = Request.from_json(request.to_json())
    assert again == request
    copy = again.copy()
    copy.done(items_part(5), 102.0)
    assert copy.complete() and not again.complete()
