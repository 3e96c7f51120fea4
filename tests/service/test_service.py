"""`unlearn run` against a real Kafka-protocol broker and a real redis-server."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import redis

from consumer.application import Application
from consumer.cli import main
from consumer.engine import Engine
from tests.consumer.malformed import MALFORMED
from tests.service.conftest import service_running
from tests.service.kafka_helpers import event, eventually, produce, read_all, unique


def pair(setup, n):
    key = int(setup.data.entry_keys[n])
    return key // setup.data.shape[1], key % setup.data.shape[1]


def test_deletions_are_forgotten_and_acknowledged(setup, running):
    s = setup.settings
    pairs = [pair(setup, n) for n in range(0, 30, 3)]
    produce(
        setup.bootstrap,
        s.topic_deletions,
        [
            (f"u{u}", event(user=f"u{u}", item=f"i{i}", ts=2e9, request_id=f"r-{u}-{i}"))
            for u, i in pairs
        ],
    )
    receipts = read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= len(pairs))
    bodies = [json.loads(m.value()) for m in receipts]
    assert sorted(b["request_id"] for b in bodies) == sorted(f"r-{u}-{i}" for u, i in pairs)
    assert all(b["removed"] == 1 and b["scope"] == "pair" and not b["resent"] for b in bodies)
    assert all(b["applied_at"] >= b["event_ts"] - 1e9 for b in bodies)
    for u, i in pairs:
        row = setup.state.read_rows("user", np.array([u]), 4)[0]
        assert i not in row["other"]


def test_malformed_messages_go_to_the_dead_letter_topic_and_nothing_is_lost(setup, running):
    s = setup.settings
    valid = [(f"u{n}", event(user=f"u{n}", item="i-new", weight=2.0, ts=3e9)) for n in range(5)]
    bad = [(None, value) for topic, value, _ in MALFORMED if topic == "interactions"]
    bad_deletions = [(None, value) for topic, value, _ in MALFORMED if topic == "deletions"]
    mixed = [m for pair_ in zip(valid, bad[: len(valid)], strict=False) for m in pair_]
    mixed += bad[len(valid) :]
    produce(setup.bootstrap, s.topic_interactions, mixed)
    produce(setup.bootstrap, s.topic_deletions, bad_deletions)
    expected = len(bad) + len(bad_deletions)
    dead = read_all(setup.bootstrap, s.topic_dlq, lambda m: len(m) >= expected)
    assert len(dead) == expected
    reasons = sorted(dict(m.headers())["unlearn.reason"].decode() for m in dead)
    assert reasons == sorted(reason for _, _, reason in MALFORMED)
    # Each with its exact original value: a null one (a Kafka tombstone) stays null.
    values = sorted((m.value() is None, m.value() or b"") for m in dead)
    assert values == sorted((v is None, v or b"") for _, v, _ in MALFORMED)
    item = int(setup.state.lookup("item", ["i-new"])[0])
    rows = setup.state.read_rows("item", np.array([item]), 4)[0]
    assert sorted(rows["other"].tolist()) == list(range(5))  # every valid message applied


def test_an_interaction_older_than_a_processed_deletion_is_never_learned(setup, running):
    s = setup.settings
    produce(
        setup.bootstrap, s.topic_deletions, [("late", event(user="late", ts=5e8, request_id="d"))]
    )
    read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= 1)
    produce(
        setup.bootstrap,
        s.topic_interactions,
        [
            ("late", event(user="late", item="i1", ts=4e8)),  # older than the deletion
            ("late", event(user="late", item="i2", ts=6e8)),  # newer: learned
        ],
    )
    # The deletion named a user the model had never seen: the interaction gives it a row.
    for _ in range(100):
        user = int(setup.state.lookup("user", ["late"])[0])
        row = setup.state.read_rows("user", np.array([user]), 4)[0] if user >= 0 else []
        if len(row):
            break
        time.sleep(0.1)
    assert row["other"].tolist() == [2]


def test_a_surge_of_invalid_messages_pauses_input_instead_of_dead_lettering_it_all(setup):
    s = setup.settings.model_copy(
        update={
            "dlq_window": 20,
            "dlq_min_messages": 10,
            "dlq_max_ratio": 0.5,
            "dlq_pause_s": 3.0,
            "batch_max_events": 10,
        }
    )
    setup.settings = s
    service = setup.service()
    thread = threading.Thread(target=service.run, kwargs={"max_seconds": 60}, daemon=True)
    thread.start()
    try:
        produce(
            setup.bootstrap, s.topic_interactions, [(None, b"garbage %d" % n) for n in range(100)]
        )
        paused = service.metrics.dlq_paused.labels("interactions")
        deadline = time.monotonic() + 30
        while paused._value.get() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused._value.get() >= 1
        paused_with = service.stats.dead_lettered
        assert 10 <= paused_with < 100  # paused early, not after the whole stream
        dead = read_all(setup.bootstrap, s.topic_dlq, lambda m: len(m) >= 100, timeout=60)
        assert len(dead) == 100  # after the pauses, nothing is lost
    finally:
        service.request_stop()
        thread.join(timeout=30)


def test_an_idle_service_rests_and_each_owner_carries_deletions_to_rest(setup):
    s = setup.settings

    def service() -> Application:
        return Application(s, Engine(setup.state))

    def resting(*apps: Application) -> bool:
        return all(a.consolidating.resting for a in apps)

    first, second = service(), service()
    with service_running(first), service_running(second):
        eventually(lambda: first.health.assigned and second.health.assigned, what="both assigned")
        eventually(lambda: first.engine.owned and second.engine.owned, what="both own shards")
        assert not set(first.engine.owned) & set(second.engine.owned)
        assert set(first.engine.owned) | set(second.engine.owned) == set(range(4))
        time.sleep(2.0)  # a loaded model, no event: nothing is swept
        assert first.stats.slices == second.stats.slices == 0 and resting(first, second)
        # Interactions alone: their rows are re-solved by their batch, no cycle follows.
        users = [f"u{n}" for n in range(40)]
        produce(setup.bootstrap, s.topic_interactions,
                [(u, event(user=u, item="i3", ts=2e9)) for u in users])  # fmt: skip
        eventually(lambda: first.stats.events + second.stats.events >= 40, what="learned")
        time.sleep(1.0)
        assert first.stats.cycles == second.stats.cycles == 0
        assert first.stats.slices == second.stats.slices == 0
        # Pair deletions of users on every shard: each owner's cycle carries them through
        # its own rows, then both rest.
        pairs = list(zip(*setup.data.by_user.nonzero(), strict=True))[::9][:12]
        produce(
            setup.bootstrap, s.topic_deletions,
            [(f"u{u}", event(user=f"u{u}", item=f"i{i}", ts=2e9)) for u, i in pairs],
        )  # fmt: skip
        read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= len(pairs))
        eventually(
            lambda: first.stats.cycles and second.stats.cycles and resting(first, second),
            what="a forgetting cycle on both owners, then rest",
        )
        assert first.stats.slices and second.stats.slices
        quiet = {a: a.stats.slices for a in (first, second)}
        time.sleep(1.5)  # at rest: nothing more is re-solved
        assert {a: a.stats.slices for a in (first, second)} == quiet
    # A new owner of every shard (a group of its own: no wait for the old members).
    later = s.model_copy(update={"group_id": unique("group")})
    with service_running(Application(later, Engine(setup.state))) as third:
        eventually(lambda: len(third.engine.owned) == 4, what="the new owner")
        time.sleep(2.0)  # idle: a namespace at rest is not swept by its new owner
        assert third.stats.slices == 0


def test_als_sweeps_run_only_when_asked_and_then_the_service_rests_again(setup):
    with service_running(setup.service()) as service:
        eventually(lambda: len(service.engine.owned) == 4, what="owning every shard")
        time.sleep(1.5)
        assert service.stats.sweeps == 0 and service.stats.slices == 0
        s = setup.settings
        if isinstance(setup.state.client, redis.RedisCluster):
            setup.state.request_consolidation(2)
        else:  # as an operator asks for it
            flags = ["--bootstrap-servers", s.kafka_bootstrap_servers, "--redis-url",
                     s.redis_url.get_secret_value(), "--namespace", s.namespace]  # fmt: skip
            assert main(["consolidate", "--sweeps", "2", *flags]) == 0
        eventually(
            lambda: service.stats.sweeps == 2 and service.consolidating.resting,
            what="the two sweeps asked for", timeout=60,
        )  # fmt: skip
        slices = service.stats.slices
        time.sleep(1.5)
        assert service.stats.sweeps == 2 and service.stats.slices == slices
