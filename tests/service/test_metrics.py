"""Metrics and health endpoints, read back through a real Prometheus server."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from consumer.application import Application
from consumer.engine import Engine
from consumer.http import Health, MetricsServer
from consumer.metrics import Metrics
from tests.servers import prometheus_server
from tests.service.kafka_helpers import event, produce, read_all


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def query(prometheus: str, expr: str) -> list:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    body = json.loads(get(url)[1])
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def observed(setup):
    """The service with its endpoint on a free port, scraped every second by Prometheus."""
    metrics = Metrics()
    state = setup.state
    state.observer = metrics.observe_redis
    health = Health(deadline_s=5.0, redis_ok=lambda: bool(state.client.ping()))
    server = MetricsServer(0, metrics, health, host="127.0.0.1")
    service = Application(setup.settings, Engine(state), metrics=metrics, health=health)
    base = f"http://127.0.0.1:{server.port}"
    assert get(f"{base}/readyz")[0] == 503  # nothing assigned yet
    thread = threading.Thread(target=service.run, kwargs={"max_seconds": 120}, daemon=True)
    thread.start()
    with prometheus_server([f"127.0.0.1:{server.port}"]) as prometheus:
        yield base, prometheus, service
    service.request_stop()
    thread.join(timeout=30)
    server.stop()


def test_prometheus_reads_forget_latency_and_residual(setup, observed):
    base, prometheus, _ = observed
    s = setup.settings
    # rate() needs the counters' starting point in Prometheus: wait for the service to be
    # assigned its partitions and for two scrapes before producing anything.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        scraped = query(prometheus, "count_over_time(up[1m])")
        if get(f"{base}/readyz")[0] == 200 and scraped and float(scraped[0]["value"][1]) >= 2:
            break
        time.sleep(0.5)
    sent = 0
    for round_ in range(5):
        batch = [
            (f"u{n}", event(user=f"u{n}", item=f"i{m}", ts=time.time(), request_id=f"{n}-{m}"))
            for n in range(round_ * 8, round_ * 8 + 8)
            for m in range(2)
        ]
        sent += produce(setup.bootstrap, s.topic_deletions, batch)
        time.sleep(0.5)
    read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= sent)
    assert get(f"{base}/healthz")[0] == 200
    deadline = time.monotonic() + 30
    p99 = residual = []
    while time.monotonic() < deadline:
        p99 = query(
            prometheus,
            "histogram_quantile(0.99, sum by (le) "
            "(rate(unlearn_forget_latency_seconds_bucket[1m])))",
        )
        residual = query(prometheus, "unlearn_model_residual")
        count = query(prometheus, "unlearn_forget_latency_seconds_count")
        scraped_all = bool(count) and float(count[0]["value"][1]) >= sent
        if scraped_all and p99 and residual and p99[0]["value"][1] not in ("NaN", "+Inf"):
            break
        time.sleep(1)
    latency = float(p99[0]["value"][1])
    assert 0 < latency < 10, latency
    assert float(residual[0]["value"][1]) >= 0
    status, text = get(f"{base}/readyz")
    assert status == 200, text


def test_metrics_page_has_no_ids(setup, observed):
    base, _, _ = observed
    produce(
        setup.bootstrap,
        setup.settings.topic_deletions,
        [("u1", event(user="u1", ts=time.time(), request_id="secret-request"))],
    )
    read_all(setup.bootstrap, setup.settings.topic_receipts, lambda m: len(m) >= 1)
    page = get(f"{base}/metrics")[1]
    assert "unlearn_forget_latency_seconds_bucket" in page
    memory = [line for line in page.splitlines() if line.startswith("unlearn_redis_namespace")]
    assert memory and float(memory[0].split()[-1]) > 0
    assert 'user="' not in page and "secret-request" not in page and '"u1"' not in page


def test_healthz_fails_when_the_loop_stops_ticking():
    health = Health(deadline_s=0.05, redis_ok=lambda: True)
    server = MetricsServer(0, Metrics(), health, host="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/healthz")[0] == 200
        time.sleep(0.1)
        status, text = get(f"{base}/healthz")
        assert status == 503 and "deadline" in text
        health.assigned = 2
        assert get(f"{base}/readyz")[0] == 200
        health.redis_ok = lambda: False
        assert get(f"{base}/readyz")[0] == 503
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.stop()


def test_idle_connections_neither_pile_up_threads_nor_block_a_scrape():
    """Hundreds of clients that connect and send nothing: the server runs a bounded number
    of handler threads, drops each idle one after its timeout, and a scrape still gets in."""
    import socket
    import threading

    health = Health(deadline_s=60, redis_ok=lambda: True)
    health.assigned = 1
    server = MetricsServer(0, Metrics(), health, host="127.0.0.1", timeout_s=1.0, max_connections=8)
    idle = []
    try:
        before = threading.active_count()
        for _ in range(40):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.3)
        assert threading.active_count() - before <= 8
        started = time.monotonic()
        status, _ = get(f"http://127.0.0.1:{server.port}/readyz", timeout=60)
        assert status == 200
        # 40 idle clients in slots of 8, each dropped after 1 s: the scrape waits its turn
        # but is served (without the timeout it would wait forever).
        assert time.monotonic() - started < 60
        assert threading.active_count() - before <= 8
    finally:
        for sock in idle:
            sock.close()
        server.stop()
