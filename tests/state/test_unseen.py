"""Deletions name, they do not create: a deletion of an id the model has never seen keeps
its tombstone by id (layout `:unseen`) and adds no row to the model, its export or its
verification; a late copy of what it names is never learned, and a reload or a swap keeps
it (one server and a Cluster)."""

from __future__ import annotations

import json

import numpy as np

from consumer.cli import main
from consumer.engine import Engine
from consumer.model_file import load_model, save_model
from consumer.state.inspection import stored_interactions, subject_record
from consumer.state.store import ModelState
from consumer.state.swap import Swap
from tests.state import test_engine
from tests.state.test_engine import NOW, Stream
from tests.state.test_history import SNAPSHOT, cli_flags, write_snapshot
from unlearn_core import Interactions

loaded = test_engine.loaded  # 40 users u0.., 25 items i0.., on one server and a Cluster


def shape(state: ModelState) -> tuple[int, int]:
    meta = state.meta()
    return meta.users, meta.items


def stored(state: ModelState) -> set[tuple[str, str]]:
    return {(u, i) for u, i, _, _ in stored_interactions(state)}


def test_deletions_of_unseen_ids_add_no_row_and_stop_late_copies(loaded, tmp_path, monkeypatch):
    state, _, _ = loaded
    engine, stream = Engine(state), Stream()
    before = shape(state)
    out = engine.process([], [
        stream.delete(user="ghost", request_id="whole-user"),
        stream.delete(item="gone-item", request_id="whole-item"),
        stream.delete("u3", "new-item", request_id="pair-known-user"),
        stream.delete("stranger", "i4", request_id="pair-known-item"),
        stream.delete("nobody", "nothing", request_id="pair-both"),
    ])  # fmt: skip
    # Every request is answered, nothing removed, and no id was created.
    assert sorted(r.request_id for r in out.receipts) == sorted(
        ["whole-user", "whole-item", "pair-known-user", "pair-known-item", "pair-both"]
    )
    assert all(r.removed == 0 and r.kept_newer == 0 for r in out.receipts)
    assert shape(state) == before
    assert (state.lookup("user", ["ghost", "stranger", "nobody"]) < 0).all()
    assert (state.lookup("item", ["gone-item", "new-item", "nothing"]) < 0).all()
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--out", "m.npz", *cli_flags(state.client, monkeypatch)]) == 0
    exported = load_model(tmp_path / "m.npz")
    assert not {"ghost", "stranger", "nobody"} & set(exported.user_ids.tolist())
    assert not {"gone-item", "new-item", "nothing"} & set(exported.item_ids.tolist())

    # The tombstones by id: an access request sees them, named as the deletion named them.
    ghost = subject_record(state, "user", "ghost")
    assert ghost["known"] is False and ghost["tombstones"] == [{"scope": "user", "ts": NOW}]
    assert [r["request_id"] for r in ghost["receipts"]] == ["whole-user"]
    assert subject_record(state, "item", "new-item")["tombstones"] == [
        {"scope": "pair", "user": "u3", "ts": NOW}
    ]

    # Late copies (older than the deletions) are never learned; newer ones are, and only
    # then do the ids join the model.
    late = [
        stream.interact("ghost", "i1", ts=NOW - 5),
        stream.interact("u9", "gone-item", ts=NOW - 5),
        stream.interact("u3", "new-item", ts=NOW - 5),
        stream.interact("stranger", "i4", ts=NOW - 5),
        stream.interact("nobody", "nothing", ts=NOW - 5),
    ]
    out = engine.process(late, [])
    assert out.interactions_late == 5 and out.interactions_applied == 0
    held = stored(state)
    assert not {("ghost", "i1"), ("u9", "gone-item"), ("u3", "new-item"), ("stranger", "i4"),
                ("nobody", "nothing")} & held  # fmt: skip
    newer = [
        stream.interact("ghost", "i1", ts=NOW + 5),
        stream.interact("u3", "new-item", ts=NOW + 5),
        stream.interact("stranger", "i2", ts=NOW - 5),  # another pair: not covered
    ]
    out = engine.process(newer, [])
    assert out.interactions_applied == 3 and out.interactions_late == 0
    assert {("ghost", "i1"), ("u3", "new-item"), ("stranger", "i2")} <= stored(state)
    # A copy older than the deletion still stops, now that the ids are known.
    out = engine.process([stream.interact("ghost", "i7", ts=NOW - 1)], [])
    assert out.interactions_late == 1
    # Named again after it was seen: one tombstone, the latest, whichever way it is kept.
    engine.process([], [stream.delete(user="ghost", ts=NOW + 10, request_id="again")])
    again = subject_record(state, "user", "ghost")
    assert again["known"] is True and again["tombstones"] == [{"scope": "user", "ts": NOW + 10}]
    assert again["interactions"] == []


def test_a_reload_keeps_tombstones_of_ids_it_lacks_by_id(
    loaded, tmp_path, monkeypatch, redis_client, capsys
):
    state, model, data = loaded
    stream = Stream()
    Engine(state).process([], [
        stream.delete(user="ghost", request_id="ghost-gone"),
        stream.delete("u1", "new-item", request_id="pair-gone"),
    ])  # fmt: skip
    model_path, data_path = write_snapshot(tmp_path, model, data)
    monkeypatch.chdir(tmp_path)
    flags = cli_flags(redis_client, monkeypatch)
    assert main(["load", "--model", model_path, "--interactions", data_path, "--replace",
                 "--trained-at", str(SNAPSHOT), *flags]) == 0  # fmt: skip
    capsys.readouterr()
    fresh = ModelState(redis_client, "engine")
    assert shape(fresh) == model.shape  # no row for the ids the new model lacks
    assert fresh.read_unseen() == {("user", "ghost", None): NOW, ("pair", "u1", "new-item"): NOW}
    assert {r["request_id"] for r in fresh.read_receipts(fresh.meta().shards)} == {
        "ghost-gone", "pair-gone"
    }  # fmt: skip
    out = Engine(fresh).process([stream.interact("ghost", "i0", ts=NOW - 1),
                                 stream.interact("u1", "new-item", ts=NOW - 1)], [])  # fmt: skip
    assert out.interactions_late == 2 and shape(fresh)[0] == model.shape[0] + 1

    # A model that has the id: its interaction the tombstone covers is dropped on load.
    grown = model.with_ids(["ghost"], [])
    save_model(grown, tmp_path / "grown.npz")
    with open(data_path, "a") as f:
        f.write(f"ghost\ti3\t1.0\t{int(SNAPSHOT) - 50}\n")
    assert main(["load", "--model", str(tmp_path / "grown.npz"), "--interactions", data_path,
                 "--replace", "--trained-at", str(SNAPSHOT), *flags]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dropped_as_forgotten"] == 1
    assert ("ghost", "i3") not in stored(ModelState(redis_client, "engine"))


def test_a_swap_drops_what_a_tombstone_by_id_covers(loaded):
    state, model, data = loaded
    Engine(state).process([], [Stream().delete(user="ghost", request_id="ghost-gone")])
    # The retrained model has met the user: one interaction before the erasure, one after.
    grown = model.with_ids(["ghost"], [])
    users, items = data.by_user.nonzero()
    ghost = grown.shape[0] - 1
    new = Interactions.from_triples(
        np.r_[users, ghost, ghost], np.r_[items, 3, 4], np.ones(len(users) + 2), grown.shape,
        "implicit",
    )  # fmt: skip
    stamps = np.full(new.nnz, SNAPSHOT - 100)  # aligned with the pairs, by key
    stamps[new.entry_keys == ghost * grown.shape[1] + 4] = NOW + 50
    swap = Swap(state)
    green = swap.prepare(grown, new, stamps, NOW + 60)
    swap.reconcile(green)
    swap.stage(green)
    swap.promote(green)
    assert green.dropped == 1
    held = stored(state)
    assert ("ghost", "i3") not in held and ("ghost", "i4") in held
