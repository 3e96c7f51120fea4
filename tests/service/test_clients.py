"""Another client on both ends (kafka-python, a pure-Python Kafka client, on noida-db):
what a platform produces with it is applied by the message's own time, and what the
service publishes (receipts, dead letters) reads back as the README says. Nothing may
depend on librdkafka's way of writing or reading a message."""

from __future__ import annotations

import json
import time

import pytest

from tests.service.conftest import service_running
from tests.service.kafka_helpers import eventually

kafka = pytest.importorskip("kafka")


def _read(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list:
    consumer = kafka.KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=500,
    )  # fmt: skip
    out: list = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            out.extend(consumer)
    finally:
        consumer.close()
    assert len(out) >= count, f"{len(out)} of {count} records on {topic}"
    return out


def test_another_clients_messages_count_at_their_own_time(noida_setup):
    s = noida_setup.settings
    bootstrap = noida_setup.bootstrap
    an_hour_ago_ms = int(time.time() * 1000) - 3_600_000
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap)
    # An interaction the user made an hour ago, their deletion of it (no ts of its own: the
    # message's time counts) a second later, and a line that is not JSON.
    producer.send(s.topic_interactions, key=b"u1", timestamp_ms=an_hour_ago_ms,
                  value=json.dumps({"user": "u1", "item": "new-item"}).encode())  # fmt: skip
    producer.send(s.topic_deletions, key=b"u1", timestamp_ms=an_hour_ago_ms + 1000,
                  value=json.dumps({"user": "u1", "item": "new-item",
                                    "request_id": "by-kafka-python"}).encode())  # fmt: skip
    producer.send(s.topic_deletions, key=b"u2", value=b"not json", timestamp_ms=an_hour_ago_ms)
    producer.flush(30)
    producer.close()
    with service_running(noida_setup.service()):
        (receipt,) = _read(bootstrap, s.topic_receipts, 1)
        (dead,) = _read(bootstrap, s.topic_dlq, 1)
        state = noida_setup.state
        eventually(lambda: state.read_receipts(4), timeout=30, what="the receipt stored")
    body = json.loads(receipt.value)
    # keyed by the request id: its receipts stay in order on one partition
    assert body["request_id"] == "by-kafka-python" and receipt.key == b"by-kafka-python"
    assert body["event_ts"] == pytest.approx((an_hour_ago_ms + 1000) / 1000, abs=1e-6)
    assert body["ts_adjusted"] == "missing" and body["removed"] == 1
    # the dead letter: the original value and key, the reason in a header
    assert dead.value == b"not json" and dead.key == b"u2"
    headers = dict(dead.headers)
    assert any(b"not_json" in value for value in headers.values()), headers
