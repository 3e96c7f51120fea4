"""Nothing an operator does rewrites the record (one Redis server and a Cluster, a real
broker): a reload under a running service is refused; forced, the service stops with one
line and never replays into the new model; a replay of the input, read again later, keeps
every deletion's time, the original receipts beside the new ones, and what a user did
after their erasure."""

from __future__ import annotations

import threading
import time

import numpy as np
import redis

from consumer.application import Application
from consumer.cli import main
from consumer.engine import Engine
from consumer.model_file import load_model, save_model
from consumer.state.store import NamespaceReplaced
from consumer.tsv import read_interactions
from tests.service.conftest import url_of
from tests.service.kafka_helpers import event, eventually, produce, read_all, unique
from unlearn_core import Interactions, train
from unlearn_core.ids import IdIndex
from unlearn_core.params import Hyperparameters

ERASED = "u1"


class Running:
    """The service in a thread, whatever way it ends."""

    def __init__(self, service: Application) -> None:
        self.service, self.error = service, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(max_seconds=180)
        except BaseException as exc:  # what the command line would print, and how it ends
            self.error = exc

    def stop(self) -> None:
        self.service.request_stop()
        self.thread.join(timeout=60)


def test_a_reload_under_a_running_service_is_refused_and_a_replay_keeps_the_record(
    setup, tmp_path, monkeypatch, capsys
):
    s = setup.settings
    if isinstance(setup.state.client, redis.RedisCluster):
        monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", "true")
    flags = ["--redis-url", url_of(setup.state.client), "--namespace", s.namespace]
    first = Running(Application(s, Engine(setup.state)))
    try:
        eventually(lambda: first.service.engine.owned, what="the service owns its shards")
        # A privacy tool's erasure, without a time: the message's own timestamp counts.
        produce(setup.bootstrap, s.topic_deletions,
                [(ERASED, event(user=ERASED, request_id="erase-u1"))])  # fmt: skip
        (message,) = read_all(setup.bootstrap, s.topic_receipts, lambda m: len(m) >= 1)
        erased_at = message.timestamp()[1] / 1000  # ~ the deletion's, a few ms later
        time.sleep(1.0)
        # The user comes back: an interaction after the erasure is learned.
        produce(setup.bootstrap, s.topic_interactions,
                [(ERASED, event(user=ERASED, item="i3", weight=2.0))])  # fmt: skip
        eventually(lambda: _stored(setup, ERASED), what="the return learned")
        original = _receipts(setup, "erase-u1")
        assert len(original) == 1 and original[0]["removed"] > 0
        tombstone = _user_tombstone(setup, ERASED)
        assert tombstone <= erased_at

        # A reload of a model of another rank, while the service runs: refused.
        model_path, data_path = _another_model(setup, tmp_path, flags)
        capsys.readouterr()
        load = ["load", "--model", str(model_path), "--interactions", str(data_path),
                "--replace", "--history", str(tmp_path / "history.json"), *flags]  # fmt: skip
        assert main(load) == 2
        error = capsys.readouterr().err
        assert "running instance" in error and "--force" in error
        assert error.count("\n") == 1  # one line
        # Forced: the service sees the namespace replaced and stops, one line, no replay.
        assert main([*load, "--force"]) == 0
        first.thread.join(timeout=60)
        assert not first.thread.is_alive()
        assert isinstance(first.error, NamespaceReplaced), first.error
        assert "\n" not in str(first.error) and "replaced" in str(first.error)
    finally:
        first.stop()

    # The record survived the reload: the original receipt, the tombstone's time, the return.
    assert _receipts(setup, "erase-u1") == original
    assert _user_tombstone(setup, ERASED) == tombstone
    assert _stored(setup, ERASED)

    # Every input read again from the start, later (a new group, as after a lost state).
    again = Running(Application(s.model_copy(update={"group_id": unique("replay")}),
                                Engine(setup.state)))  # fmt: skip
    try:
        eventually(lambda: len(_receipts(setup, "erase-u1")) == 2, timeout=90,
                   what="the erasure applied again, recorded beside the first")  # fmt: skip
        assert again.error is None
    finally:
        again.stop()
    trail = _receipts(setup, "erase-u1")
    assert original[0] in trail  # untouched
    (beside,) = [r for r in trail if r != original[0]]
    assert beside["reapplied"] and beside["event_ts"] == original[0]["event_ts"]
    assert _user_tombstone(setup, ERASED) == tombstone  # the time did not move
    assert _stored(setup, ERASED)  # what the user did after their erasure is still there


def _receipts(setup, request_id: str) -> list[dict]:
    meta = setup.state.meta()
    return [r for r in setup.state.read_receipts(meta.shards) if r.get("request_id") == request_id]


def _user_tombstone(setup, user: str) -> float:
    index = int(setup.state.lookup("user", [user])[0])
    return setup.state.user_erased_at(index)


def _stored(setup, user: str) -> bool:
    index = int(setup.state.lookup("user", [user])[0])
    meta = setup.state.meta()
    return len(setup.state.read_rows("user", np.array([index]), meta.shards)[0]) > 0


def _another_model(setup, tmp_path, flags):
    """What the namespace is fitted to, exported with its times (`unlearn export
    --interactions`), and a model of another rank trained on it: an operator's retrain."""
    exported, data_path = tmp_path / "live.npz", tmp_path / "data.tsv"
    assert main(["export", "--out", str(exported), "--interactions", str(data_path), *flags]) == 0
    live = load_model(exported)
    rows = read_interactions(data_path, live.params.kind)
    users, items = IdIndex(live.user_ids.tolist()), IdIndex(live.item_ids.tolist())
    data = Interactions.from_triples(
        np.array(users.add(rows.users)), np.array(items.add(rows.items)), rows.weights,
        (len(users), len(items)), live.params.kind,
    )  # fmt: skip
    params = live.params
    other = Hyperparameters(params.kind, params.factors + 2, params.regularization, params.alpha)
    model, _ = train(data, users.ids, items.ids, other, 5)
    model_path = tmp_path / "other-rank.npz"
    save_model(model, model_path)
    return model_path, data_path
