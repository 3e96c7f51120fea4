"""Settings: environment, then file, then flags; secrets masked wherever printed."""

from __future__ import annotations

import json

import pytest

from consumer.errors import InputError
from consumer.settings import load_settings


def test_file_overrides_environment_and_flags_override_both(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_NAMESPACE", "from-env")
    monkeypatch.setenv("UNLEARN_GROUP_ID", "group-env")
    monkeypatch.setenv("UNLEARN_TOPIC_DLQ", "dlq-env")
    config = tmp_path / "unlearn.toml"
    config.write_text('namespace = "from-file"\ngroup_id = "group-file"\n')
    settings = load_settings(config, group_id="group-flag")
    assert (settings.namespace, settings.group_id, settings.topic_dlq) == (
        "from-file",
        "group-flag",
        "dlq-env",
    )


def test_defaults_follow_the_documented_names(monkeypatch):
    for name in ("NAMESPACE", "GROUP_ID", "TOPIC_DLQ"):
        monkeypatch.delenv(f"UNLEARN_{name}", raising=False)
    settings = load_settings(None)
    assert settings.topic_interactions == "interactions"
    assert settings.topic_receipts == "unlearn-receipts"
    assert settings.group_id == "unlearn" and settings.namespace == "default"


def test_kafka_properties_pass_through_and_secrets_are_masked(monkeypatch):
    monkeypatch.setenv(
        "UNLEARN_KAFKA_PROPERTIES",
        json.dumps(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "svc",
                "ssl.ca.location": "/etc/kafka/ca.pem",
            }
        ),
    )
    monkeypatch.setenv("UNLEARN_KAFKA_SASL_PASSWORD", "kafka-hunter2")
    monkeypatch.setenv("UNLEARN_REDIS_URL", "rediss://app:redis-hunter2@redis:6380/0")
    monkeypatch.setenv("UNLEARN_REDIS_PASSWORD", "other-hunter2")
    settings = load_settings(None)
    config = settings.kafka_common()
    assert (
        config["sasl.mechanism"] == "SCRAM-SHA-512" and config["sasl.password"] == "kafka-hunter2"
    )
    printed = json.dumps(settings.redacted()) + repr(settings) + str(settings)
    for secret in ("kafka-hunter2", "redis-hunter2", "other-hunter2"):
        assert secret not in printed
    assert "rediss://app:***@redis:6380/0" in printed


def test_invalid_settings_are_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="batch_max_events"):
        load_settings(None, batch_max_events=0)
    bad = tmp_path / "bad.toml"
    bad.write_text("namespace = ")
    with pytest.raises(InputError, match="cannot read config"):
        load_settings(bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://redis:6379/0?password=hunter2&db=0", "redis://redis:6379/0?password=***&db=0"),
        ("rediss://:hunter2@redis:6380/0", "rediss://:***@redis:6380/0"),
        (
            "redis://redis/0?ssl_keyfile_password=hunter2",
            "redis://redis/0?ssl_keyfile_password=***",
        ),
        ("redis://redis/0#token=hunter2", "redis://redis/0#token=***"),
    ],
)
def test_a_secret_anywhere_in_the_redis_url_is_masked(monkeypatch, url, shown):
    monkeypatch.setenv("UNLEARN_REDIS_URL", url)
    settings = load_settings(None)
    printed = json.dumps(settings.redacted())
    assert "hunter2" not in printed and shown in printed


def test_the_metrics_endpoint_binds_loopback_unless_told(monkeypatch):
    monkeypatch.delenv("UNLEARN_METRICS_HOST", raising=False)
    assert load_settings(None).metrics_host == "127.0.0.1"
    monkeypatch.setenv("UNLEARN_METRICS_HOST", "0.0.0.0")
    assert load_settings(None).metrics_host == "0.0.0.0"
