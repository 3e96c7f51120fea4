"""What `unlearn run` checks before it consumes: each failure a user can cause ends in one
line that names the setting to change (exit status 2, README "Exit status"), within a
bounded time, instead of a client that retries forever.

- the brokers answer within `kafka_connect_timeout_s` (a wrong address, port, protocol or
  credentials);
- the topics exist (inputs, receipts, dead letters, factors): created when
  `create_topics` allows it (the factors topic compacted), otherwise reported and checked
  again every few seconds for up to `topics_wait_s` (an operator creating them
  meanwhile is seen within seconds);
- the metrics port is free (checked where the server binds: consumer/cli/service.py).
Redis' reachability and mode are checked where it is connected (`connect`)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.errors import InputError
from consumer.settings import Settings

log = logging.getLogger("unlearn.preflight")
TOPIC_RECHECK_S = 5.0


def topics_of(settings: Settings) -> list[str]:
    return [
        settings.topic_interactions,
        settings.topic_deletions,
        settings.topic_receipts,
        settings.topic_dlq,
        *([settings.topic_factors] if settings.topic_factors else []),
    ]


def check_kafka(
    settings: Settings, clock=time.monotonic, sleep=time.sleep, waiting=lambda what: None
) -> None:
    """`waiting(what)`: told what the check waits for (the service's /readyz says it)."""
    waiting(f"the brokers ({settings.kafka_bootstrap_servers}) to answer")
    admin = AdminClient(settings.kafka_common())
    existing = _topics(admin, settings, settings.kafka_connect_timeout_s)
    missing = [t for t in topics_of(settings) if t not in existing]
    if missing and settings.create_topics:
        _create(admin, settings, missing)
        return
    if not missing:
        return
    deadline = clock() + settings.topics_wait_s
    waiting(f"topics to exist: {', '.join(missing)} (checked every {TOPIC_RECHECK_S:.0f} s)")
    log.error(
        "topics missing: %s. Create them, or set create_topics = true "
        "(UNLEARN_CREATE_TOPICS=true); checking again every %.0f s for up to %.0f s",
        ", ".join(missing), TOPIC_RECHECK_S, settings.topics_wait_s,
    )  # fmt: skip
    while True:
        missing = [t for t in missing if t not in _topics(admin, settings, 10.0)]
        if not missing:
            log.info("all topics exist now")
            return
        if clock() >= deadline:
            raise InputError(
                "kafka",
                f"topics still missing after {settings.topics_wait_s:.0f} s: "
                f"{', '.join(missing)}. Create them, or set create_topics = true "
                "(UNLEARN_CREATE_TOPICS=true), or correct the topic_* settings",
            )
        sleep(TOPIC_RECHECK_S)


def _topics(admin: AdminClient, settings: Settings, timeout_s: float) -> set[str]:
    try:
        return set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise InputError("kafka", no_broker(settings, exc, timeout_s)) from exc


def no_broker(settings: Settings, exc: KafkaException, timeout_s: float) -> str:
    """The line for brokers that did not answer: where, how long, why, what to change."""
    error = exc.args[0]
    why = error.str() if hasattr(error, "str") else str(error)
    return (
        f"no broker answered at {settings.kafka_bootstrap_servers} within {timeout_s:.0f} s "
        f"({why}): check kafka_bootstrap_servers (UNLEARN_KAFKA_BOOTSTRAP_SERVERS) and "
        "kafka_properties (protocol, credentials)"
    )


def new_topic(settings: Settings, topic: str, partitions: int) -> NewTopic:
    """The factors topic is compacted: a serving layer that starts reads each row's newest
    value, not its history."""
    config = {"cleanup.policy": "compact"} if topic == settings.topic_factors else {}
    return NewTopic(topic, num_partitions=partitions, config=config)


def _create(admin: AdminClient, settings: Settings, missing: list[str]) -> None:
    partitions = settings.create_topics_partitions
    futures = admin.create_topics([new_topic(settings, t, partitions) for t in missing])
    for topic, future in futures.items():
        try:
            future.result(timeout=settings.kafka_connect_timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: another instance won
                continue
            raise InputError(
                "kafka",
                f"could not create topic {topic} ({exc.args[0].str()}): create it by hand, "
                "or grant this principal CreateTopics",
            ) from exc
    log.warning("created topics %s with %d partitions each", ", ".join(missing), partitions)
