"""Serving sees forgetting: the factors topic, followed by the example index, against a
real broker and Redis (one server and a Cluster)."""

from __future__ import annotations

import json

import numpy as np

from consumer.receipts import Receipt
from consumer.serving.index import FactorIndex
from tests.service.conftest import service_running
from tests.service.kafka_helpers import event, eventually, produce, read_all

TOP = 5


def _index_holds_the_model(index: FactorIndex, setup) -> bool:
    index.poll(0.1)
    users, items = setup.data.shape
    return len(index.vectors["user"]) == users and len(index.vectors["item"]) == items


def _stored_scores(setup, user: int) -> np.ndarray:
    meta = setup.state.meta()
    users = setup.state.read_all_factors("user", meta)
    items = setup.state.read_all_factors("item", meta)
    return items @ users[user]


def users_of(setup, item: str) -> list[int]:
    by_item = setup.data.by_user.tocsc()
    column = int(item[1:])
    return by_item.indices[by_item.indptr[column] : by_item.indptr[column + 1]].tolist()


def test_a_forgotten_item_leaves_the_users_top_n_in_the_serving_index(setup):
    s = setup.settings
    index = FactorIndex({"bootstrap.servers": setup.bootstrap}, s.topic_factors, s.namespace)
    try:
        with service_running(setup.service()):
            # A new owner publishes every row the topic does not have yet: the whole model.
            eventually(lambda: _index_holds_the_model(index, setup), timeout=60)
            # The item first in most users' lists, forgotten whole (a catalogue takedown):
            # it must leave every list the index serves.
            firsts = [index.top_n(f"u{u}", 1)[0][0] for u in range(setup.data.shape[0])]
            item = max(set(firsts), key=firsts.count)
            users = [f"u{u}" for u, first in enumerate(firsts) if first == item]
            assert users
            body = event(item=item, ts=2e9, request_id="serve-me")
            produce(setup.bootstrap, s.topic_deletions, [(item, body)])
            (message,) = read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= 1)
            receipt = Receipt.from_json(message.value())
            # The receipt's factors were on the topic before the receipt: reading it to its
            # end now, without waiting, shows the deletion.
            index.catch_up()
            assert receipt.generations and all(g > 0 for _, g in receipt.generations)
            assert index.shows(receipt)
            assert receipt.scope == "item" and receipt.removed == len(users_of(setup, item))
            for user in users:
                assert item not in [i for i, _ in index.top_n(user, TOP)]
            parts = json.loads(message.value())["parts"]
            assert all(p["generation"] > 0 for p in parts)
            # Forgotten whole, the item has nothing left to fit: its key was tombstoned on
            # the topic, so the index holds no vector for it at all.
            assert item not in index.vectors["item"]
        # What the index serves is what the model holds, score for score: once the service
        # stopped (consolidation moves factors meanwhile), read to the end.
        index.catch_up()
        k = setup.state.meta().params.factors
        erased = np.zeros(k, np.float32)  # a tombstoned row scores 0 (its stored factor)
        served = np.array(
            [index.vectors["item"].get(f"i{i}", erased) for i in range(setup.data.shape[1])]
        )
        for user in range(setup.data.shape[0]):
            stored = _stored_scores(setup, user)
            np.testing.assert_allclose(served @ index.vectors["user"][f"u{user}"], stored,
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
    finally:
        index.close()
