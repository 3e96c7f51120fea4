"""librdkafka's lines through the service's logger, without the flood."""

from __future__ import annotations

import logging

from consumer.kafka_log import Repeats, kafka_logger
from consumer.settings import load_settings


def test_repeated_client_lines_pass_once_per_interval_with_a_count():
    repeats = Repeats(every_s=60)

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("unlearn.kafka", logging.ERROR, "", 0, text, (), None)

    first = line("127.0.0.1:9092/bootstrap: Connect failed (after 0ms in state CONNECT)")
    assert repeats.filter(first)
    for n in range(20):  # the same line with other numbers
        assert not repeats.filter(line(f"127.0.0.1:9092/bootstrap: Connect failed (after {n}ms"
                                       " in state CONNECT)"))  # fmt: skip
    assert repeats.filter(line("another line"))
    repeats.every_s = 0
    shown = line("127.0.0.1:9092/bootstrap: Connect failed (after 5ms in state CONNECT)")
    assert repeats.filter(shown) and "(20 like it" in shown.getMessage()


def test_every_kafka_client_logs_through_the_service_logger():
    config = load_settings(None).kafka_common()
    assert config["logger"] is kafka_logger()
    assert any(isinstance(f, Repeats) for f in kafka_logger().filters)
