"""kill -9 of `unlearn run` in the middle of 10,000 deletion requests, then a restart."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest
import redis

from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.kafka_helpers import TOPIC_KINDS, create_topics, event, produce, read_all, unique

REQUESTS = 10_000


def start_service(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from consumer.cli import main; raise SystemExit(main(['run']))"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_and_applies_nothing_twice(kafka_bootstrap, redis_url):
    rng = np.random.default_rng(7)
    n_users, n_items = 500, 300
    model, data = binary_model(7, n_users, n_items, 0.12, factors=8, iterations=5)
    namespace = unique("crash")
    state = ModelState(redis.Redis.from_url(redis_url), namespace)
    load(state, model, data, np.full(data.nnz, 1e9), shards=8)

    topics = {k: unique(k) for k in TOPIC_KINDS}
    create_topics(kafka_bootstrap, topics.values())
    env = {
        **os.environ,
        "UNLEARN_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "UNLEARN_REDIS_URL": redis_url,
        "UNLEARN_NAMESPACE": namespace,
        "UNLEARN_GROUP_ID": unique("group"),
        "UNLEARN_TOPIC_INTERACTIONS": topics["interactions"],
        "UNLEARN_TOPIC_DELETIONS": topics["deletions"],
        "UNLEARN_TOPIC_RECEIPTS": topics["receipts"],
        "UNLEARN_TOPIC_DLQ": topics["dlq"],
        "UNLEARN_TOPIC_FACTORS": topics["factors"],
        "UNLEARN_SESSION_TIMEOUT_MS": "6000",
        "UNLEARN_BATCH_MAX_EVENTS": "250",
        "UNLEARN_CONSOLIDATE_IDLE_MS": "600000",  # no sweeps: this test is about the stream
    }
    chosen = rng.choice(data.nnz, REQUESTS, replace=False)
    keys = data.entry_keys[chosen]
    deleted = [(int(k // n_items), int(k % n_items)) for k in keys]
    produce(kafka_bootstrap, topics["deletions"], [
        (f"u{u}", event(user=f"u{u}", item=f"i{i}", ts=2e9, request_id=f"r{n}"))
        for n, (u, i) in enumerate(deleted)
    ])  # fmt: skip

    first = start_service(env)
    # Kill once the stream is under way: some receipts out, far from all of them.
    read_all(kafka_bootstrap, topics["receipts"], lambda m: len(m) >= 500, timeout=60)
    time.sleep(random.Random(7).uniform(0.0, 0.5))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    before_restart = read_all(kafka_bootstrap, topics["receipts"], lambda m: False, timeout=2)
    print(f"receipts when killed: {len(before_restart)} of {REQUESTS}")
    assert len(before_restart) < REQUESTS  # the kill fell mid-stream

    second = start_service(env)
    try:

        def all_acknowledged(messages: list) -> bool:
            return len({json.loads(m.value())["request_id"] for m in messages}) >= REQUESTS

        receipts = read_all(kafka_bootstrap, topics["receipts"], all_acknowledged, timeout=180)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0  # SIGTERM: finish, commit, close, exit 0

    by_request: dict[str, list[dict]] = defaultdict(list)
    for message in receipts:
        body = json.loads(message.value())
        by_request[body["request_id"]].append(body)
    assert len(by_request) == REQUESTS  # every request acknowledged at least once
    originals = {r: [b for b in bs if not b["resent"]] for r, bs in by_request.items()}
    assert all(len(bs) <= 1 for bs in originals.values())  # never applied twice
    for request, bodies in by_request.items():  # re-sends repeat the one recorded effect
        assert len({(b["removed"], b["applied_at"]) for b in bodies}) == 1, request
        assert bodies[0]["removed"] == 1
    user_rows = state.read_all_rows("user", state.meta())
    item_rows = state.read_all_rows("item", state.meta())
    assert sum(len(r) for r in user_rows.values()) == data.nnz - REQUESTS
    assert sum(len(r) for r in item_rows.values()) == data.nnz - REQUESTS
    for u, i in deleted[:: REQUESTS // 500]:
        assert i not in user_rows.get(u, np.empty(0, dtype=[("other", "<u4")]))["other"]
    resent = sum(b["resent"] for bodies in by_request.values() for b in bodies)
    print(f"receipts in all: {len(receipts)}, re-sent: {resent}")
    audit = state.read_receipts(state.meta().shards)
    assert len(audit) == REQUESTS
    assert not any(state.read_pending(s) for s in range(state.meta().shards))
