"""What the namespace holds about one subject, and everything it is fitted to
(consumer/state/inspection.py, `unlearn inspect` and `unlearn export --interactions`)."""

from __future__ import annotations

import json

from consumer.cli import main
from consumer.engine import Engine
from consumer.state.inspection import stored_interactions, subject_record
from consumer.tsv import read_interactions, write_interactions
from tests.state import test_engine
from tests.state.test_engine import NOW, Stream, first_pair
from tests.state.test_history import cli_flags

loaded = test_engine.loaded


def test_a_subjects_record_shows_its_history_tombstones_and_receipts(loaded):
    state, _, data = loaded
    u, i = first_pair(data)
    before = subject_record(state, "user", f"u{u}")
    assert f"i{i}" in {r["item"] for r in before["interactions"]}
    assert before["tombstones"] == [] and before["receipts"] == []
    engine, stream = Engine(state), Stream()  # one stream: offsets go on, nothing replayed
    engine.process([], [stream.delete(f"u{u}", f"i{i}", request_id="ask-1")])
    user = subject_record(state, "user", f"u{u}")
    assert f"i{i}" not in {r["item"] for r in user["interactions"]}
    assert len(user["interactions"]) == len(before["interactions"]) - 1
    assert user["tombstones"] == [{"scope": "pair", "item": f"i{i}", "ts": NOW}]
    assert [r["request_id"] for r in user["receipts"]] == ["ask-1"]
    item = subject_record(state, "item", f"i{i}")
    assert f"u{u}" not in {r["user"] for r in item["interactions"]}
    assert item["tombstones"] == [{"scope": "pair", "user": f"u{u}", "ts": NOW}]
    engine.process([], [stream.delete(item=f"i{i}", request_id="ask-2")])
    item = subject_record(state, "item", f"i{i}")
    assert item["interactions"] == []
    assert {"scope": "item", "ts": NOW} in item["tombstones"]  # once, though in every shard
    assert sum(t["scope"] == "item" for t in item["tombstones"]) == 1
    assert subject_record(state, "user", "nobody") == {
        "user": "nobody",
        "known": False,
        "interactions": [],
        "tombstones": [],
        "receipts": [],
    }


def test_every_stored_interaction_is_exported_with_its_time(loaded, tmp_path):
    state, _, data = loaded
    u, i = first_pair(data)
    Engine(state).process([], [Stream().delete(f"u{u}", f"i{i}")])
    path = tmp_path / "stored.tsv"
    assert write_interactions(path, stored_interactions(state)) == data.nnz - 1
    rows = read_interactions(path, "implicit")
    pairs = set(zip(rows.users, rows.items, strict=True))
    assert len(pairs) == data.nnz - 1 and (f"u{u}", f"i{i}") not in pairs
    assert set(rows.timestamps.tolist()) == {1_000_000_000.0}


def test_inspect_prints_the_record_as_json(loaded, redis_client, monkeypatch, capsys):
    state, _, data = loaded
    u, _ = first_pair(data)
    assert main(["inspect", "--user", f"u{u}", *cli_flags(redis_client, monkeypatch)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(subject_record(state, "user", f"u{u}")))
