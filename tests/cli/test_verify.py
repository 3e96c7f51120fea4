"""`unlearn verify` on a namespace the engine made forget (one server and a Cluster): the
report passes when the model forgot, and fails when a receipt lies or the model did not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from consumer.cli import main
from consumer.consolidation.worker import Consolidator
from consumer.engine import Engine
from consumer.events import Deletion, Source
from consumer.model_file import save_model
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from consumer.tsv import write_interactions
from tests.state.test_history import cli_flags
from unlearn_core import Hyperparameters, Interactions, train
from unlearn_core.synthetic import long_tailed_events

PARAMS = Hyperparameters("implicit", factors=16, regularization=1.0, alpha=2.0)
SHARDS = 4
DELETED = 120


class Forgotten:
    def __init__(self, client, folder: Path) -> None:
        events = long_tailed_events(n_users=300, n_items=400, mean_per_user=30, seed=3)
        rng = np.random.default_rng(0)
        held = rng.random(len(events)) < 0.05
        shape = (300, 400)
        self.users = [f"u{n}" for n in range(300)]
        self.items = [f"i{n}" for n in range(400)]
        keep = ~held
        data = Interactions.from_triples(
            events.users[keep], events.items[keep], np.ones(keep.sum()), shape, "implicit"
        )
        self.held_out = folder / "held-out.tsv"
        write_interactions(self.held_out, (
            (self.users[u], self.items[i], 1.0, 0)
            for u, i in zip(events.users[held], events.items[held], strict=True)
        ))  # fmt: skip
        self.model, _ = train(data, self.users, self.items, PARAMS, 20)
        self.before = folder / "before.npz"
        save_model(self.model, self.before)
        self.data = data
        self.client = client
        keys = data.entry_keys[rng.choice(data.nnz, DELETED, replace=False)]
        self.pairs = [(int(k // shape[1]), int(k % shape[1])) for k in keys]

    def loaded(self, namespace: str, model=None, data=None) -> ModelState:
        state = ModelState(self.client, namespace)
        data = self.data if data is None else data
        load(state, model or self.model, data, np.full(data.nnz, 1e9), shards=SHARDS)
        return state

    def forget(self, state: ModelState) -> None:
        engine = Engine(state)
        engine.own(range(SHARDS))
        deletions = [
            Deletion(self.users[u], self.items[i], 2e9, f"r-{n}", Source("deletions", 0, n))
            for n, (u, i) in enumerate(self.pairs)
        ]
        outcome = engine.process([], deletions)
        consolidator = Consolidator()  # as the service carries deletions through the model
        consolidator.attach(engine)
        consolidator.rest(outcome.forgetting)


@pytest.fixture
def forgotten(redis_client, tmp_path) -> Forgotten:
    return Forgotten(redis_client, tmp_path)


def run_verify(forgotten, monkeypatch, tmp_path, namespace: str, *extra: str):
    report = tmp_path / f"{namespace}.json"
    code = main([
        "verify", "--report", str(report), "--before", str(forgotten.before),
        "--held-out", str(forgotten.held_out), "--seeds", "2", *extra,
        *cli_flags(forgotten.client, monkeypatch, namespace),
    ])  # fmt: skip
    return code, json.loads(report.read_text())


def test_a_model_that_forgot_passes_every_check(forgotten, monkeypatch, tmp_path):
    forgotten.forget(forgotten.loaded("verified"))
    code, report = run_verify(forgotten, monkeypatch, tmp_path, "verified", "--sample", "500")
    assert report["verdict"] == "pass" and code == 0, report["checks"]
    assert report["deletions"]["pairs_judged"] == DELETED
    assert report["truth"]["receipts_checked"] == DELETED
    assert report["truth"]["covered_but_stored_count"] == 0
    models = report["models"]
    assert set(models) == {"now", "before", "retrain seed 0", "retrain seed 1"}
    # Forgetting shows: the deleted pairs score and rank lower than before, like a retrain.
    assert models["now"]["deleted_mean_score"] < models["before"]["deleted_mean_score"]
    assert models["now"]["deleted_median_rank"] > models["before"]["deleted_median_rank"]
    assert models["before"]["attack_auc"] > models["now"]["attack_auc"]
    assert {"held_out_recall_at_20", "held_out_auc", "loss"} <= set(report["checks"])
    assert report["thresholds"]["attack_auc_margin"] > 0
    assert Path(report["plot"]).stat().st_size > 10_000  # a PNG with three panels


def test_a_receipt_whose_pair_is_still_stored_fails_the_report(forgotten, monkeypatch, tmp_path):
    state = forgotten.loaded("lying")
    forgotten.forget(state)
    # A receipt for a pair the state still holds: what the report exists to catch.
    users, items = forgotten.data.by_user.nonzero()
    user, item = forgotten.users[users[0]], forgotten.items[items[0]]
    lie = {"request_id": "lie", "scope": "pair", "user": user, "item": item, "removed": 1,
           "event_ts": 2e9, "applied_at": 2e9, "source": "deletions:0:999999"}  # fmt: skip
    state.client.hset(state.layout.shard(0).receipts, "deletions:0:999999", json.dumps(lie))
    code, report = run_verify(forgotten, monkeypatch, tmp_path, "lying", "--sample", "500")
    assert code == 1 and report["verdict"] == "fail"
    assert report["checks"]["nothing_covered_is_stored"] is False
    assert report["truth"]["covered_but_stored"] == [{"request": "lie", "user": user,
                                                      "item": item}]  # fmt: skip


def test_a_model_that_kept_the_deleted_pairs_scores_fails(forgotten, monkeypatch, tmp_path):
    # The data lost the pairs but the factors are still those that learned them.
    keys = np.array([u * 400 + i for u, i in forgotten.pairs])
    keep = ~np.isin(forgotten.data.entry_keys, keys)
    users, items = forgotten.data.by_user.nonzero()
    remaining = Interactions.from_triples(
        users[keep], items[keep], np.ones(keep.sum()), (300, 400), "implicit"
    )
    forgotten.loaded("stale", data=remaining)
    deletions = tmp_path / "deleted.tsv"
    deletions.write_text(
        "".join(f"{forgotten.users[u]}\t{forgotten.items[i]}\n" for u, i in forgotten.pairs)
    )
    code, report = run_verify(
        forgotten, monkeypatch, tmp_path, "stale", "--deletions", str(deletions)
    )
    assert code == 1 and report["verdict"] == "fail"
    assert report["checks"]["no_deleted_pair_is_stored"] is True  # the data is right...
    assert report["checks"]["deleted_score"] is False  # ...the model is not
    assert report["checks"]["attack_auc"] is False


def test_verify_aligns_ids_retrains_to_the_models_convergence_and_names_what_fails(
    forgotten, monkeypatch, tmp_path
):
    from PIL import Image

    from consumer.verification import SMALL_SAMPLE
    from unlearn_core.model import FactorModel

    forgotten.forget(forgotten.loaded("judged"))
    # The model before lacks the first 100 items (say, exported before they were learned):
    # pairs on them are left out of its view and counted, never an index error.
    m = forgotten.model
    before = FactorModel.create(list(m.user_ids), list(m.item_ids[100:]), m.user_factors,
                                m.item_factors[100:], m.params)  # fmt: skip
    save_model(before, forgotten.before)
    code, report = run_verify(forgotten, monkeypatch, tmp_path, "judged", "--sample", "500")
    on_missing = sum(1 for _, i in forgotten.pairs if i < 100)
    assert on_missing > 0 and report["before_pairs_left_out"] == on_missing
    assert report["models"]["before"]["deleted_pairs"] == DELETED - on_missing
    # Retrains ran until as converged as the model, not a fixed count, and say so.
    retrain = report["retrain"]
    assert retrain["until"] == "as converged as the model"
    assert retrain["model_convergence"] > 0 and all(n >= 5 for n in retrain["iterations"])
    assert report["warnings"] == []
    assert report["failed"] == [name for name, ok in report["checks"].items() if not ok]
    assert code == (0 if report["verdict"] == "pass" else 1)
    # A handful of pairs is judged with a warning; the PNG's title names every failing check.
    code, small = run_verify(forgotten, monkeypatch, tmp_path, "judged", "--sample", "5",
                             "--iterations", "1")  # fmt: skip
    assert small["deletions"]["pairs_judged"] == 5 < SMALL_SAMPLE
    assert len(small["warnings"]) == 1 and "only 5 deleted pair(s)" in small["warnings"][0]
    assert small["retrain"]["until"] == "a fixed count" and small["retrain"]["iterations"] == [1, 1]
    title = Image.open(small["plot"]).text["Title"]
    assert title.startswith(f"unlearn verify: {small['verdict']}")
    assert all(name in title for name in small["failed"])
    assert (code == 1) == bool(small["failed"])
