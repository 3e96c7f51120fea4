"""The in-memory broker keeps the part of Kafka's contract the service relies on: a record
exists once delivered, a kill loses what was not, committed offsets keep their metadata,
a group's members share the partitions, a partition's end is reported where asked."""

from __future__ import annotations

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicCollection, TopicPartition

from consumer.brokers.local import Killed, LocalBroker


def broker_with(topic: str = "t", partitions: int = 2) -> LocalBroker:
    broker = LocalBroker()
    broker.create_topic(topic, partitions)
    return broker


def test_a_record_exists_once_delivered_and_its_callback_says_where():
    broker = broker_with()
    producer = broker.process().producer({})
    delivered = []
    producer.produce("t", key=b"k", value=b"v", on_delivery=lambda e, m: delivered.append((e, m)))
    assert broker.records("t") == [] and len(producer) == 1
    assert producer.poll(0) == 1
    ((error, message),) = delivered
    assert error is None and (message.key(), message.value(), message.offset()) == (b"k", b"v", 0)
    assert [m.value() for m in broker.records("t")] == [b"v"]


def test_one_key_goes_to_one_partition_in_order():
    broker = broker_with(partitions=4)
    producer = broker.process().producer({})
    for n in range(10):
        producer.produce("t", key="same", value=str(n))
    producer.flush()
    records = broker.records("t")
    assert len({m.partition() for m in records}) == 1
    assert [m.value() for m in records] == [str(n).encode() for n in range(10)]


def test_a_record_to_an_unknown_topic_is_refused_on_delivery():
    broker = broker_with()
    producer = broker.process().producer({})
    errors = []
    producer.produce("nowhere", value=b"v", on_delivery=lambda e, m: errors.append(e))
    producer.flush()
    assert errors[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_a_kill_loses_what_was_not_delivered_and_stops_every_client():
    broker = broker_with()
    process = broker.process()
    producer, consumer = process.producer({}), process.consumer({"group.id": "g"})
    producer.produce("t", key=b"a", value=b"delivered")
    producer.poll(0)
    process.kill_when(lambda op: op.kind == "produce" and op.value == b"second")
    producer.produce("t", key=b"a", value=b"in flight")
    with pytest.raises(Killed):
        producer.produce("t", key=b"a", value=b"second")
    assert process.killed_at is not None and process.killed_at.value == b"second"
    with pytest.raises(Killed):
        producer.flush()
    with pytest.raises(Killed):
        consumer.consume(1, 0)
    assert [m.value() for m in broker.records("t")] == [b"delivered"]


def test_committed_offsets_keep_their_metadata_per_group():
    broker = broker_with()
    consumer = broker.process().consumer({"group.id": "g"})
    consumer.commit(offsets=[TopicPartition("t", 1, 7, metadata="note")], asynchronous=False)
    (found,) = consumer.committed([TopicPartition("t", 1)])
    assert (found.offset, found.metadata) == (7, "note")
    other = broker.process().consumer({"group.id": "h"})
    assert other.committed([TopicPartition("t", 1)])[0].offset < 0
    assert broker.committed("g") == {("t", 1): 7}


def test_members_of_a_group_share_the_partitions_and_take_over_on_leave():
    broker = broker_with(partitions=4)
    calls = []

    def member(name: str):
        consumer = broker.process().consumer({"group.id": "g", "auto.offset.reset": "earliest"})
        consumer.subscribe(
            ["t"],
            on_assign=lambda c, ps: (calls.append((name, "assign", len(ps))), c.assign(ps)),
            on_revoke=lambda c, ps: calls.append((name, "revoke", len(ps))),
        )
        return consumer

    first = member("a")
    first.consume(1, 0)
    assert calls == [("a", "assign", 4)]
    second = member("b")
    first.consume(1, 0)
    second.consume(1, 0)
    assert (
        ("a", "revoke", 4) in calls and ("a", "assign", 2) in calls and ("b", "assign", 2) in calls
    )
    second.close()
    first.consume(1, 0)
    assert calls[-1] == ("a", "assign", 4)


def test_a_consumer_reads_from_its_position_and_reports_the_end_where_asked():
    broker = broker_with(partitions=1)
    producer = broker.process().producer({})
    for n in range(3):
        producer.produce("t", value=str(n))
    producer.flush()
    reader = broker.process().consumer({"group.id": "r", "enable.partition.eof": True})
    reader.assign([TopicPartition("t", 0, OFFSET_BEGINNING)])
    found = reader.consume(10, 0)
    assert [m.value() for m in found[:3]] == [b"0", b"1", b"2"]
    assert found[3].error().code() == KafkaError._PARTITION_EOF
    assert reader.consume(10, 0) == []  # the end is reported once
    reader.seek(TopicPartition("t", 0, 1))
    assert [m.value() for m in reader.consume(1, 0)] == [b"1"]
    assert reader.get_watermark_offsets(TopicPartition("t", 0)) == (0, 3)


def test_a_paused_partition_gives_nothing_until_resumed():
    broker = broker_with(partitions=1)
    producer = broker.process().producer({})
    producer.produce("t", value=b"x")
    producer.flush()
    reader = broker.process().consumer({"group.id": "r"})
    reader.assign([TopicPartition("t", 0, 0)])
    reader.pause([TopicPartition("t", 0)])
    assert reader.consume(1, 0) == []
    reader.resume([TopicPartition("t", 0)])
    assert [m.value() for m in reader.consume(1, 0)] == [b"x"]


def test_topics_have_ids_and_metadata():
    broker = broker_with(partitions=3)
    admin = broker.process().admin({})
    (future,) = admin.describe_topics(TopicCollection(["t"])).values()
    assert len(future.result().topic_id) == 32
    consumer = broker.process().consumer({"group.id": "r"})
    assert sorted(consumer.list_topics("t").topics["t"].partitions) == [0, 1, 2]
    assert consumer.list_topics("missing").topics["missing"].error is not None


def test_a_slow_topic_delivers_no_sooner_than_its_delay():
    broker = broker_with()
    broker.delay("t", 0.2)
    producer = broker.process().producer({})
    producer.produce("t", value=b"slow")
    assert producer.poll(0) == 0 and broker.records("t") == []
    assert producer.flush(5) == 0
    assert [m.value() for m in broker.records("t")] == [b"slow"]
