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
from unlearn_core import Hyperparameters, Interactions

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


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with servers.kafka_broker() as bootstrap:
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
