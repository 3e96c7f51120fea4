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


def test_an_unknown_toml_key_is_refused_naming_the_nearest_setting(tmp_path):
    config = tmp_path / "unlearn.toml"
    config.write_text('kafka_bootstrap_server = "kafka:9092"\n')
    with pytest.raises(InputError) as caught:
        load_settings(config)
    assert "kafka_bootstrap_server" in str(caught.value)
    assert "did you mean kafka_bootstrap_servers" in str(caught.value)


def test_an_unknown_environment_variable_is_reported(monkeypatch, caplog):
    monkeypatch.setenv("UNLEARN_BATCH_MAX_EVENT", "100")
    with caplog.at_level("WARNING", logger="unlearn.settings"):
        settings = load_settings(None)
    assert settings.batch_max_events == 500  # not taken for the setting it resembles
    (warning,) = [r.getMessage() for r in caplog.records if "UNLEARN_BATCH_MAX_EVENT " in
                  r.getMessage() + " "]  # fmt: skip
    assert "did you mean UNLEARN_BATCH_MAX_EVENTS" in warning


def test_kafka_properties_of_any_scalar_type_are_passed_as_text(tmp_path):
    config = tmp_path / "unlearn.toml"
    config.write_text('kafka_properties = { "socket.timeout.ms" = 5000, '
                      '"enable.ssl.certificate.verification" = false }\n')  # fmt: skip
    kafka = load_settings(config).kafka_common()
    assert kafka["socket.timeout.ms"] == "5000"
    assert kafka["enable.ssl.certificate.verification"] == "false"


def test_a_wrong_value_is_one_readable_clause_per_setting(tmp_path):
    config = tmp_path / "unlearn.toml"
    config.write_text('batch_max_events = 0\nredis_cluster = "sometimes"\n')
    with pytest.raises(InputError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert message.startswith(str(config))
    assert "batch_max_events: input should be greater than or equal to 1 (got 0)" in message
    assert "redis_cluster:" in message and "'sometimes'" in message
    assert "pydantic" not in message and "\n" not in message


def test_the_example_file_names_every_setting_and_loads():
    from pathlib import Path

    from consumer.settings import Settings

    example = Path(__file__).resolve().parents[2] / "docs" / "unlearn.example.toml"
    text = example.read_text()
    for name in Settings.model_fields:
        assert f"{name} = " in text, name
    load_settings(example)
