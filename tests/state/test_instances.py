"""Several engines (instances) on one namespace, each owning some shards: they work in
parallel, a request whose parts land on several owners is answered once every part is
durable, a writer that lost its shards writes nothing, and replicas follow each other."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from consumer.consolidation.sweeps import Sweeps
from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source
from consumer.shards import batch as batch_module
from consumer.state.bootstrap import export, load
from consumer.state.layout import owned_shards
from consumer.state.store import ModelState
from tests.conftest import all_keys, params_for
from tests.state.crash import process_killed_mid_commit
from unlearn_core import Interactions, train
from unlearn_core.convergence import relative_change
from unlearn_core.model import pair_scores

NOW = 2_000_000_000.0
N_USERS, N_ITEMS = 60, 30
SHARDS = 4


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


def _load(redis_client, namespace: str, popular) -> ModelState:
    model, data = popular
    state = ModelState(redis_client, namespace)
    load(state, model, data, np.full(data.nnz, 1_000_000_000.0), shards=SHARDS)
    return state


def _events(partition: int, partitions: int) -> list[tuple[list[Interaction], list[Deletion]]]:
    """The batches of one of `partitions` input partitions: its users forget item 0 (owned
    by shard 0: most of these requests have a part on another owner) and learn item 1,
    three a batch; then requests whose effect spans every owner: the first partition
    forgets one of its users whole, the second forgets item 2 for everyone."""
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
        if Sweeps(engine).sweep().improvement < 1e-9:
            return


def _run_group(engines: list[Engine], instances: int) -> list[list]:
    """Each engine ingests its partition's batches and applies its shards' inboxes, all
    at once; then every engine steps until no inbox holds work and no request waits."""
    receipts: list[list] = [[] for _ in engines]
    failures: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for batch in _events(n, instances):
                engines[n].ingest(*batch)
                receipts[n] += engines[n].step().receipts
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(instances)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    for _ in range(100):
        outcomes = [e.step() for e in engines]
        for n, outcome in enumerate(outcomes):
            receipts[n] += outcome.receipts
        idle = not any(o.events or o.receipts or o.phases for o in outcomes)
        if idle and not any(o.pending for e in engines for o in e.owned.values()):
            break
    return receipts


@pytest.mark.parametrize("instances", [2, 4])
def test_instances_forgetting_one_popular_item_at_once_match_one_instance(
    redis_client, popular, monkeypatch, instances
):
    solo_state = _load(redis_client, f"solo{instances}", popular)
    solo = Engine(solo_state)
    solo_receipts = []
    for partition in range(instances):
        for batch in _events(partition, instances):
            solo_receipts += solo.process(*batch).receipts

    # A slow solve widens the window in which the instances hold rows in memory: a
    # writer without ownership would bring back the pairs another removed.
    solve = batch_module.Batch.solve

    def slow_solve(batch) -> None:
        solve(batch)
        time.sleep(0.02)

    monkeypatch.setattr(batch_module.Batch, "solve", slow_solve)
    namespace = f"group{instances}"
    group_state = _load(redis_client, namespace, popular)
    engines = [
        Engine(ModelState(redis_client, namespace), holder=str(n),
               owned=owned_shards(SHARDS, instances, {n}))
        for n in range(instances)
    ]  # fmt: skip
    receipts = _run_group(engines, instances)

    # The data: exactly the same, both ways, and every request answered once, with the
    # same effect (a whole user, a whole item: their pairs live in every owner's shards).
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
    # A request is answered by its coordinator once every part is durable, and says
    # which: the whole item's purges by every owner, then the item itself.
    by_id = {r.request_id: r for rs in receipts for r in rs}
    assert {p for p, _ in by_id["whole-item"].parts} == {
        *(f"purge@{s}" for s in range(SHARDS)),
        f"item@{2 % SHARDS}",
    }
    assert by_id["whole-item"].applied_at == max(at for _, at in by_id["whole-item"].parts)
    cross = [r for r in by_id.values() if r.scope == "pair" and int(r.user[1:]) % SHARDS != 0]
    assert cross and all({p for p, _ in r.parts} == {f"user@{int(r.user[1:]) % SHARDS}",
                                                      "items@0"} for r in cross)  # fmt: skip
    assert not any(group_state.read_pending(s) for s in range(SHARDS))

    # The model: once converged, the same objective and the same scores.
    _settle(solo)
    group = Engine(ModelState(redis_client, namespace))
    _settle(group)
    assert group.loss == pytest.approx(solo.loss, rel=1e-4)
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, N_USERS, 2000), rng.integers(0, N_ITEMS, 2000)
    solo_scores = pair_scores(solo.factors["user"], solo.factors["item"], u, i)
    group_scores = pair_scores(group.factors["user"], group.factors["item"], u, i)
    assert relative_change(solo_scores, group_scores) < 1e-3


def test_an_instance_brings_its_replica_up_to_date_before_a_batch(redis_client, popular):
    state = _load(redis_client, "refresh", popular)
    a = Engine(state, holder="a", owned={0, 2})
    b = Engine(ModelState(redis_client, "refresh"), holder="b", owned={1, 3})
    for batch in _events(0, 2)[:2]:
        a.ingest(*batch)
        b.ingest(*batch)
    for _ in range(5):
        a.step()
        b.step()
    a.refresh()
    b.refresh()  # what a step does before a batch
    for side in ("user", "item"):
        assert np.array_equal(a.factors[side], b.factors[side])
    assert a.loss == pytest.approx(b.loss) and a.interactions == b.interactions

    # Further behind than a shard's change log reaches: that shard is read whole. (These
    # requests have every part in a's shards: their users and item 0.)
    for _, deletions in _events(0, 2)[2:4]:
        a.ingest([], deletions)
    assert a.drain().receipts
    for shard in (0, 2):
        state.client.xtrim(state.layout.shard(shard).changes, maxlen=0)
    b.refresh()
    for side in ("user", "item"):
        assert np.array_equal(a.factors[side], b.factors[side])


def test_a_writer_whose_shard_was_taken_over_writes_nothing(redis_client, popular):
    state = _load(redis_client, "fenced", popular)
    a = Engine(state, holder="a")  # every shard
    a.ingest(*_events(0, 2)[0])
    b = Engine(ModelState(redis_client, "fenced"), holder="b", owned={0})  # takes shard 0
    before = {k: redis_client.dump(k) for k in all_keys(redis_client, "{unlearn:fenced:0}*")}
    out = a.step()  # a still believes it owns shard 0: its write there is refused
    assert 0 in out.lost and 0 not in a.owned
    after = {k: redis_client.dump(k) for k in all_keys(redis_client, "{unlearn:fenced:0}*")}
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed <= {b"{unlearn:fenced:0}:inbox"}  # only work for its owner arrived
    # What a could not write is still in shard 0's inbox: b applies it.
    b.drain()
    a.drain()
    solo_state = _load(redis_client, "fenced-solo", popular)
    Engine(solo_state).process(*_events(0, 2)[0])
    assert _item_rows(state) == _item_rows(solo_state)
    _, data = export(state)
    _, solo_data = export(solo_state)
    assert (data.by_user != solo_data.by_user).nnz == 0


def test_an_owner_that_died_mid_write_is_finished_by_the_next(redis_client, popular):
    """A dies between two shards' writes; B takes its shards over: B reads what A left in
    the inboxes and asks again for the parts of A's requests, and the state ends as one
    instance would leave it, every request answered once."""
    state = _load(redis_client, "half", popular)
    a = Engine(state, holder="a")
    first, second = _events(0, 2)[0], _events(1, 2)[-1]  # pairs, then a whole item
    a.ingest(*first)
    a.ingest(*second)
    process_killed_mid_commit(a.step)
    b = Engine(ModelState(redis_client, "half"), holder="b")  # takes every shard
    drained = b.drain()
    # Answered once each: stored by a before it died (sent again by b, `resent`: a may
    # have sent them), or completed by b.
    answered = [*drained.receipts, *drained.resent]
    assert sorted(r.request_id for r in answered) == sorted(
        d.request_id for d in (*first[1], *second[1])
    )
    assert all(r.resent for r in drained.resent) and drained.receipts
    replay = b.process(*first)  # a's partition moved to b: the batch comes again
    assert replay.events_replayed == len(first[0]) + len(first[1])
    assert sorted(r.request_id for r in replay.resent) == sorted(d.request_id for d in first[1])

    solo_state = _load(redis_client, "half-solo", popular)
    solo = Engine(solo_state)
    solo.process(*first)
    solo.process(*second)
    assert _item_rows(state) == _item_rows(solo_state)
    _, data = export(state)
    _, solo_data = export(solo_state)
    assert (data.by_user != solo_data.by_user).nnz == 0
    assert int(state.read_status()["interactions"]) == solo_data.nnz
    assert b.loss == pytest.approx(solo.loss, rel=1e-3)
