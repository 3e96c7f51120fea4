"""Shared fixtures: where the MovieLens files live, and small generated data sets."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from threadpoolctl import threadpool_limits

from tests import servers
from unlearn_core import FactorModel, Hyperparameters, Interactions, train

REPO = Path(__file__).resolve().parent.parent
# The data sets' license forbids redistribution: they are read from ../shared/data only.
DATA_DIR = Path(os.environ.get("UNLEARN_DATA_DIR", REPO.parent / "shared" / "data"))
ML100K = DATA_DIR / "ml-100k" / "u.data"
ML1M_PAIRS = DATA_DIR / "ml-1m" / "pairs.tsv"

# As the CLI does: rows are solved in parallel by our threads, BLAS runs one per call.
threadpool_limits(1, "blas")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    with servers.redis_cluster() as url:
        yield url


@pytest.fixture(params=["redis", "cluster"])
def redis_client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """An empty Redis: every test that takes it runs on one server and on a 3-node cluster."""
    if request.param == "cluster":
        client = redis.RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
        client.flushdb(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
    yield client
    client.close()


def all_keys(client: redis.Redis, pattern: str = "*") -> list[bytes]:
    """Every key on every node (KEYS on a cluster client asks one node)."""
    return sorted(client.scan_iter(match=pattern, count=1000))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with servers.kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def noida_bootstrap() -> Iterator[str]:
    """A second Kafka-protocol broker (noida-db): it deletes topics, and kcat talks to it."""
    from consumer.embedded import local_noida

    with local_noida() as bootstrap:
        yield bootstrap


@pytest.fixture
def ml100k_path() -> Path:
    if not ML100K.is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    return ML100K


RandomData = Callable[..., tuple[np.ndarray, Interactions]]


@pytest.fixture
def random_data() -> RandomData:
    """Factory: a dense weight matrix and the same data as Interactions."""

    def make(
        n_users: int = 30,
        n_items: int = 20,
        density: float = 0.3,
        kind: str = "implicit",
        seed: int = 0,
    ) -> tuple[np.ndarray, Interactions]:
        rng = np.random.default_rng(seed)
        mask = rng.random((n_users, n_items)) < density
        weights = np.where(mask, rng.integers(1, 6, (n_users, n_items)), 0).astype(np.float64)
        users, items = np.nonzero(weights)
        data = Interactions.from_triples(
            users,
            items,
            weights[users, items],
            weights.shape,
            kind,  # type: ignore[arg-type]
        )
        return weights, data

    return make


def params_for(kind: str, factors: int = 4, regularization: float = 0.5) -> Hyperparameters:
    return Hyperparameters(
        kind=kind,  # type: ignore[arg-type]
        factors=factors,
        regularization=regularization,
        alpha=2.0,
    )


def binary_model(
    seed: int, n_users: int, n_items: int, density: float, factors: int, iterations: int
) -> tuple[FactorModel, Interactions]:
    """A random 0/1 implicit data set (ids u0.., i0..) and a model trained on it."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    data = Interactions.from_triples(users, items, np.ones(len(users)), mask.shape, "implicit")
    model, _ = train(
        data,
        [f"u{n}" for n in range(n_users)],
        [f"i{n}" for n in range(n_items)],
        params_for("implicit", factors=factors),
        iterations,
    )
    return model, data
