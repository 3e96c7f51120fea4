"""Small Kafka helpers for the service tests: topics, producing, reading a topic whole."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.settings import Settings, load_settings

PARTITIONS = 2


def eventually(check: Callable[[], object], timeout: float = 60.0, what: str = "") -> object:
    """Wait until `check()` is truthy; its value, or AssertionError after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        time.sleep(0.05)


def receipts_of(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[dict]:
    """The first `count` receipts on the topic, as dicts."""
    messages = read_all(bootstrap, topic, lambda m: len(m) >= count, timeout)
    return [json.loads(m.value()) for m in messages]


# The service's topics, as the settings name them (topic_<kind>).
TOPIC_KINDS = ("interactions", "deletions", "receipts", "dlq", "factors")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names])
    for future in futures.values():
        future.result(timeout=30)


def recreate_topic(bootstrap: str, topic: str) -> None:
    """Delete the topic and create it again (a new log under the same name)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)
    time.sleep(1)  # the broker finishes the deletion before the name is free
    create_topics(bootstrap, [topic])


def produce(bootstrap: str, topic: str, messages: Iterable[tuple]) -> int:
    """(key, value) or (key, value, timestamp in ms) per message."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    count = 0
    for key, value, *stamp in messages:
        producer.produce(topic, key=key, value=value, timestamp=stamp[0] if stamp else 0)
        count += 1
        if count % 5000 == 0:
            producer.flush()
    assert producer.flush(30) == 0
    return count


def event(**fields) -> bytes:
    return json.dumps(fields).encode()


def read_all(
    bootstrap: str,
    topic: str,
    until: Callable[[list], bool],
    timeout: float = 60.0,
    partitions: int = PARTITIONS,
) -> list:
    """Every message of the topic from the start, until `until(messages)` or the timeout."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(messages):
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


def fresh_settings(bootstrap: str, redis_url: str, namespace: str, **overrides) -> Settings:
    """Settings on new topics and a new consumer group, with the test broker's fast joins."""
    names = {k: unique(k) for k in TOPIC_KINDS}
    create_topics(bootstrap, names.values())
    return load_settings(
        None,
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        namespace=namespace,
        group_id=unique("group"),
        topic_interactions=names["interactions"],
        topic_deletions=names["deletions"],
        topic_receipts=names["receipts"],
        topic_dlq=names["dlq"],
        topic_factors=names["factors"],
        session_timeout_ms=6000,
        **overrides,
    )


def read_to_end(bootstrap: str, topic: str, partitions: int, timeout: float = 120.0) -> list:
    """Every message of the topic up to each partition's high watermark when called."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False}
    )
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
        for p in range(partitions)
    }
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen = {p: -1 for p in range(partitions)}
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while any(seen[p] < ends[p] - 1 for p in seen):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read up to {seen}, the ends are {ends}")
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is None:
                    messages.append(message)
                    seen[message.partition()] = max(seen[message.partition()], message.offset())
    finally:
        consumer.close()
    return messages
