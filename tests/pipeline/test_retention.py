"""The retention window against a real broker and Redis (one server and a Cluster):
interactions older than the window leave the model through the deletion machinery, with
no receipt each and one summary per pass in the audit trail; a late copy of an expired
interaction is not learned."""

from __future__ import annotations

import time

import numpy as np
import redis

from consumer.application import Application
from consumer.engine import Engine
from consumer.state.bootstrap import load
from consumer.state.inspection import stored_interactions
from consumer.state.store import ModelState
from tests.conftest import params_for
from tests.service.conftest import service_running
from tests.service.kafka_helpers import event, eventually, fresh_settings, produce, read_all, unique
from unlearn_core import train

DAY = 86_400.0
SHARDS = 4


def test_interactions_older_than_the_window_are_forgotten_with_one_summary_per_pass(
    kafka_bootstrap, redis_url, redis_client: redis.Redis, random_data
):
    settings = fresh_settings(
        kafka_bootstrap, redis_url, unique("ns"), retention_days=30, retention_interval_s=3600,
        retention_users_per_step=7,
    )  # fmt: skip
    _, data = random_data(n_users=40, n_items=25, density=0.3, seed=9)
    model, _ = train(data, [f"u{n}" for n in range(40)], [f"i{n}" for n in range(25)],
                     params_for("implicit"), 10)  # fmt: skip
    now = time.time()
    rng = np.random.default_rng(0)
    old = rng.random(data.nnz) < 0.4
    stamps = np.where(old, now - 100 * DAY, now - 1 * DAY)
    state = ModelState(redis_client, settings.namespace)
    load(state, model, data, stamps, shards=SHARDS)
    before = list(stored_interactions(state))
    recent = {(u, i) for u, i, _, ts in before if ts > now - 30 * DAY}
    expired = len(before) - len(recent)
    assert 0 < expired < len(before)
    service = Application(settings, Engine(state))
    with service_running(service):
        trail = eventually(lambda: _summaries(state), timeout=90, what="a summary per shard")
        stored = list(stored_interactions(state))
        assert {(u, i) for u, i, _, _ in stored} == recent
        assert all(ts > now - 30 * DAY for *_, ts in stored)
        assert sum(r["removed"] for r in trail) == expired
        assert service.metrics.retention_removed._value.get() == expired
        assert all(r["cutoff"] >= now - 30 * DAY - 5 for r in trail)
        assert [r["pass"] for r in trail] == [1] * SHARDS  # one summary per shard's pass
        owners = {u for u, i, _, ts in before if ts <= now - 30 * DAY}
        assert sum(r["users_expired"] for r in trail) == len(owners)
        # A late copy of an expired interaction is not learned; a fresh one is.
        user, item, _, _ = next(x for x in before if (x[0], x[1]) not in recent)
        produce(kafka_bootstrap, settings.topic_interactions, [
            (user, event(user=user, item=item, weight=1.0, ts=now - 60 * DAY)),
            (user, event(user=user, item="i-fresh", weight=1.0, ts=time.time())),
        ])  # fmt: skip
        eventually(lambda: (user, "i-fresh") in _pairs(state), timeout=60)
        assert (user, item) not in _pairs(state)
    # Nobody asked: no receipt was published.
    assert read_all(kafka_bootstrap, settings.topic_receipts, lambda m: False, timeout=3) == []


def _pairs(state: ModelState) -> set[tuple[str, str]]:
    return {(u, i) for u, i, *_ in stored_interactions(state)}


def _summaries(state: ModelState) -> list[dict] | None:
    records = [r for r in state.read_receipts(SHARDS) if r["scope"] == "retention"]
    return records if len({r["shard"] for r in records}) == SHARDS else None
