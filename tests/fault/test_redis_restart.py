"""Redis goes away mid-stream (SIGKILL, restart from its AOF a few seconds later): the
service waits it out, loses no request and applies none twice."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from consumer.application import Application
from consumer.embedded import free_port, process, redis_args, wait_until
from consumer.engine import Engine
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import binary_model
from tests.service.kafka_helpers import event, fresh_settings, produce, read_all

REQUESTS = 600


@pytest.mark.slow
def test_a_redis_restart_mid_stream_loses_nothing(kafka_bootstrap):
    rng = np.random.default_rng(3)
    model, data = binary_model(3, 200, 120, 0.15, factors=6, iterations=5)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory() as workdir:
        log = Path(workdir) / "redis.log"
        server = process(redis_args(port, workdir, True), log)
        proc = server.__enter__()
        client = redis.Redis.from_url(url)
        wait_until(lambda: client.ping(), "redis-server")
        state = ModelState(client, "faults")
        load(state, model, data, np.full(data.nnz, 1e9), shards=4)
        settings = fresh_settings(
            kafka_bootstrap, url, "faults", batch_max_events=50, redis_retry_budget_s=60
        )
        topics = {"deletions": settings.topic_deletions, "receipts": settings.topic_receipts}
        service = Application(settings, Engine(ModelState(redis.Redis.from_url(url), "faults")))
        thread = threading.Thread(target=service.run, kwargs={"max_seconds": 120}, daemon=True)
        thread.start()
        keys = data.entry_keys[rng.choice(data.nnz, REQUESTS, replace=False)]
        pairs = [(int(k // 120), int(k % 120)) for k in keys]
        produce(
            kafka_bootstrap,
            topics["deletions"],
            [
                (f"u{u}", event(user=f"u{u}", item=f"i{i}", ts=2e9, request_id=f"r{n}"))
                for n, (u, i) in enumerate(pairs[: REQUESTS // 2])
            ],
        )
        read_all(kafka_bootstrap, topics["receipts"], lambda m: len(m) >= 50, timeout=60)
        proc.send_signal(signal.SIGKILL)  # the server dies ...
        proc.wait()
        server.__exit__(None, None, None)
        produce(
            kafka_bootstrap,
            topics["deletions"],
            [  # ... while requests keep coming
                (f"u{u}", event(user=f"u{u}", item=f"i{i}", ts=2e9, request_id=f"r{n}"))
                for n, (u, i) in enumerate(pairs[REQUESTS // 2 :], start=REQUESTS // 2)
            ],
        )
        time.sleep(3)
        server = process(redis_args(port, workdir, True), log)  # ... and comes back from its AOF
        server.__enter__()
        try:
            receipts = read_all(
                kafka_bootstrap,
                topics["receipts"],
                lambda m: len({json.loads(x.value())["request_id"] for x in m}) >= REQUESTS,
                timeout=90,
            )
            service.request_stop()
            thread.join(timeout=30)
            ids = {json.loads(m.value())["request_id"] for m in receipts}
            assert len(ids) == REQUESTS
            originals = [json.loads(m.value()) for m in receipts]
            assert all(r["removed"] == 1 for r in originals)
            wait_until(lambda: client.ping(), "redis-server after restart")
            rows = state.read_all_rows("user", state.meta())
            assert sum(len(r) for r in rows.values()) == data.nnz - REQUESTS
            # It did wait: the outage met either taking events in (the deletions arriving
            # meanwhile) or applying them, whichever Redis call came first.
            waited = service.metrics.redis_errors
            assert waited.labels("ingest")._value.get() + waited.labels("batch")._value.get() > 0
        finally:
            server.__exit__(None, None, None)
