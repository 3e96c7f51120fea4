"""A service that comes to rest, checked from the outside (one Redis server and a Cluster,
a real broker): a loaded model with no input is not swept and nothing is published after
the load's own records; deletions are carried through the model, then the service rests;
an auditor re-solving rows from `unlearn export --interactions` and the exported factors
finds every row a deletion touched the exact solve of the data without the pair, and
clearly not of the data with it; a user erased whole leaves the serving index."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from consumer.application import Application
from consumer.cli import main
from consumer.engine import Engine
from consumer.model_file import load_model
from consumer.serving.index import FactorIndex
from consumer.state.bootstrap import load
from consumer.tsv import read_interactions
from tests.auditor import fit, with_pair
from tests.service.conftest import service_running, url_of
from tests.service.kafka_helpers import event, eventually, produce, read_all
from unlearn_core import Interactions, train

# The stated precision of a row a deletion touched (docs/state.md): its last re-solve ends
# once no touched row moves by more than 1e-5; the deleted pair moves it far more.
TOUCHED_PRECISION = 1e-4
# A model loaded at its fixed point stays within this of it, row by row (docs/state.md).
REST_PRECISION = 1e-2
ERASED = "u5"


def test_the_service_rests_and_an_erasure_can_be_checked_from_the_outside(
    setup, tmp_path, monkeypatch
):
    s = setup.settings
    data = setup.data
    users = [f"u{n}" for n in range(data.shape[0])]
    items = [f"i{n}" for n in range(data.shape[1])]
    model, _ = train(data, users, items, setup.state.meta().params, 300, solver="cholesky")
    load(setup.state, model, data, np.full(data.nnz, 1e9), shards=4, replace=True)
    index = FactorIndex({"bootstrap.servers": setup.bootstrap}, s.topic_factors, s.namespace)
    try:
        with service_running(Application(s, Engine(setup.state)), seconds=180) as service:
            eventually(lambda: len(service.engine.owned) == 4, what="owning every shard")
            rows = data.shape[0] + data.shape[1]
            eventually(lambda: index.poll(0.1) is not None and index.records >= rows,
                       what="the load's own records")  # fmt: skip
            time.sleep(2.0)  # no input: nothing is swept, nothing more is published
            index.catch_up()
            assert index.records == rows
            assert service.stats.slices == 0 and service.consolidating.resting

            pairs = [(u, i) for u, i in zip(*data.by_user.nonzero(), strict=True)
                     if f"u{u}" != ERASED][::7][:10]  # fmt: skip
            produce(
                setup.bootstrap, s.topic_deletions,
                [(f"u{u}", event(user=f"u{u}", item=f"i{i}", ts=2e9, request_id=f"p{n}"))
                 for n, (u, i) in enumerate(pairs)]
                + [(ERASED, event(user=ERASED, ts=2e9, request_id="erase"))],
            )  # fmt: skip
            learned = [(f"u{n}", event(user=f"u{n}", item="i3", ts=2.1e9)) for n in range(30, 36)]
            produce(setup.bootstrap, s.topic_interactions, learned)
            read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= len(pairs) + 1)
            eventually(lambda: service.stats.cycles and service.consolidating.resting,
                       what="the forgetting cycle, then rest", timeout=90)  # fmt: skip
            quiet = index.catch_up() or index.records
            time.sleep(1.5)
            index.catch_up()
            assert index.records == quiet  # at rest: nothing more on the topic
            assert ERASED not in index.vectors["user"]  # the erased user's key is gone
        exported, stored = _export_as_an_auditor(setup, tmp_path, monkeypatch)
    finally:
        index.close()

    weights = data.weights_of(np.array([u for u, _ in pairs]), np.array([i for _, i in pairs]))
    for (u, i), w in zip(pairs, weights.tolist(), strict=True):
        back = with_pair(stored, u, i, w)
        for side, row in (("user", u), ("item", i)):
            now = fit(exported, stored, side, row)
            assert now <= TOUCHED_PRECISION, (side, row, now)
            assert fit(exported, back, side, row) >= 10 * TOUCHED_PRECISION, (side, row)
    erased = users.index(ERASED)
    assert not exported.user_factors[erased].any() and stored.row_counts()[erased] == 0
    # Loaded at its fixed point, every row is still close to the exact solve of its data.
    fits = [fit(exported, stored, "user", r) for r in range(data.shape[0]) if r != erased]
    fits += [fit(exported, stored, "item", r) for r in range(data.shape[1])]
    assert max(fits) <= REST_PRECISION


def _export_as_an_auditor(setup, tmp_path, monkeypatch):
    """`unlearn export --out MODEL --interactions FILE`, read back: the model's factors and
    its stored interactions, indexed as the model file orders its ids."""
    client = setup.state.client
    if isinstance(client, redis.RedisCluster):
        monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", "true")
    out, tsv = tmp_path / "model.npz", tmp_path / "interactions.tsv"
    flags = ["--redis-url", url_of(client), "--namespace", setup.settings.namespace]
    assert main(["export", "--out", str(out), "--interactions", str(tsv), *flags]) == 0
    model = load_model(out)
    rows = read_interactions(tsv, model.params.kind)
    users = {u: n for n, u in enumerate(model.user_ids.tolist())}
    items = {i: n for n, i in enumerate(model.item_ids.tolist())}
    stored = Interactions.from_triples(
        np.array([users[u] for u in rows.users]), np.array([items[i] for i in rows.items]),
        rows.weights, (len(users), len(items)), model.params.kind,
    )  # fmt: skip
    return model, stored


@pytest.fixture(autouse=True)
def _no_cluster_env(monkeypatch):
    monkeypatch.delenv("UNLEARN_REDIS_CLUSTER", raising=False)
