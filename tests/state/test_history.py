"""A reload keeps the deletion history (consumer/state/history.py, `unlearn load
--replace`): a model retrained from a snapshot that still holds a deleted pair does not
bring it back, and the audit trail of earlier erasures survives."""

from __future__ import annotations

import json

import numpy as np

from consumer.cli import main
from consumer.engine import Engine
from consumer.model_file import save_model
from consumer.state.store import ModelState
from tests.state import test_engine
from tests.state.test_engine import NOW, Stream, first_pair

loaded = test_engine.loaded  # the same loaded namespace, on one server and on a Cluster

SNAPSHOT = 1_000_000_000.0  # when the retrained model's data was taken: before NOW


def write_snapshot(tmp_path, model, data):
    """The model and its data as the warehouse still has them (the pair included)."""
    path = tmp_path / "data.tsv"
    lines = []
    for key in data.entry_keys.tolist():
        u, i = divmod(key, data.shape[1])
        lines.append(f"u{u}\ti{i}\t1.0\t{int(SNAPSHOT) - 100}")
    path.write_text("\n".join(lines) + "\n")
    save_model(model, tmp_path / "model.npz")
    return str(tmp_path / "model.npz"), str(path)


def test_a_replaced_model_does_not_resurrect_a_deleted_pair(
    loaded, tmp_path, monkeypatch, redis_client, capsys
):
    state, model, data = loaded
    u, i = first_pair(data)
    engine, stream = Engine(state), Stream()
    first = engine.process([], [stream.delete(f"u{u}", f"i{i}", request_id="gone-1")])
    assert first.receipts[0].removed == 1
    engine.process([], [stream.delete(user="u7", request_id="gone-2")])
    model_path, data_path = write_snapshot(tmp_path, model, data)

    monkeypatch.chdir(tmp_path)
    flags = cli_flags(redis_client, monkeypatch)
    code = main(["load", "--model", model_path, "--interactions", data_path, "--replace",
                 "--shards", "3", "--trained-at", str(SNAPSHOT), *flags])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    user_seven = int(np.diff(data.by_user.indptr)[7])
    assert report["dropped_as_forgotten"] == 1 + user_seven
    assert report["receipts_kept"] == 2
    assert not list(tmp_path.glob("unlearn-history-*.json"))  # back in the namespace

    # The pair and user 7's history are not stored under the new model's indices.
    fresh = ModelState(redis_client, "engine")
    nu, n7 = fresh.lookup("user", [f"u{u}", "u7"])
    (ni,) = fresh.lookup("item", [f"i{i}"])
    rows = fresh.read_rows("user", np.array([nu, n7]), 3)
    assert ni not in rows[0]["other"] and len(rows[1]) == 0
    assert nu not in fresh.read_rows("item", np.array([ni]), 3)[0]["other"]
    # The audit trail goes on: both receipts are still there.
    sources = {r["request_id"] for r in fresh.read_receipts(3)}
    assert sources == {"gone-1", "gone-2"}
    # A late copy of the deleted interaction (older than the deletion) is not learned.
    later = Engine(fresh)
    out = later.process([stream.interact(f"u{u}", f"i{i}", ts=NOW - 10)], [])
    assert out.interactions_late == 1 and out.interactions_applied == 0
    assert ni not in fresh.read_rows("user", np.array([nu]), 3)[0]["other"]


def test_drop_history_forgets_the_trail_on_request(loaded, tmp_path, monkeypatch, redis_client):
    state, model, data = loaded
    u, i = first_pair(data)
    Engine(state).process([], [Stream().delete(f"u{u}", f"i{i}", request_id="gone-1")])
    model_path, data_path = write_snapshot(tmp_path, model, data)
    monkeypatch.chdir(tmp_path)
    flags = cli_flags(redis_client, monkeypatch)
    assert main(["load", "--model", model_path, "--interactions", data_path, "--replace",
                 "--drop-history", *flags]) == 0  # fmt: skip
    fresh = ModelState(redis_client, "engine")
    assert fresh.read_receipts(fresh.meta().shards) == []
    (nu,) = fresh.lookup("user", [f"u{u}"])
    (ni,) = fresh.lookup("item", [f"i{i}"])
    assert ni in fresh.read_rows("user", np.array([nu]), fresh.meta().shards)[0]["other"]


def cli_flags(client, monkeypatch, namespace: str = "engine") -> list[str]:
    """The command line's way to this test's Redis (or a node of its Cluster)."""
    if hasattr(client, "get_nodes"):
        node = client.get_nodes()[0]
        monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", "true")
        url = f"redis://{node.host}:{node.port}/0"
    else:
        kwargs = client.connection_pool.connection_kwargs
        url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
    return ["--redis-url", url, "--namespace", namespace]
