"""Service settings: environment (UNLEARN_*), then a TOML config file, then flags.

Each later source overrides the earlier one. Any librdkafka property passes through
`kafka_properties` (SASL and SSL included). Secrets (passwords in the Redis URL, Kafka
properties that hold passwords, secrets or keys) are masked wherever settings are printed.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from consumer.errors import InputError
from consumer.kafka_log import kafka_logger

_SECRET_WORDS = ("password", "secret", "key", "token", "credential")
MASK = "***"
ENV_PREFIX = "UNLEARN_"
log = logging.getLogger("unlearn.settings")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")
    config_file_values: ClassVar[dict[str, Any]] = {}  # set per load by load_settings

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_properties: dict[str, str | bool | int | float] = Field(
        default_factory=dict, description="extra librdkafka properties, e.g. sasl.mechanism"
    )
    kafka_sasl_password: SecretStr | None = None  # merged as sasl.password
    kafka_ssl_key_password: SecretStr | None = None  # merged as ssl.key.password
    redis_url: SecretStr = SecretStr("redis://localhost:6379/0")
    redis_password: SecretStr | None = None  # AUTH password, kept out of the URL
    redis_cluster: bool = False
    redis_timeout_s: float = Field(
        30.0, gt=0, description="a Redis call that waits longer fails (and is retried)"
    )
    topic_interactions: str = "interactions"
    topic_deletions: str = "deletions"
    topic_receipts: str = "unlearn-receipts"
    topic_dlq: str = "unlearn-dlq"
    topic_factors: str = Field(
        "unlearn-factors",
        description="compacted topic every committed factor change goes to, before the "
        "receipts that depend on it ('': none, for deployments nothing serves from)",
    )
    group_id: str = "unlearn"
    namespace: str = "default"
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_host: str = Field(
        "127.0.0.1", description="address /metrics, /healthz, /readyz bind (the chart: 0.0.0.0)"
    )
    http_timeout_s: float = Field(
        5.0, gt=0, description="an HTTP client that sends nothing for this long is dropped"
    )
    http_max_connections: int = Field(
        32, ge=1, description="HTTP connections served at once; more wait in the backlog"
    )
    max_clock_skew_s: float = Field(
        300.0,
        ge=0,
        description="an event time further ahead than this counts at its arrival (and is counted)",
    )
    batch_max_events: int = Field(500, ge=1)
    batch_max_ms: float = Field(
        0.0,
        ge=0,
        description="how long a batch may wait for more input (0: close once nothing waits)",
    )
    producer_linger_ms: float = Field(
        1.0, ge=0, description="how long receipts wait to be sent together (librdkafka linger.ms)"
    )
    fetch_wait_max_ms: int = Field(
        100, ge=1, description="how long the broker may hold a fetch with nothing to return"
    )
    input_order_wait_ms: float = Field(
        1000.0,
        ge=0,
        description="while partitions are behind (a replay), how long the input merge waits "
        "for one the broker says has more to give, before going on without it (0: take "
        "messages as they are read, in timestamp order among those)",
    )
    max_message_bytes: int = Field(4096, ge=64)
    consolidate_idle_ms: float = Field(
        0.0, ge=0, description="no consolidation slice this soon after the last event"
    )
    consolidate_quiet_ms: float = Field(
        2000.0,
        ge=0,
        description="the input quiet this long: a forgetting cycle runs on to rest (the settle "
        "rule ends its rounds only while events arrive)",
    )
    consolidate_quiet_reach: float = Field(
        50.0,
        ge=0,
        description="rows a forgetting cycle may re-solve past the settle rule (the input "
        "quiet), per deleted pair since the model was last at rest",
    )
    consolidate_slice_ms: float = Field(
        10.0, gt=0, description="the time one consolidation slice should take"
    )
    consolidate_tolerance: float = Field(
        1e-3,
        gt=0,
        description="a forgetting cycle re-solves a row once this share of its "
        "confidence-weighted inputs moved",
    )
    consolidate_write_tolerance: float = Field(
        1e-4,
        ge=0,
        description="a cycle writes (and publishes) a row only if it moved more than this, "
        "relatively",
    )
    consolidate_max_rounds: int = Field(
        60, ge=1, description="pairs of rounds (users, then items) a forgetting cycle runs at most"
    )
    consolidate_sweeps: int = Field(
        0,
        ge=0,
        description="ALS sweeps over the owned shards when the service starts (0: none; "
        "`unlearn consolidate` asks a running service)",
    )
    consolidate_sweep_tolerance: float = Field(
        1e-4,
        ge=0,
        description="requested sweeps end once one lowers the objective by less (relatively)",
    )
    revoke_budget_s: float = Field(10.0, gt=0)
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_poll_interval_ms: int = Field(
        300_000, ge=1000, description="also the rebalance timeout; above the longest sweep"
    )
    dlq_max_ratio: float = Field(
        0.5, gt=0, le=1, description="dead-lettered share of recent messages that pauses input"
    )
    dlq_window: int = Field(1000, ge=10, description="recent messages the ratio is taken over")
    dlq_min_messages: int = Field(100, ge=1, description="no pause before this many messages")
    dlq_pause_s: float = Field(300.0, ge=0, description="pause length; 0: until restarted")
    redis_retry_budget_s: float = Field(
        300.0, gt=0, description="how long a batch waits out a Redis outage before exiting"
    )
    solve_threads: int = Field(
        1, ge=0, description="threads for a batch's row solves (0: one per core)"
    )
    retention_days: float = Field(
        0.0, ge=0, description="interactions older than this many days are forgotten (0: kept)"
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="a shard's retention passes start at most this often"
    )
    retention_users_per_step: int = Field(
        500, ge=1, description="users one retention step looks at (between batches)"
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="names this instance as the owner of its shards (pod name)",
    )
    part_retry_s: float = Field(
        10.0,
        gt=0,
        description="a request's part another owner took but did not answer: asked again after",
    )
    wait_for_model_s: float = Field(
        0.0, ge=0, description="wait this long for `unlearn load` before giving up (0: fail)"
    )
    kafka_connect_timeout_s: float = Field(
        30.0, gt=0, description="at start, how long the brokers may take to answer"
    )
    topics_wait_s: float = Field(
        300.0, ge=0, description="at start, how long missing topics are waited for"
    )
    create_topics: bool = Field(
        False, description="create missing topics at start (else they are waited for)"
    )
    create_topics_partitions: int = Field(
        12, ge=1, description="partitions of the topics create_topics creates"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_source = InitSettingsSource(settings_cls, cls.config_file_values)
        return (init_settings, file_source, env_settings)

    def redacted(self) -> dict[str, Any]:
        """Everything, with secrets masked: safe to print and log."""
        values = self.model_dump()
        values["redis_url"] = mask_url(self.redis_url.get_secret_value())
        for name in ("kafka_sasl_password", "kafka_ssl_key_password", "redis_password"):
            values[name] = None if getattr(self, name) is None else MASK
        values["kafka_properties"] = {
            k: (MASK if _secret_name(k) else v) for k, v in self.kafka_properties.items()
        }
        return values

    def kafka_common(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            # librdkafka takes every property as text (TOML and JSON give numbers, booleans)
            **{k: _property_text(v) for k, v in self.kafka_properties.items()},
        }
        config["logger"] = kafka_logger()  # librdkafka's lines through ours (kafka_log.py)
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return config


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, a TOML file and explicit overrides (None: not given)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(config_file, f"cannot read config: {exc}") from exc
        unknown = sorted(set(file_values) - set(Settings.model_fields))
        if unknown:
            raise InputError(config_file, "; ".join(_unknown(k, k) for k in unknown))
    for name in unknown_variables(os.environ):
        log.warning("%s", _unknown(name, name.removeprefix(ENV_PREFIX).lower(), ENV_PREFIX))
    layered = type("LayeredSettings", (Settings,), {"config_file_values": file_values})
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return layered(**given)
    except ValidationError as exc:
        raise InputError(config_file or "settings", _explain(exc)) from exc
    except ValueError as exc:
        raise InputError(config_file or "settings", str(exc)) from exc


# Variables of the project's own tools (tests, benchmarks, CI), not settings of the service.
TOOL_VARIABLES = frozenset(
    f"{ENV_PREFIX}{name}" for name in ("DATA_DIR", "HELM", "SOAK", "CAMPAIGN_REPORT")
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """`UNLEARN_*` variables that name no setting (a typo would otherwise be ignored)."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    return sorted(
        name for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known | TOOL_VARIABLES
    )  # fmt: skip


def _unknown(shown: str, key: str, prefix: str = "") -> str:
    """`shown` is not a setting, with the nearest setting's name if one is close."""
    close = difflib.get_close_matches(key, list(Settings.model_fields), n=1, cutoff=0.75)
    hint = f" (did you mean {prefix}{close[0].upper() if prefix else close[0]}?)" if close else ""
    where = "environment variable" if prefix else "key"
    listed = "README.md (Configuration) and docs/unlearn.example.toml list every setting"
    return f"unknown {where} {shown}{hint}: {listed}"


def _explain(exc: ValidationError) -> str:
    """One short clause per wrong setting: its name, what is wrong, what it got."""
    out = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        if error["type"] == "extra_forbidden":
            out.append(_unknown(name, str(error["loc"][0])))
            continue
        given = error.get("input")
        shown = "" if isinstance(given, dict) or _secret_name(name) else f" (got {given!r})"
        out.append(f"{name}: {error['msg'].lower()}{shown}")
    return "; ".join(out)


def _property_text(value: str | bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def mask_url(url: str) -> str:
    """The URL with every secret masked: the password in its user part, and any query or
    fragment parameter named like a secret (redis-py reads `?password=...`)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query, fragment = _mask_params(parts.query), _mask_params(parts.fragment)
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def _secret_name(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def _mask_params(text: str) -> str:
    if not text:
        return text
    out = []
    for pair in text.split("&"):
        name, eq, _ = pair.partition("=")
        out.append(f"{name}={MASK}" if eq and _secret_name(unquote(name)) else pair)
    return "&".join(out)
