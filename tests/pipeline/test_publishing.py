"""Publishing against a real broker and Redis (one server and a Cluster): every committed
factor change reaches the factors topic, receipts wait for theirs, a new owner publishes
what its predecessor did not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from confluent_kafka import Producer

from consumer.engine import Engine
from consumer.pipeline.publishing import FactorPublisher
from consumer.serving.records import FactorRecord
from consumer.state.store import ModelState
from tests.service.kafka_helpers import create_topics, read_all, unique
from tests.state import test_engine
from tests.state.test_engine import Stream, first_pair

loaded = test_engine.loaded  # the engine tests' loaded namespace, as a fixture here

SHARDS = 4


@pytest.fixture
def topic(kafka_bootstrap):
    name = unique("factors")
    create_topics(kafka_bootstrap, [name])
    return name


def records(bootstrap: str, topic: str, count: int) -> list[FactorRecord]:
    found = read_all(bootstrap, topic, lambda m: len(m) >= count, timeout=30)
    return [FactorRecord.from_json(m.value()) for m in found]


def test_changes_are_published_once_acknowledged_and_receipts_wait_for_them(
    loaded, kafka_bootstrap, topic
):
    state, _, data = loaded
    users, items = data.shape
    engine, stream = Engine(state), Stream()
    engine.own(range(SHARDS))
    publisher = FactorPublisher(Producer({"bootstrap.servers": kafka_bootstrap}), topic, state)
    # Nothing published yet: the first publish sends every row, each tagged with its shard
    # and commit.
    assert publisher.publish(engine.commits()) == users + items
    assert publisher.drain(30)
    first = records(kafka_bootstrap, topic, users + items)
    assert {(r.side, r.id) for r in first} == (
        {("user", f"u{n}") for n in range(users)} | {("item", f"i{n}") for n in range(items)}
    )
    assert all(r.generation == engine.commits()[r.shard][1][0] for r in first)
    # A deletion: the receipt waits until the rows it changed are acknowledged.
    u, i = first_pair(data)
    out = engine.process([], [stream.delete(f"u{u}", f"i{i}", request_id="r-1")])
    (receipt,) = out.receipts
    assert not publisher.covers(receipt)
    changed = publisher.publish(engine.commits())
    assert 2 <= changed < users + items  # the user, the item, nothing else of the model
    assert not publisher.covers(receipt) or not publisher.pending()
    assert publisher.drain(30)
    assert publisher.covers(receipt)
    # The second publish's records: by their commit, not their place (the topic's
    # partitions are read in no set order).
    first_generation = {r.shard: r.generation for r in first}
    every = records(kafka_bootstrap, topic, users + items + changed)
    latest = [r for r in every if r.generation > first_generation[r.shard]]
    assert {("user", f"u{u}"), ("item", f"i{i}")} <= {(r.side, r.id) for r in latest}
    stored = state.read_factors("user", np.array([u]), SHARDS, 5)[0]
    (mine,) = [r for r in latest if r.id == f"u{u}"]
    assert (mine.factor == stored).all()  # float32 values come back exactly
    # The receipt names each part's shard commit; the records carry it.
    needed = receipt.shard_generations()
    assert all(max(r.generation for r in latest if r.shard == s) >= g for s, g in needed.items())
    assert json.loads(receipt.to_json())["parts"][0]["generation"] > 0


def test_a_new_owner_publishes_what_its_predecessor_did_not(loaded, kafka_bootstrap, topic):
    state, _, data = loaded
    users, items = data.shape
    stream = Stream()
    old = Engine(state)
    old.own(range(SHARDS))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    first = FactorPublisher(producer, topic, state)
    first.publish(old.commits())
    assert first.drain(30)
    published = {s: known[0] for s, (_, known) in old.commits().items()}
    u, i = first_pair(data)
    old.process([], [stream.delete(f"u{u}", f"i{i}", request_id="r-1")])  # never published
    # The owner is gone before publishing; another takes the shards over.
    new = Engine(ModelState(state.client, state.layout.namespace))
    new.own(range(SHARDS))
    successor = FactorPublisher(producer, topic, state)
    produced = successor.publish(new.commits())
    assert 2 <= produced < users + items  # from the predecessor's mark, not every row
    assert successor.drain(30)
    # The records of commits after the first publish (partitions interleave on reading:
    # told apart by generation, not by position).
    later = [r for r in records(kafka_bootstrap, topic, users + items + produced)
             if r.generation > published[r.shard]]  # fmt: skip
    assert len(later) == produced
    assert {("user", f"u{u}"), ("item", f"i{i}")} <= {(r.side, r.id) for r in later}
    # The former owner's late mark is refused (fenced): the mark stays the new owner's.
    first.publish(old.commits())
    first.drain(30)
    assert state.log.read_published(range(SHARDS)) == {
        s: known for s, (_, known) in new.commits().items()
    }
