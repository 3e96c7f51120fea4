"""Reading the receipts topic back: which messages were answered, on both brokers."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from consumer.pipeline.answered import (
    CLOCK_SKEW_S,
    REUSE_SLACK_S,
    Answered,
    answered_through,
    read_answered,
)
from consumer.pipeline.assignment import Assignments, PartitionView
from tests.service.kafka_helpers import create_topics, unique


def publish(bootstrap: str, topic: str, sources: list[str]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for source in sources:
        value = json.dumps({"request_id": source, "source": source})
        producer.produce(topic, key=source, value=value)
    producer.produce(topic, key="x", value=b"not a receipt")  # ignored, never fatal
    assert producer.flush(10) == 0


@pytest.mark.parametrize("broker", ["kafka_bootstrap", "noida_bootstrap"])
def test_the_last_answered_offset_of_each_wanted_partition(broker, request):
    bootstrap = request.getfixturevalue(broker)
    topic = unique("receipts")
    create_topics(bootstrap, [topic], partitions=3)
    publish(bootstrap, topic, ["d:0:90", "d:1:95"])  # before the state's last commit
    time.sleep(1.0)
    committed_at = time.time()
    time.sleep(0.2)
    publish(bootstrap, topic, ["d:0:4", "d:0:12", "d:0:7", "d#2:1:3", "other:0:99"])
    wanted = {"d:0", "d:1", "d#2:1"}
    config = {"bootstrap.servers": bootstrap}

    def answered(since: float | None, skew_s: float = 0.0) -> dict[str, int]:
        return answered_through(config, topic, wanted, since, skew_s=skew_s)

    assert answered(committed_at) == {"d:0": 12, "d#2:1": 3}
    everything = {"d:0": 90, "d:1": 95, "d#2:1": 3}
    assert answered(committed_at, skew_s=CLOCK_SKEW_S) == everything  # another clock
    assert answered(None) == everything
    assert answered(time.time() + 60) == {}
    # Every source named since then, for a shard's new owner to tell a request it still has
    # to answer from one answered before a restore lost its effect.
    found = read_answered(config, topic, committed_at, skew_s=0.0)
    assert found.sources == {"d:0:4", "d:0:12", "d:0:7", "d#2:1:3", "other:0:99"}


def test_what_this_process_made_durable_counts_as_answered_after_a_rollback():
    assignments = Assignments(None, {}, None)  # type: ignore[arg-type]
    assignments.views[("d", 0)] = PartitionView(epoch=0, next_offset=10)
    assignments.views[("d", 1)] = PartitionView(epoch=1, next_offset=5)
    assignments.views[("d", 2)] = PartitionView(epoch=0, next_offset=8, reapply_through=20)
    assignments.lost_through({"d:0": 14, "d#1:1": 3, "d:2": 9})
    assert assignments.acknowledged() == {"d:0": (-1, 14), "d:2": (-1, 20)}


def test_a_recent_read_serves_a_later_since_within_the_slack_only():
    found = Answered(since=1000.0)
    assert found.covers(1000.0, max_age_s=10)
    assert found.covers(2000.0, max_age_s=10)  # later: everything it needs is in the read
    assert found.covers(1000.0 - REUSE_SLACK_S, max_age_s=10)
    assert not found.covers(1000.0 - REUSE_SLACK_S - 1, max_age_s=10)  # earlier: not read
    assert not found.covers(None, max_age_s=10)  # the whole topic: not read
    assert Answered(since=None).covers(None, max_age_s=10)
    stale = Answered(since=1000.0, read_at=time.monotonic() - 11)
    assert not stale.covers(2000.0, max_age_s=10)
