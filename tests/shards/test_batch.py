"""A batch counts what each deletion removed and kept as one event at a time would, in
the input's time order, wherever the batch was cut: the same input gives the same
receipts and the same state however it is split into batches (one server and a Cluster)."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source
from consumer.state.bootstrap import load
from consumer.state.inspection import stored_interactions
from consumer.state.store import ModelState
from tests.conftest import params_for
from unlearn_core import Interactions, train

T0 = 1_700_000_000.0


def scripted_input(seed: int, n: int = 240):
    """Interactions and pair/user deletions over a few users, with message timestamps in
    input order and event times that reach back (late copies) and forward."""
    rng = np.random.default_rng(seed)
    events: list[Interaction | Deletion] = []
    offsets = {"interactions": 0, "deletions": 0}
    for k in range(n):
        stamp = int((T0 + k) * 1000)
        user, item = f"u{rng.integers(6)}", f"i{rng.integers(8)}"
        if rng.random() < 0.2:
            topic = "deletions"
            source = Source(topic, 0, offsets[topic], stamp=stamp)
            ts = T0 + k - float(rng.integers(0, 3))  # at its message, or a little before
            whole = rng.random() < 0.3
            events.append(Deletion(user, None if whole else item, ts, f"r{k}", source))
        else:
            topic = "interactions"
            source = Source(topic, 0, offsets[topic], stamp=stamp)
            ts = T0 + k + float(rng.integers(-6, 4))  # some late, some ahead
            events.append(Interaction(user, item, 1.0, ts, source))
        offsets[topic] += 1
    return events


def loaded_state(client, namespace: str) -> ModelState:
    data = Interactions.from_triples(np.arange(6), np.arange(6), np.ones(6), (6, 8), "implicit")
    model, _ = train(data, [f"u{n}" for n in range(6)], [f"i{n}" for n in range(8)],
                     params_for("implicit"), 3)  # fmt: skip
    state = ModelState(client, namespace)
    load(state, model, data, np.full(6, T0 - 100), shards=3)
    return state


def run(client, namespace: str, events, cuts: list[int]):
    state = loaded_state(client, namespace)
    engine = Engine(state)
    receipts = {}
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        batch = events[start:end]
        out = engine.process(
            [e for e in batch if isinstance(e, Interaction)],
            [e for e in batch if isinstance(e, Deletion)],
        )
        for r in out.receipts:
            receipts[r.request_id] = (r.removed, r.kept_newer, r.event_ts)
    stored = sorted((u, i, t) for u, i, _, t in stored_interactions(state))
    return receipts, stored


@pytest.mark.parametrize("seed", [4, 5])
def test_receipts_and_state_do_not_depend_on_where_batches_are_cut(redis_client, seed):
    events = scripted_input(seed)
    one_by_one, stored_one = run(redis_client, f"one{seed}", events, list(range(1, len(events))))
    whole, stored_whole = run(redis_client, f"whole{seed}", events, [])
    rng = np.random.default_rng(9)
    cuts = sorted(set(rng.integers(1, len(events), 25).tolist()))
    split, stored_split = run(redis_client, f"split{seed}", events, cuts)
    assert len(one_by_one) == sum(isinstance(e, Deletion) for e in events)
    # The input is rich enough to matter: deletions that removed pairs, kept newer ones,
    # and late copies after them.
    assert any(r[0] > 0 for r in one_by_one.values())
    assert any(r[1] > 0 for r in one_by_one.values())
    assert whole == one_by_one and split == one_by_one
    assert stored_whole == stored_one and stored_split == stored_one
