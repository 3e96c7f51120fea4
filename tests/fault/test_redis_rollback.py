"""Redis restarted from an older snapshot (AOF off, or a failover that lost writes): the
state is behind what was acknowledged. The service notices, replays what the state lost
from the broker, and every acknowledged deletion is gone from the model again, with its
receipt back in the audit trail."""

from __future__ import annotations

import contextlib
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from consumer.application import Application
from consumer.embedded import free_port, process, redis_args, wait_until
from consumer.engine import Engine
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.conftest import service_running
from tests.service.kafka_helpers import (
    PARTITIONS,
    event,
    eventually,
    fresh_settings,
    produce,
    receipts_of,
    recreate_topic,
)

N_USERS, N_ITEMS = 150, 100


class SnapshotRedis:
    """A redis-server without AOF: what survives a restart is its last SAVE."""

    def __init__(self, workdir: str) -> None:
        self.port, self.workdir = free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._stack = contextlib.ExitStack()
        self.proc = None

    def start(self) -> None:
        args = redis_args(self.port, self.workdir, False)
        self.proc = self._stack.enter_context(process(args, Path(self.workdir) / "redis.log"))
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: client.ping(), "redis-server", timeout=30)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._stack.close()
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def snapshot_redis() -> Iterator[SnapshotRedis]:
    with tempfile.TemporaryDirectory(prefix="unlearn-rollback-") as workdir:
        server = SnapshotRedis(workdir)
        server.start()
        try:
            yield server
        finally:
            server.close()


def deletions(data, rng, count, tag):
    keys = data.entry_keys[rng.choice(data.nnz, count, replace=False)]
    pairs = [(int(k // N_ITEMS), int(k % N_ITEMS)) for k in keys]
    messages = [
        (f"u{u}", event(user=f"u{u}", item=f"i{i}", request_id=f"{tag}{n}"))
        for n, (u, i) in enumerate(pairs)
    ]
    return pairs, messages


def loaded(server: SnapshotRedis, namespace: str, seed: int):
    """A model in a namespace of the server; the state and the data it was loaded with."""
    model, data = binary_model(seed, N_USERS, N_ITEMS, 0.2, factors=6, iterations=3)
    state = ModelState(redis.Redis.from_url(server.url), namespace)
    load(state, model, data, np.full(data.nnz, 1e9), shards=4)
    return state, data


def service_on(server: SnapshotRedis, settings) -> Application:
    client = redis.Redis.from_url(server.url)
    return Application(settings, Engine(ModelState(client, settings.namespace)))


def restarted_from_snapshot(server: SnapshotRedis, settings, chosen, bootstrap) -> list[dict]:
    """Redis back from its last SAVE (the last 50 of 100 deletions lost), then a new
    service on it: the receipts of all 150 applications."""
    server.kill()
    server.start()
    state = ModelState(redis.Redis.from_url(server.url), settings.namespace)
    assert stored(state, chosen[50:]) == 50
    with service_running(service_on(server, settings)) as second:
        receipts = receipts_of(bootstrap, settings.topic_receipts, 150)
        eventually(lambda: stored(state, chosen) == 0, what="the lost deletions applied")
        assert second.metrics.reapplied._value.get() == 50
    return receipts


def stored(state: ModelState, pairs) -> int:
    users = np.array(sorted({u for u, _ in pairs}))
    rows = dict(zip(users.tolist(), state.read_rows("user", users, 4), strict=True))
    return sum(i in rows[u]["other"] for u, i in pairs)


@pytest.mark.slow
def test_a_rollback_under_a_running_service_is_replayed(kafka_bootstrap):
    rng = np.random.default_rng(5)
    with snapshot_redis() as server:
        state, data = loaded(server, "rollback", 5)
        settings = fresh_settings(
            kafka_bootstrap, server.url, "rollback", redis_retry_budget_s=60, redis_timeout_s=3
        )
        chosen, messages = deletions(data, rng, 400, "r")
        service = Application(
            settings, Engine(ModelState(redis.Redis.from_url(server.url), "rollback"))
        )
        with service_running(service, seconds=180):
            produce(kafka_bootstrap, settings.topic_deletions, messages[:100])
            receipts_of(kafka_bootstrap, settings.topic_receipts, 100)
            state.client.save()  # the snapshot the restart will come back to
            produce(kafka_bootstrap, settings.topic_deletions, messages[100:])
            receipts_of(kafka_bootstrap, settings.topic_receipts, 400)
            assert stored(state, chosen) == 0
            server.kill()
            server.start()  # from the snapshot: 300 acknowledged deletions are back
            state = ModelState(redis.Redis.from_url(server.url), "rollback")
            assert stored(state, chosen[100:]) == 300 and len(state.read_receipts(4)) == 100
            # Nothing new arrives: the service finds out by itself, and replays.
            receipts = receipts_of(kafka_bootstrap, settings.topic_receipts, 700, timeout=90)
            eventually(lambda: len(state.read_receipts(4)) == 400, what="the audit trail back")
            assert stored(state, chosen) == 0
            assert service.metrics.state_rollbacks._value.get() >= 1
        again = [r for r in receipts[400:] if not r["resent"]]
        assert sorted(r["request_id"] for r in again) == sorted(f"r{n}" for n in range(100, 400))
        assert all(r["reapplied"] and r["removed"] == 1 for r in again)


@pytest.mark.slow
def test_a_service_that_starts_on_a_rolled_back_state_replays_it(kafka_bootstrap):
    rng = np.random.default_rng(6)
    with snapshot_redis() as server:
        state, data = loaded(server, "restart", 6)
        settings = fresh_settings(kafka_bootstrap, server.url, "restart")
        chosen, messages = deletions(data, rng, 100, "s")
        with service_running(service_on(server, settings)):
            produce(kafka_bootstrap, settings.topic_deletions, messages[:50])
            receipts_of(kafka_bootstrap, settings.topic_receipts, 50)
            state.client.save()
            produce(kafka_bootstrap, settings.topic_deletions, messages[50:])
            receipts_of(kafka_bootstrap, settings.topic_receipts, 100)
        receipts = restarted_from_snapshot(server, settings, chosen, kafka_bootstrap)
        assert sorted(r["request_id"] for r in receipts[100:]) == [f"s{n}" for n in range(50, 100)]
        assert all(r["reapplied"] for r in receipts[100:])


def committed_total(bootstrap: str, settings) -> int:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.group_id})
    try:
        tps = [TopicPartition(settings.topic_deletions, n) for n in range(PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in reader.committed(tps, timeout=10))
    finally:
        reader.close()


@pytest.mark.slow
def test_a_rollback_behind_receipts_never_committed_marks_them_reapplied(kafka_bootstrap):
    """Receipts are acknowledged before offsets are committed: a process killed between
    the two leaves answers that only the receipts topic remembers. A rollback behind them
    applies those requests again, and their new receipts must say so."""
    rng = np.random.default_rng(7)
    with snapshot_redis() as server:
        state, data = loaded(server, "uncommitted", 7)
        settings = fresh_settings(kafka_bootstrap, server.url, "uncommitted")
        chosen, messages = deletions(data, rng, 100, "t")
        with service_running(service_on(server, settings)) as first:
            produce(kafka_bootstrap, settings.topic_deletions, messages[:50])
            receipts_of(kafka_bootstrap, settings.topic_receipts, 50)
            eventually(lambda: committed_total(kafka_bootstrap, settings) == 50,
                       what="the first 50 committed")  # fmt: skip
            state.client.save()
            # From here on the process behaves as if killed after each acknowledgement,
            # before its offsets are committed.
            first.checkpoint._commit = lambda offsets, asynchronous: None
            produce(kafka_bootstrap, settings.topic_deletions, messages[50:])
            receipts_of(kafka_bootstrap, settings.topic_receipts, 100)
        assert committed_total(kafka_bootstrap, settings) == 50
        again = restarted_from_snapshot(server, settings, chosen, kafka_bootstrap)[100:]
        assert sorted(r["request_id"] for r in again) == sorted(f"t{n}" for n in range(50, 100))
        assert all(r["reapplied"] and not r["resent"] for r in again)


def restarted_and_reapplied(server, settings, chosen, bootstrap, before: int) -> list[dict]:
    """Redis back from its last SAVE, which holds none of `chosen` removed, then a new
    service on it: the receipts it sends for them."""
    server.kill()
    server.start()
    state = ModelState(redis.Redis.from_url(server.url), settings.namespace)
    assert stored(state, chosen) == len(chosen)
    with service_running(service_on(server, settings)) as second:
        receipts = receipts_of(bootstrap, settings.topic_receipts, before + len(chosen))
        eventually(lambda: stored(state, chosen) == 0, what="the lost deletions applied")
        assert second.metrics.reapplied._value.get() == len(chosen)
    return receipts[before:]


@pytest.mark.slow
def test_a_rollback_to_before_a_partitions_first_batch_reapplies_all_it_answered(
    noida_bootstrap,
):
    """A snapshot taken right after `unlearn load`: the state it restores has no record of
    any partition, as if it had never read one. The group's commits remember that this
    load of the model had read them, and from where (in the commits' metadata, which
    Kafka keeps; noida-db too, Tansu 0.6 drops it: docs/reliability.md)."""
    kafka_bootstrap = noida_bootstrap
    rng = np.random.default_rng(8)
    with snapshot_redis() as server:
        state, data = loaded(server, "firstbatch", 8)
        state.client.save()  # before the service ever reads a partition
        settings = fresh_settings(kafka_bootstrap, server.url, "firstbatch")
        chosen, messages = deletions(data, rng, 60, "f")
        with service_running(service_on(server, settings)):
            produce(kafka_bootstrap, settings.topic_deletions, messages)
            receipts_of(kafka_bootstrap, settings.topic_receipts, 60)
            eventually(lambda: committed_total(kafka_bootstrap, settings) == 60,
                       what="all 60 committed")  # fmt: skip
        again = restarted_and_reapplied(server, settings, chosen, kafka_bootstrap, 60)
    assert sorted(r["request_id"] for r in again) == sorted(f"f{n}" for n in range(60))
    assert all(r["reapplied"] and not r["resent"] and r["removed"] == 1 for r in again)


@pytest.mark.slow
def test_a_rollback_to_before_a_recreated_topics_first_batch_reapplies_its_new_life(
    noida_bootstrap,
):
    """The deletions topic deleted and created again, its new life read by a service, then
    Redis back from a snapshot taken before the new life was read: the state remembers
    only the old life. The new life is found again, and all of it that was answered is
    re-applied."""
    rng = np.random.default_rng(9)
    with snapshot_redis() as server:
        state, data = loaded(server, "newlife", 9)
        settings = fresh_settings(noida_bootstrap, server.url, "newlife")
        chosen, messages = deletions(data, rng, 80, "n")
        with service_running(service_on(server, settings)):
            produce(noida_bootstrap, settings.topic_deletions, messages[:40])
            receipts_of(noida_bootstrap, settings.topic_receipts, 40)
            eventually(lambda: committed_total(noida_bootstrap, settings) == 40,
                       what="the first life committed")  # fmt: skip
        state.client.save()  # the old life only
        recreate_topic(noida_bootstrap, settings.topic_deletions)
        produce(noida_bootstrap, settings.topic_deletions, messages[40:])
        with service_running(service_on(server, settings)):
            receipts_of(noida_bootstrap, settings.topic_receipts, 80)
            eventually(lambda: committed_total(noida_bootstrap, settings) == 40,
                       what="the new life committed")  # fmt: skip
        again = restarted_and_reapplied(server, settings, chosen[40:], noida_bootstrap, 80)
    assert sorted(r["request_id"] for r in again) == sorted(f"n{n}" for n in range(40, 80))
    assert all(r["reapplied"] and not r["resent"] and r["removed"] == 1 for r in again)
