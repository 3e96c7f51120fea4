"""The micro-batch engine against a real redis-server: forgetting, learning, replays, crashes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from consumer.consolidation.sweeps import Sweeps
from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source
from consumer.state.bootstrap import export, load
from consumer.state.store import ModelState
from tests.conftest import all_keys, params_for
from tests.state.crash import process_killed_mid_commit
from unlearn_core import Change, SweepPolicy, loss, train, update

NOW = 2_000_000_000.0  # deletion time later than every stored interaction


class Stream:
    """Hands out increasing offsets per topic, like a partition would."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def source(self, topic: str) -> Source:
        self.offsets[topic] = self.offsets.get(topic, -1) + 1
        return Source(topic, 0, self.offsets[topic])

    def delete(self, user=None, item=None, ts=NOW, request_id=None) -> Deletion:
        return Deletion(user, item, ts, request_id, self.source("deletions"))

    def interact(self, user, item, weight=1.0, ts=NOW) -> Interaction:
        return Interaction(user, item, weight, ts, self.source("interactions"))


@pytest.fixture
def loaded(redis_client, random_data):
    _, data = random_data(n_users=40, n_items=25, density=0.3, seed=21)
    params = params_for("implicit", factors=5, regularization=1.0)
    users, items = [f"u{n}" for n in range(40)], [f"i{n}" for n in range(25)]
    model, _ = train(data, users, items, params, 30, solver="cholesky")
    state = ModelState(redis_client, "engine")
    load(state, model, data, np.full(data.nnz, 1_000_000_000.0), shards=4)
    return state, model, data


def first_pair(data):
    key = int(data.entry_keys[0])
    return key // data.shape[1], key % data.shape[1]


def test_a_pair_deletion_removes_it_both_ways_and_matches_the_core(loaded):
    state, model, data = loaded
    u, i = first_pair(data)
    engine, stream = Engine(state), Stream()
    out = engine.process([], [stream.delete(f"u{u}", f"i{i}", request_id="r-1")])
    assert out.removed == 1 and out.receipts[0].removed == 1
    assert out.receipts[0].request_id == "r-1" and out.receipts[0].scope == "pair"
    assert i not in state.read_rows("user", np.array([u]), 4)[0]["other"]
    assert u not in state.read_rows("item", np.array([i]), 4)[0]["other"]
    exported, exported_data = export(state)
    expected, expected_data, _ = update(
        model, data, Change.deletions([u], [i]), SweepPolicy(max_sweeps=0)
    )
    assert (exported_data.by_user != expected_data.by_user).nnz == 0
    np.testing.assert_allclose(
        exported.user_factors @ exported.item_factors.T,
        expected.user_factors @ expected.item_factors.T,
        atol=1e-4,
    )
    assert state.read_applied() == {"deletions:0": 0}


def test_whole_user_and_whole_item_deletions(loaded):
    state, _, data = loaded
    engine, stream = Engine(state), Stream()
    user_items = data.by_user.indices[data.by_user.indptr[3] : data.by_user.indptr[4]]
    out = engine.process([], [stream.delete(user="u3"), stream.delete(item="i7")])
    receipts = {r.scope: r for r in out.receipts}
    assert receipts["user"].removed == len(user_items)
    assert receipts["item"].removed == data.column_counts()[7]
    # Every part of each request is named, with the time it became durable: the item's
    # interactions purged in every shard, then the item itself.
    assert {p for p, _ in receipts["item"].parts} == {f"purge@{s}" for s in range(4)} | {
        f"item@{7 % 4}"
    }
    assert {p for p, _ in receipts["user"].parts} >= {f"user@{3 % 4}"}
    exported, exported_data = export(state)
    assert exported_data.row_counts()[3] == 0 and exported_data.column_counts()[7] == 0
    assert not exported.user_factors[3].any() and not exported.item_factors[7].any()
    for side, row in (("item", int(user_items[0])), ("user", 0)):
        stored = state.read_rows(side, np.array([row]), 4)[0]["other"]
        assert (3 if side == "item" else 7) not in stored


def test_late_interaction_older_than_a_deletion_is_never_learned(loaded):
    state, _, data = loaded
    engine, stream = Engine(state), Stream()
    u, i = first_pair(data)
    engine.process([], [stream.delete(f"u{u}", f"i{i}", ts=1_500_000_000.0)])
    out = engine.process(
        [stream.interact(f"u{u}", f"i{i}", ts=1_400_000_000.0)],  # older: late
        [],
    )
    assert out.interactions_late == 1 and out.interactions_applied == 0
    out = engine.process([stream.interact(f"u{u}", f"i{i}", ts=1_600_000_000.0)], [])
    assert out.interactions_applied == 1
    assert i in state.read_rows("user", np.array([u]), 4)[0]["other"]


def test_a_deletion_also_stops_older_interactions_in_the_same_batch(loaded):
    state, _, _ = loaded
    engine, stream = Engine(state), Stream()
    # In the input, the interactions come before the deletion: learned, then the older
    # one removed (as one event at a time would), the newer one kept.
    out = engine.process(
        [stream.interact("newcomer", "i1", ts=100.0), stream.interact("newcomer", "i2", ts=300.0)],
        [stream.delete(user="newcomer", ts=200.0)],
    )
    assert (out.interactions_suppressed, out.interactions_late, out.interactions_applied) == (
        0,
        0,
        2,
    )
    # The receipt counts what the request took out of the model, and what of its scope
    # stays (newer than the deletion).
    assert (out.receipts[0].removed, out.receipts[0].kept_newer) == (1, 1)
    assert int(state.read_status()["interactions"]) == state.count_interactions()
    index = int(state.lookup("user", ["newcomer"])[0])
    assert state.read_rows("user", np.array([index]), 4)[0]["other"].tolist() == [2]
    # After the deletion in the input (a later message timestamp), an older copy is never
    # learned: suppressed by the deletion before it in the same batch, not counted by it.
    late = Source("interactions", 0, 10, stamp=2_000)
    erase = Source("deletions", 0, 10, stamp=1_000)
    out = engine.process(
        [Interaction("newcomer", "i3", 1.0, 220.0, late)],
        [Deletion("newcomer", None, 250.0, "again", erase)],
    )
    assert (out.interactions_suppressed, out.interactions_applied) == (1, 0)
    assert (out.receipts[0].removed, out.receipts[0].kept_newer) == (0, 1)


def test_learning_adds_weights_and_new_ids(loaded):
    state, _, _ = loaded
    engine, stream = Engine(state), Stream()
    engine.process([stream.interact("fresh", "i0", 2.0), stream.interact("fresh", "i0", 3.0)], [])
    index = int(state.lookup("user", ["fresh"])[0])
    row = state.read_rows("user", np.array([index]), 4)[0]
    assert row["other"].tolist() == [0] and row["weight"].tolist() == [5.0]
    exported, _ = export(state)
    assert exported.user_factors[index].any()
    assert exported.user_ids[index] == "fresh"


def test_a_replayed_batch_changes_nothing_and_resends_receipts(loaded, redis_client):
    state, _, data = loaded
    u, i = first_pair(data)
    stream = Stream()
    events = ([stream.interact("x", "i0", 1.0)], [stream.delete(f"u{u}", f"i{i}", request_id="r")])
    first = Engine(state)
    first.sent(first.process(*events).receipts)  # published: not to be sent again

    def snapshot() -> dict[bytes, bytes]:
        # Every key but the shards' owners and tokens, which each engine takes anew, and
        # the namespace's bell, which counts writes (taking the shards is one).
        return {
            k: redis_client.dump(k)
            for k in all_keys(redis_client)
            if not k.endswith((b":fence", b":owner", b":bell"))
        }

    before = snapshot()
    again = Engine(state).process(*events)
    assert again.events_replayed == 2 and not again.receipts
    assert [r.request_id for r in again.resent] == ["r"] and again.resent[0].resent
    assert snapshot() == before


def test_a_crash_between_shard_writes_is_finished_on_restart(loaded):
    state, _, data = loaded
    u, _ = first_pair(data)
    stream = Stream()
    deletion = stream.delete(user=f"u{u}", request_id="crash")
    process_killed_mid_commit(lambda: Engine(state).process([], [deletion]))
    assert not state.read_receipts(4)  # not answered: not every part is durable
    engine = Engine(state)  # takes every shard over: asks again for what is missing
    recovered = engine.drain()
    assert [r.request_id for r in recovered.receipts] == ["crash"]
    assert recovered.receipts[0].removed == data.row_counts()[u]
    assert int(state.read_status()["interactions"]) == data.nnz - data.row_counts()[u]
    assert int(state.read_status()["interactions"]) == state.count_interactions()
    _, exported_data = export(state)
    assert exported_data.row_counts()[u] == 0
    assert all(u not in row["other"] for row in state.read_all_rows("item", state.meta()).values())
    replay = engine.process([], [deletion])
    assert replay.events_replayed == 1 and replay.removed == 0 and not replay.receipts
    assert replay.resent[0].request_id == "crash"
    stored = json.loads(state.read_receipt(u % 4, deletion.source.key))
    assert stored["removed"] == data.row_counts()[u]


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_the_batch_loss_is_the_objective_on_the_new_data(redis_client, random_data, kind):
    _, data = random_data(n_users=30, n_items=20, density=0.3, seed=4, kind=kind)
    params = params_for(kind, factors=4, regularization=1.0)
    model, _ = train(data, [f"u{n}" for n in range(30)], [f"i{n}" for n in range(20)], params, 20)
    state = ModelState(redis_client, f"loss-{kind}")
    load(state, model, data, np.full(data.nnz, 1e9), shards=3)
    engine, stream = Engine(state), Stream()
    u, i = first_pair(data)
    out = engine.process(
        [stream.interact("u1", "i2", 4.0), stream.interact("new", "i3", 2.0)],
        [stream.delete(f"u{u}", f"i{i}"), stream.delete(user="u5")],
    )
    exported, exported_data = export(state)
    expected = loss(exported_data, exported.user_factors, exported.item_factors, params)
    assert out.loss == pytest.approx(expected, rel=1e-5)
    assert float(state.read_status()["loss"]) == pytest.approx(expected, rel=1e-5)


def test_consolidation_lowers_the_loss_toward_retraining(loaded):
    state, model, data = loaded
    engine, stream = Engine(state), Stream()
    keys = data.entry_keys[::5]
    engine.process(
        [], [stream.delete(f"u{k // data.shape[1]}", f"i{k % data.shape[1]}") for k in keys]
    )

    def current_loss():
        exported, exported_data = export(state)
        return loss(exported_data, exported.user_factors, exported.item_factors, model.params)

    before = current_loss()
    sweeps = [Sweeps(engine).sweep(rows_per_slice=7) for _ in range(5)]
    assert current_loss() < before
    # Exact block coordinate descent: the objective never increases, slice by slice, and
    # the engine's running objective is the objective of what Redis holds.
    losses = [sweeps[0].loss_before] + [s.loss for sweep in sweeps for s in sweep.slices]
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(losses))
    assert sweeps[-1].improvement < sweeps[0].improvement
    assert engine.loss == pytest.approx(current_loss(), rel=1e-6)


def test_solving_on_several_threads_gives_the_same_model(redis_client, random_data, monkeypatch):
    from unlearn_core import solve

    _, data = random_data(n_users=200, n_items=100, density=0.3, seed=8)
    params = params_for("implicit", factors=32, regularization=1.0)
    users, items = [f"u{n}" for n in range(200)], [f"i{n}" for n in range(100)]
    model, _ = train(data, users, items, params, 5, solver="cholesky")
    split_into = []
    partition = solve._partition
    monkeypatch.setattr(
        solve,
        "_partition",
        lambda lengths, parts: split_into.append(parts) or partition(lengths, parts),
    )
    engines = []
    for threads in (1, 2):
        state = ModelState(redis_client, f"threads-{threads}")
        load(state, model, data, np.full(data.nnz, 1_000_000_000.0), shards=4)
        engines.append(Engine(state, solve_threads=threads))
    stream = Stream()
    deletions = [stream.delete(f"u{u}") for u in range(0, 200, 3)]  # every item touched
    for engine in engines:
        split_into.clear()
        engine.process([], deletions)
    assert max(split_into) == 2  # the second engine really split its rows over two threads
    one, two = engines
    assert np.array_equal(one.factors["user"], two.factors["user"])
    assert np.array_equal(one.factors["item"], two.factors["item"])


def test_each_shards_change_log_is_bounded_in_bytes(loaded, monkeypatch):
    import consumer.state.shard_log as shard_log

    state, _, _ = loaded
    monkeypatch.setattr(shard_log, "CHANGES_BYTES", 600)
    engine, stream = Engine(state), Stream()
    for n in range(40):
        engine.process([stream.interact(f"u{n % 40}", f"i{n % 25}")], [])
    Sweeps(engine).sweep(rows_per_slice=64)  # a slice lists its block: 4 bytes a row
    for shard in range(4):
        keys = state.layout.shard(shard)
        entries = state.client.xrange(keys.changes)
        size = sum(len(body[b"users"]) + len(body[b"items"]) + 64 for _, body in entries)
        assert size <= 600 and int(state.client.get(keys.changes_bytes)) == size
        assert int(entries[0][0].split(b"-")[0]) > 1  # the oldest went


def test_a_shard_is_dropped_only_when_its_fence_moved_on(loaded, redis_client):
    state, _, _ = loaded
    engine = Engine(state)
    engine.own(range(4))
    # A commit of its own that landed while the reply was lost: more commits, same fence.
    redis_client.incr(state.layout.shard(1).gen)
    engine.refresh()
    assert set(engine.owned) == {0, 1, 2, 3}
    # Another holder drew the fence (a swap) and committed: the shard is dropped.
    state.log.acquire([2], "swap:0")
    redis_client.incr(state.layout.shard(2).gen)
    engine.refresh()
    assert set(engine.owned) == {0, 1, 3}
