"""What `unlearn run` checks before it consumes: each failure one line naming the setting,
within a bounded time, on a real broker and real Redis servers."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import redis

from consumer.cli.service import _metrics_server, connect
from consumer.embedded import free_port
from consumer.errors import InputError
from consumer.http import Health
from consumer.metrics import Metrics
from consumer.preflight import check_kafka, topics_of
from consumer.settings import load_settings
from tests.service.kafka_helpers import TOPIC_KINDS, create_topics, unique


def settings_for(bootstrap: str, **overrides):
    names = {k: unique(k) for k in TOPIC_KINDS}
    return load_settings(
        None,
        kafka_bootstrap_servers=bootstrap,
        topic_interactions=names["interactions"],
        topic_deletions=names["deletions"],
        topic_receipts=names["receipts"],
        topic_dlq=names["dlq"],
        topic_factors=names["factors"],
        **overrides,
    )


def test_a_broker_nobody_answers_at_ends_in_one_line_naming_the_setting():
    nowhere = f"127.0.0.1:{free_port()}"
    settings = settings_for(nowhere, kafka_connect_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        check_kafka(settings)
    assert time.monotonic() - started < 15  # bounded: the setting plus the client's close
    message = str(caught.value)
    assert nowhere in message and "UNLEARN_KAFKA_BOOTSTRAP_SERVERS" in message
    assert "\n" not in message


def test_missing_topics_are_created_when_allowed(kafka_bootstrap):
    settings = settings_for(kafka_bootstrap, create_topics=True, create_topics_partitions=3)
    check_kafka(settings)
    check_kafka(settings.model_copy(update={"create_topics": False}))  # now they exist


def test_missing_topics_are_waited_for_and_seen_within_seconds(kafka_bootstrap, caplog):
    settings = settings_for(kafka_bootstrap, topics_wait_s=60)
    create_topics(kafka_bootstrap, topics_of(settings)[2:])  # the outputs exist
    later = threading.Timer(3.0, create_topics, (kafka_bootstrap, topics_of(settings)[:2]))
    later.start()
    started = time.monotonic()
    health = Health(60.0, lambda: True)
    health.assigned = 1
    said: list[str] = []

    def waiting(what: str) -> None:  # what /readyz says meanwhile
        health.waiting = what
        said.append(health.ready()[1])

    with caplog.at_level(logging.INFO, logger="unlearn.preflight"):
        check_kafka(settings, waiting=waiting)
    assert time.monotonic() - started < 20  # re-checked every 5 s, not every 5 minutes
    assert said[-1].startswith("starting: topics to exist: ")
    assert settings.topic_interactions in said[-1] and "batch" not in said[-1]
    (missing,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert settings.topic_interactions in missing.getMessage()
    assert "UNLEARN_CREATE_TOPICS" in missing.getMessage()
    assert settings.topic_receipts not in missing.getMessage()


def test_topics_still_missing_when_the_wait_ends_fail_naming_them(kafka_bootstrap):
    settings = settings_for(kafka_bootstrap, topics_wait_s=0)
    with pytest.raises(InputError) as caught:
        check_kafka(settings)
    assert settings.topic_deletions in str(caught.value)
    assert "create_topics" in str(caught.value)


def test_a_cluster_node_without_cluster_mode_is_named(redis_cluster_url):
    settings = load_settings(None, redis_url=redis_cluster_url, redis_cluster=False)
    with pytest.raises(InputError, match="UNLEARN_REDIS_CLUSTER=true"):
        connect(settings)


def test_cluster_mode_on_a_lone_server_is_named(redis_url):
    settings = load_settings(None, redis_url=redis_url, redis_cluster=True)
    with pytest.raises(InputError, match="UNLEARN_REDIS_CLUSTER=false"):
        connect(settings)


def test_an_unreachable_redis_names_its_setting_and_hides_its_password():
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(InputError) as caught:
        connect(load_settings(None, redis_url=url))
    assert "UNLEARN_REDIS_URL" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_metrics_port_in_use_names_the_setting():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        settings = load_settings(None, metrics_port=port, metrics_host="127.0.0.1")
        health = Health(deadline_s=60, redis_ok=lambda: True)
        with pytest.raises(InputError, match="UNLEARN_METRICS_PORT"):
            _metrics_server(settings, Metrics(), health)
    finally:
        taken.close()


def test_a_half_written_namespace_says_to_load_again(redis_url):
    from consumer.state.store import ModelState, StateError

    client = redis.Redis.from_url(redis_url)
    state = ModelState(client, unique("half"))
    client.hset(state.layout.meta, mapping={"users": 3, "items": 2})  # ids, no model
    with pytest.raises(StateError, match="unlearn load --replace"):
        state.meta()
