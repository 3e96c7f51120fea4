"""Per-test topics, namespace and group on the session's real broker and redis-server."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import redis

from consumer.application import Application
from consumer.engine import Engine
from consumer.settings import Settings
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import params_for
from tests.service.kafka_helpers import fresh_settings, unique
from unlearn_core import Interactions, train


@dataclass
class Setup:
    settings: Settings
    state: ModelState
    data: Interactions
    bootstrap: str

    def service(self) -> Application:
        return Application(self.settings, Engine(self.state))


def make_setup(bootstrap: str, redis_url: str, client: redis.Redis, random_data, **kw) -> Setup:
    settings = fresh_settings(bootstrap, redis_url, unique("ns"), batch_max_ms=20, **kw)
    _, data = random_data(n_users=40, n_items=25, density=0.3, seed=5)
    model, _ = train(
        data, [f"u{n}" for n in range(40)], [f"i{n}" for n in range(25)], params_for("implicit"), 10
    )
    state = ModelState(client, settings.namespace)
    load(state, model, data, np.full(data.nnz, 1e9), shards=4)
    return Setup(settings, state, data, bootstrap)


@pytest.fixture
def setup(kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis, random_data) -> Setup:
    """A loaded namespace on a single Redis and, a second time, on a Redis Cluster."""
    return make_setup(kafka_bootstrap, redis_url, redis_client, random_data)


@pytest.fixture
def noida_setup(noida_bootstrap: str, redis_url: str, redis_client: redis.Redis, random_data):
    """The same on noida-db, which deletes topics (Tansu 0.6 does not)."""
    return make_setup(noida_bootstrap, redis_url, redis_client, random_data)


def url_of(client: redis.Redis | redis.RedisCluster) -> str:
    """The URL of the Redis (or of one node of the cluster) a client talks to."""
    if isinstance(client, redis.RedisCluster):
        node = client.get_default_node()
        return f"redis://{node.host}:{node.port}/0"
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


@contextlib.contextmanager
def service_running(service: Application, seconds: float = 120) -> Iterator[Application]:
    thread = threading.Thread(target=service.run, kwargs={"max_seconds": seconds}, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.request_stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def running(setup: Setup) -> Iterator[Application]:
    """The service running in a thread for the test's duration."""
    with service_running(setup.service()) as service:
        yield service
