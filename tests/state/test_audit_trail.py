"""The audit trail is append-only (one Redis server and a Cluster): a request applied
again, because the state lost its effect but kept its record, is recorded beside its
first receipt, never over it."""

from __future__ import annotations

import json

import numpy as np

from consumer.engine import Engine
from consumer.events import Deletion, Source
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import params_for
from unlearn_core import train


def test_a_request_applied_again_is_recorded_beside_its_first_receipt(redis_client, random_data):
    _, data = random_data(n_users=20, n_items=12, density=0.4, seed=2)
    users, items = [f"u{n}" for n in range(20)], [f"i{n}" for n in range(12)]
    model, _ = train(data, users, items, params_for("implicit"), 10)
    state = ModelState(redis_client, "trail")
    load(state, model, data, np.full(data.nnz, 1e9), shards=3)
    erase = Deletion("u4", None, 1.5e9, "erase-u4", Source("deletions", 0, 0))
    first = Engine(state).process([], [erase])
    (original,) = first.receipts
    assert original.removed > 0 and not original.reapplied
    # The state loses what it had applied, not its records (a reload that carried the
    # history over, a snapshot of the namespace without its offsets): the request is read
    # and applied again.
    for shard in range(3):
        redis_client.delete(state.layout.shard(shard).seen)
    redis_client.delete(state.layout.applied)
    engine = Engine(state)
    again = engine.process([], [erase])
    (second,) = again.receipts
    assert second.reapplied and second.removed == 0  # nothing was left to remove
    assert second.key_in_trail != original.key_in_trail == original.source
    trail = [r for r in state.read_receipts(3) if r["source"] == original.source]
    assert len(trail) == 2
    kept = next(r for r in trail if "record" not in r)
    assert kept == json.loads(original.to_json())  # the first record, untouched
    beside = next(r for r in trail if "record" in r)
    assert beside["reapplied"] and beside["record"] == second.key_in_trail

    # Unsent until the broker acknowledges it, under its own key; then no longer.
    def unsent() -> set[str]:
        return {m.decode() for s in range(3) for m in redis_client.smembers(
            state.layout.shard(s).unsent)}  # fmt: skip

    assert second.key_in_trail in unsent()
    engine.sent([second])
    assert second.key_in_trail not in unsent()
