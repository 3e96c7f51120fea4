"""Operator commands against real servers: `unlearn redrive` and `unlearn skip-gap`."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.cli import main
from tests.service.conftest import Setup, service_running, url_of
from tests.service.kafka_helpers import event, eventually, produce, read_all, receipts_of


def command(setup: Setup, monkeypatch, capsys, *args: str) -> tuple[int, object]:
    s = setup.settings
    for name in ("topic_interactions", "topic_deletions", "topic_receipts", "topic_dlq"):
        monkeypatch.setenv(f"UNLEARN_{name.upper()}", getattr(s, name))
    if setup.state.client.__class__.__name__ == "RedisCluster":
        monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", "true")
    code = main([*args, "--bootstrap-servers", setup.bootstrap, "--redis-url",
                 url_of(setup.state.client), "--namespace", s.namespace])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else None


def test_redrive_sends_the_chosen_dead_letters_back_once(setup, monkeypatch, capsys):
    s = setup.settings
    long_pad = "x" * 200
    too_long = [
        (f"r{n}", event(user=f"r{n}", item="i1", weight=1.0, pad=long_pad)) for n in range(3)
    ]
    produce(setup.bootstrap, s.topic_interactions, [*too_long, (None, b"not json")])
    strict = s.model_copy(update={"max_message_bytes": 100})  # a setting too strict
    setup.settings = strict
    with service_running(setup.service()):
        dead = read_all(setup.bootstrap, s.topic_dlq, lambda m: len(m) >= 4)
    assert sorted(dict(m.headers())["unlearn.reason"].decode() for m in dead) == [
        "not_json", "oversized", "oversized", "oversized"
    ]  # fmt: skip
    setup.settings = s  # the operator fixed the setting
    code, dry = command(setup, monkeypatch, capsys, "redrive", "--reason", "oversized",
                        "--dry-run")  # fmt: skip
    assert code == 0 and dry["would_redrive"] == {"oversized": 3} and dry["redriven"] == {}
    code, report = command(setup, monkeypatch, capsys, "redrive", "--reason", "oversized")
    assert report["redriven"] == {"oversized": 3} and report["dead_letters_examined"] == 4
    code, again = command(setup, monkeypatch, capsys, "redrive", "--reason", "oversized")
    assert again["redriven"] == {} and again["already_redriven"] == 3  # never twice
    with service_running(setup.service()) as service:
        eventually(lambda: (setup.state.lookup("user", ["r0", "r1", "r2"]) >= 0).all())
        index = setup.state.lookup("user", ["r0", "r1", "r2"])
        eventually(lambda: all(len(r) for r in setup.state.read_rows("user", index, 4)))
        assert service.metrics.redriven.labels("applied")._value.get() == 3
    # The not_json one stays where it was, and nothing else was dead-lettered meanwhile.
    assert len(read_all(setup.bootstrap, s.topic_dlq, lambda m: False, timeout=3)) == 4


def test_a_gap_holds_its_partition_until_the_operator_accepts_it(noida_setup, monkeypatch, capsys):
    setup = noida_setup
    s = setup.settings
    pairs = [divmod(int(k), setup.data.shape[1]) for k in setup.data.entry_keys[:40]]
    messages = [(f"u{u}", event(user=f"u{u}", item=f"i{i}", request_id=f"g{n}"))
                for n, (u, i) in enumerate(pairs)]  # fmt: skip
    with service_running(setup.service()):
        produce(setup.bootstrap, s.topic_deletions, messages[:20])
        receipts_of(setup.bootstrap, s.topic_receipts, 20)
    produce(setup.bootstrap, s.topic_deletions, messages[20:])
    admin = AdminClient({"bootstrap.servers": setup.bootstrap})
    reader = Consumer({"bootstrap.servers": setup.bootstrap, "group.id": "watermarks"})
    ends = [TopicPartition(s.topic_deletions, n, reader.get_watermark_offsets(
        TopicPartition(s.topic_deletions, n), timeout=10)[1]) for n in (0, 1)]  # fmt: skip
    reader.close()
    for future in admin.delete_records(ends).values():  # retention passes the unread ones
        future.result(timeout=30)
    # What the state applied of each partition, and so what it misses.
    applied = setup.state.read_applied()
    missing = {
        tp.partition: tp.offset - applied[f"{s.topic_deletions}:{tp.partition}"] - 1
        for tp in ends
        if f"{s.topic_deletions}:{tp.partition}" in applied
    }
    assert sum(missing.values()) > 0
    with service_running(setup.service()) as service:
        eventually(lambda: len(service.health.gaps) == len(missing), what="the gaps noticed")
        ready, why = service.health.ready()
        assert not ready and "gone from the broker" in why
        gap = service.metrics.offset_gap
        for number, count in missing.items():
            assert gap.labels(s.topic_deletions, str(number))._value.get() == count
        code, report = command(setup, monkeypatch, capsys, "skip-gap",
                               f"{s.topic_deletions}:0", f"{s.topic_deletions}:1")  # fmt: skip
        assert code == 2  # not without --yes
        code, report = command(setup, monkeypatch, capsys, "skip-gap", "--yes",
                               f"{s.topic_deletions}:0", f"{s.topic_deletions}:1")  # fmt: skip
        assert code == 0
        assert sum(entry.get("messages", 0) for entry in report) == sum(missing.values())
        eventually(lambda: service.health.ready()[0], timeout=30, what="ready again")
        produce(setup.bootstrap, s.topic_deletions, [("u0", event(user="u0", request_id="next"))])
        receipts = receipts_of(setup.bootstrap, s.topic_receipts, 21)
        assert "next" in {r["request_id"] for r in receipts}


@pytest.fixture(autouse=True)
def _no_stray_settings(monkeypatch):
    for name in ("UNLEARN_REDIS_CLUSTER",):
        monkeypatch.delenv(name, raising=False)
