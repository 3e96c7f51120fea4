"""Several engines (instances) on one namespace: the write lease, fencing, replica refresh."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from consumer import engine as engine_module
from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source
from consumer.state.bootstrap import export, load
from consumer.state.lease import LeaseLost
from consumer.state.store import ModelState, ShardWrite
from tests.conftest import all_keys, params_for
from tests.state.crash import process_killed_mid_commit
from unlearn_core import Interactions, train
from unlearn_core.convergence import relative_change
from unlearn_core.model import pair_scores

NOW = 2_000_000_000.0
N_USERS, N_ITEMS = 60, 30


@pytest.fixture
def popular():
    """Random data in which item 0 is observed by every user, and a model trained on it."""
    rng = np.random.default_rng(5)
    weights = np.where(
        rng.random((N_USERS, N_ITEMS)) < 0.25, rng.integers(1, 5, (N_USERS, N_ITEMS)), 0
    )
    weights[:, 0] = rng.integers(1, 5, N_USERS)
    users, items = np.nonzero(weights)
    data = Interactions.from_triples(
        users, items, weights[users, items].astype(float), weights.shape, "implicit"
    )
    params = params_for("implicit", factors=6, regularization=1.0)
    user_ids, item_ids = [f"u{n}" for n in range(N_USERS)], [f"i{n}" for n in range(N_ITEMS)]
    model, _ = train(data, user_ids, item_ids, params, 30, solver="cholesky")
    return model, data


def _load(redis_client, namespace: str, popular, holder: str) -> ModelState:
    model, data = popular
    state = ModelState(redis_client, namespace, holder=holder)
    load(state, model, data, np.full(data.nnz, 1_000_000_000.0), shards=4)
    return state


def _events(partition: int, partitions: int) -> list[tuple[list[Interaction], list[Deletion]]]:
    """The batches of one of `partitions` partitions: its users forget item 0 and learn
    item 1, three a batch; then a deletion whose effect spans every instance's rows: the
    first partition forgets one of its users whole, the second forgets item 2 for everyone."""
    offsets = {"interactions": -1, "deletions": -1}

    def source(topic: str) -> Source:
        offsets[topic] += 1
        return Source(topic, partition, offsets[topic])

    batches = []
    users = list(range(partition, N_USERS, partitions))
    for start in range(0, len(users), 3):
        chunk = users[start : start + 3]
        deletions = [Deletion(f"u{u}", "i0", NOW, f"r-{u}", source("deletions")) for u in chunk]
        interactions = [
            Interaction(f"u{u}", "i1", 1.0, NOW + 1, source("interactions")) for u in chunk
        ]
        batches.append((interactions, deletions))
    if partition == 0:
        batches.append(
            ([], [Deletion(f"u{users[0]}", None, NOW, "whole-user", source("deletions"))])
        )
    if partition == 1:
        batches.append(([], [Deletion(None, "i2", NOW, "whole-item", source("deletions"))]))
    return batches


def _item_rows(state: ModelState) -> dict[int, list[tuple[int, float]]]:
    """The item-major copy of the interactions, as stored (export reads the user rows)."""
    rows = state.read_all_rows("item", state.meta())
    return {n: [(int(r["other"]), float(r["weight"])) for r in row] for n, row in rows.items()}


def _settle(engine: Engine, sweeps: int = 60) -> None:
    for _ in range(sweeps):
        if engine.consolidate().improvement < 1e-9:
            return


@pytest.mark.parametrize("instances", [2, 4])
def test_instances_forgetting_one_popular_item_at_once_match_one_instance(
    redis_client, popular, monkeypatch, instances
):
    solo_state = _load(redis_client, f"solo{instances}", popular, holder="solo")
    solo = Engine(solo_state)
    solo_receipts = []
    for partition in range(instances):
        for batch in _events(partition, instances):
            solo_receipts += solo.process(*batch).receipts

    # A slow solve widens the window in which the instances hold item 0's row in memory:
    # without the lease, one's write would bring back the pairs another removed.
    solve = engine_module._Batch.solve

    def slow_solve(batch) -> None:
        solve(batch)
        time.sleep(0.02)

    monkeypatch.setattr(engine_module._Batch, "solve", slow_solve)
    namespace = f"group{instances}"
    group_state = _load(redis_client, namespace, popular, holder="0")
    engines = [Engine(group_state)] + [
        Engine(ModelState(redis_client, namespace, holder=str(n))) for n in range(1, instances)
    ]
    receipts: list[list] = [[] for _ in range(instances)]
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for batch in _events(n, instances):
                receipts[n] += engines[n].process(*batch).receipts
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(instances)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures

    # The data: exactly the same, both ways, and every request applied once, with the
    # same effect (a whole user, a whole item: their pairs live in every instance's rows).
    _, solo_data = export(solo_state)
    _, group_data = export(group_state)
    assert (solo_data.by_user != group_data.by_user).nnz == 0
    assert _item_rows(group_state) == _item_rows(solo_state)
    assert 0 not in _item_rows(group_state) and 2 not in _item_rows(group_state)
    assert int(group_state.read_status()["interactions"]) == group_data.nnz == solo_data.nnz
    answered = {r.request_id: r.removed for rs in receipts for r in rs}
    assert sum(len(rs) for rs in receipts) == len(answered) == len(solo_receipts)
    assert answered == {r.request_id: r.removed for r in solo_receipts}
    assert all(answered[f"r-{u}"] == 1 for u in range(N_USERS))
    assert answered["whole-user"] > 0 and answered["whole-item"] > 0
    assert group_state.read_applied() == solo_state.read_applied()

    # The model: once converged, the same objective and the same scores.
    _settle(solo)
    group = Engine(ModelState(redis_client, namespace, holder="0"))
    _settle(group)
    assert group.loss == pytest.approx(solo.loss, rel=1e-4)
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, N_USERS, 2000), rng.integers(0, N_ITEMS, 2000)
    solo_scores = pair_scores(solo.factors["user"], solo.factors["item"], u, i)
    group_scores = pair_scores(group.factors["user"], group.factors["item"], u, i)
    assert relative_change(solo_scores, group_scores) < 1e-3


def test_an_instance_brings_its_replica_up_to_date_before_a_batch(redis_client, popular):
    state_a = _load(redis_client, "refresh", popular, holder="a")
    a, b = Engine(state_a), Engine(ModelState(redis_client, "refresh", holder="b"))
    for batch in _events(0, 2)[:2]:
        a.process(*batch)
    assert not np.array_equal(a.factors["item"], b.factors["item"])
    b.process([], [])  # nothing to do, but the lease refreshes the replica
    for side in ("user", "item"):
        assert np.array_equal(a.factors[side], b.factors[side])
    assert b.loss == a.loss and b.interactions == a.interactions

    # Further behind than the change log reaches: a full reload gives the same.
    a.process(*_events(0, 2)[2])
    redis_client.xtrim(state_a.layout.changes, maxlen=0)
    b.process([], [])
    for side in ("user", "item"):
        assert np.array_equal(a.factors[side], b.factors[side])


def test_a_writer_whose_lease_was_taken_over_writes_nothing(redis_client, popular):
    state_a = _load(redis_client, "fenced", popular, holder="a")
    state_b = ModelState(redis_client, "fenced", holder="b")
    state_a.lease.acquire()
    redis_client.delete(state_a.layout.lease)  # a's lease lapses (a paused too long) ...
    state_b.lease.acquire()  # ... and b takes it
    before = {k: redis_client.dump(k) for k in all_keys(redis_client, "{unlearn:fenced:*")}
    write = ShardWrite()
    write.factors["user"][0] = np.ones(6, dtype=np.float32)
    with pytest.raises(LeaseLost):
        state_a.commit_batch({0: write}, {"deletions:0": 99})
    assert {k: redis_client.dump(k) for k in all_keys(redis_client, "{unlearn:fenced:*")} == before
    assert state_a.read_applied() == {} and not redis_client.exists(state_a.layout.intent)

    # b writes shard 0; a's late shard write (older token) is refused there.
    newer = ShardWrite()
    newer.factors["user"][0] = np.full(6, 2.0, dtype=np.float32)
    state_b.commit_batch({0: newer}, {})
    state_a.write_shards({0: write}, state_a.lease.token)
    stored = state_a.read_factors("user", np.array([0]), 4, 6)[0]
    assert stored.tolist() == [2.0] * 6


def test_a_lease_that_lapsed_untaken_still_commits(redis_client, popular):
    """A long sweep may outlive the lease's expiry; nobody else took it, so it commits."""
    state = _load(redis_client, "lapsed", popular, holder="a")
    state.lease.acquire()
    redis_client.delete(state.layout.lease)
    write = ShardWrite()
    write.factors["item"][1] = np.full(6, 3.0, dtype=np.float32)
    generation, _ = state.commit_batch({1: write}, {"deletions:0": 7})
    assert generation == state.generation() and state.read_applied() == {"deletions:0": 7}
    assert state.read_factors("item", np.array([1]), 4, 6)[0].tolist() == [3.0] * 6


def test_an_instance_finishes_the_batch_another_left_half_written(redis_client, popular):
    """A dies between shard writes; B, already running, takes the lease next: it must
    finish A's batch from the redo log before its own, or A's replay would count twice."""
    state_a = _load(redis_client, "half", popular, holder="a")
    a, b = Engine(state_a), Engine(ModelState(redis_client, "half", holder="b"))
    first, second = _events(0, 2)[0], _events(1, 2)[0]
    process_killed_mid_commit(lambda: a.process(*first))
    redis_client.delete(state_a.layout.lease)  # a is gone; its lease lapses

    b.process(*second)  # finishes a's batch, then its own
    replay = b.process(*first)  # a's partition moved to b: the batch comes again
    assert replay.events_replayed == len(first[0]) + len(first[1])
    assert sorted(r.request_id for r in replay.resent) == sorted(d.request_id for d in first[1])

    solo_state = _load(redis_client, "half-solo", popular, holder="solo")
    solo = Engine(solo_state)
    solo.process(*first)
    solo.process(*second)
    assert _item_rows(state_a) == _item_rows(solo_state)
    _, data = export(state_a)
    _, solo_data = export(solo_state)
    assert (data.by_user != solo_data.by_user).nnz == 0
    assert int(state_a.read_status()["interactions"]) == solo_data.nnz
    assert b.loss == pytest.approx(solo.loss, rel=1e-3)
