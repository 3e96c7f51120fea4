"""End to end on MovieLens-100K: train, load, stream 5% of pairs and 20 whole users as
deletion events through Kafka, let the service carry them through the model until it
rests, export, and judge the result against retraining exactly as the offline `forget` is
judged."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from consumer.application import Application
from consumer.engine import Engine
from consumer.state.bootstrap import export, load
from consumer.tsv import read_interactions
from tests.conftest import ML100K
from tests.service.kafka_helpers import event, produce, read_all
from unlearn_core import Change, Hyperparameters, train
from unlearn_core.ids import IdIndex
from unlearn_core.retrain_check import (
    compare_with_retraining,
    random_pair_deletions,
    random_user_deletions,
    split_held_out,
)


@pytest.mark.slow
def test_streamed_deletions_match_retraining(setup):
    if not ML100K.is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    rows = read_interactions(ML100K, "implicit")
    users, items = IdIndex(), IdIndex()
    u, i = users.add(rows.users), items.add(rows.items)
    data, held_out = split_held_out(u, i, rows.weights, (len(users), len(items)), "implicit")
    params = Hyperparameters("implicit", factors=32, regularization=1.0, alpha=1.0)
    model, _ = train(data, users.ids, items.ids, params, 20, seed=0)
    state = setup.state
    load(state, model, data, np.full(data.nnz, 1e9), shards=8, replace=True)

    pairs = random_pair_deletions(data, 0.05, seed=1)
    whole = random_user_deletions(data, 20, seed=2)
    s = setup.settings.model_copy(update={"batch_max_events": 500})
    messages = [
        (users.ids[a], event(user=users.ids[a], item=items.ids[b], ts=2e9, request_id=f"p{n}"))
        for n, (a, b) in enumerate(
            zip(pairs.remove_pair_users, pairs.remove_pair_items, strict=True)
        )
    ] + [
        (users.ids[a], event(user=users.ids[a], ts=2e9, request_id=f"u{n}"))
        for n, a in enumerate(whole.remove_users)
    ]
    produce(setup.bootstrap, s.topic_deletions, messages)

    service = Application(s, Engine(state))
    thread = threading.Thread(target=service.run, kwargs={"max_seconds": 300}, daemon=True)
    thread.start()
    try:
        read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= len(messages), timeout=120)
        # After the last receipt: none of the deleted pairs is left in the state.
        _, stored = export(state)
        assert stored.weights_of(pairs.remove_pair_users, pairs.remove_pair_items).max() == 0
        assert stored.row_counts()[whole.remove_users].max() == 0
        # The forgetting cycles carry the deletions through the model, then rest.
        deadline = time.monotonic() + 240
        while not (service.stats.cycles and service.consolidating.resting):
            assert time.monotonic() < deadline, "consolidation did not come to rest"
            time.sleep(0.2)
    finally:
        service.request_stop()
        thread.join(timeout=60)

    unlearned, _ = export(state)
    deletions = Change.deletions(
        pairs.remove_pair_users, pairs.remove_pair_items, users=whole.remove_users
    )
    result = compare_with_retraining(model, data, deletions, held_out, 20, unlearned=unlearned)
    assert result.passed, result.to_dict()
