"""A live model swap (consumer/state/swap.py, `unlearn load --swap`) against a running
service, a real broker and Redis (one server and a Cluster): a model retrained on a
snapshot that still holds deleted pairs does not bring them back, deletions made while it
is built are acknowledged at once and applied to it too, what the live model learned after
the snapshot is carried over, and the audit trail goes on."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis

from consumer.application import Application
from consumer.cli import main
from consumer.engine import Engine
from consumer.events import Interaction, Source
from consumer.model_file import save_model
from consumer.serving.records import FactorRecord
from consumer.state.bootstrap import export, load
from consumer.state.inspection import stored_interactions
from consumer.state.store import ModelState
from consumer.state.swap import HOLD_PREFIX, Swap, SwapError, released
from tests.conftest import params_for
from tests.service.conftest import service_running, url_of
from tests.service.kafka_helpers import (
    event,
    eventually,
    fresh_settings,
    produce,
    read_all,
    receipts_of,
    unique,
)
from unlearn_core import train

SHARDS = 4
DAY = 86_400.0


def test_a_hold_is_released_by_its_promotion_or_its_deadline_only():
    now = time.time()
    assert released(None, now) and released("", now)
    assert released(f"{HOLD_PREFIX}{now - 1!r}", now)
    assert not released(f"{HOLD_PREFIX}{now + 60!r}", now)
    assert not released("engine", now)  # another instance: a rebalance moves it


def _ids(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{k}" for k in range(n)]


def _delete(bootstrap: str, topic: str, pairs: list[tuple[str, str]], tag: str) -> None:
    produce(bootstrap, topic, [
        (u, event(user=u, item=i, ts=time.time(), request_id=f"{tag}-{u}-{i}")) for u, i in pairs
    ])  # fmt: skip


def _pairs(state: ModelState) -> set[tuple[str, str]]:
    return {(u, i) for u, i, *_ in stored_interactions(state)}


def test_a_swap_under_a_running_service_keeps_every_deletion_and_the_audit_trail(
    kafka_bootstrap, redis_client: redis.Redis, random_data
):
    settings = fresh_settings(kafka_bootstrap, url_of(redis_client), unique("ns"))
    _, data = random_data(n_users=60, n_items=30, density=0.3, seed=3)
    users, items, params = _ids(60, "u"), _ids(30, "i"), params_for("implicit")
    model, _ = train(data, users, items, params, 10)
    snapshot = time.time() - 10 * DAY
    state = ModelState(redis_client, settings.namespace)
    stamps = np.full(data.nnz, snapshot - DAY)
    load(state, model, data, stamps, shards=SHARDS)
    rng = np.random.default_rng(1)
    chosen = [divmod(int(k), 30) for k in rng.choice(data.entry_keys, 6, replace=False)]
    pairs = [(f"u{u}", f"i{i}") for u, i in chosen]
    first, during, late = pairs[:2], pairs[2:4], pairs[4:]
    fresh = next((f"u{u}", f"i{i}") for u in range(60) for i in range(30)
                 if u * 30 + i not in set(data.entry_keys.tolist()))  # fmt: skip
    service = Application(settings, Engine(state))
    with service_running(service, seconds=300):
        _delete(kafka_bootstrap, settings.topic_deletions, first, "first")
        receipts_of(kafka_bootstrap, settings.topic_receipts, 2)
        # The platform retrains from a snapshot taken before those deletions reached it.
        retrained, _ = train(data, users, items, params, 15, seed=7)
        swap = Swap(state)
        green = swap.prepare(retrained, data, stamps, trained_at=snapshot)
        swap.reconcile(green)
        assert green.dropped == 2  # the first deletions' pairs, before anything is staged
        swap.stage(green)
        # While the new model is built the service goes on: deletions are acknowledged
        # at once, and an interaction newer than the snapshot is learned.
        _delete(kafka_bootstrap, settings.topic_deletions, during, "during")
        learned = event(user=fresh[0], item=fresh[1], weight=3.0, ts=time.time())
        produce(kafka_bootstrap, settings.topic_interactions, [(fresh[0], learned)])
        receipts_of(kafka_bootstrap, settings.topic_receipts, 4)
        eventually(lambda: fresh in _pairs(state), timeout=60, what="the fresh interaction")
        assert swap.reconcile(green) == 3  # the two deleted pairs out, the fresh one in
        _delete(kafka_bootstrap, settings.topic_deletions, late, "late")  # around the hold
        swap.promote(green)
        found = receipts_of(kafka_bootstrap, settings.topic_receipts, 6)
        assert {r["request_id"] for r in found} == {f"{t}-{u}-{i}" for t, ps in
            (("first", first), ("during", during), ("late", late)) for u, i in ps}  # fmt: skip
        eventually(lambda: len(service.engine.owned) == SHARDS, timeout=30,
                   what="the service took its shards back")  # fmt: skip
        # The serving side hears of the whole new model: every row at its new commit.
        topic = settings.topic_factors
        eventually(lambda: _serving_has(kafka_bootstrap, topic, green.generations, 90), 60,
                   "every row republished at the promoted commits")  # fmt: skip
    stored = _pairs(state)
    assert not set(pairs) & stored  # nothing deleted came back with the new model
    assert fresh in stored  # what the live model learned after the snapshot stayed
    assert len(stored) == data.nnz - 6 + 1
    # The deleted items are not re-learned: each pair scores below the retrained model's.
    live, _ = export(state)
    index_u = {u: n for n, u in enumerate(live.user_ids.tolist())}
    index_i = {i: n for n, i in enumerate(live.item_ids.tolist())}
    for u, i in pairs:
        now = float(live.user_factors[index_u[u]] @ live.item_factors[index_i[i]])
        before = float(retrained.user_factors[int(u[1:])] @ retrained.item_factors[int(i[1:])])
        assert now < before - 0.05, (u, i, now, before)
    # The audit trail is one across the swap: every receipt, the first ones included.
    trail = {r["request_id"] for r in state.read_receipts(SHARDS) if r.get("request_id")}
    assert {f"first-{u}-{i}" for u, i in first} <= trail
    assert len(trail) == 6


def _serving_has(bootstrap: str, topic: str, generations: dict[int, int], rows: int) -> bool:
    found = read_all(bootstrap, topic, lambda m: False, timeout=2)
    latest = {}
    for message in found:
        record = FactorRecord.from_json(message.value())
        if record.generation >= generations[record.shard]:
            latest[(record.side, record.id)] = record
    return len(latest) >= rows


def test_the_command_swaps_and_refuses_other_hyperparameters(
    redis_client, random_data, tmp_path, monkeypatch, capsys
):
    namespace = unique("ns")
    _, data = random_data(n_users=20, n_items=12, density=0.4, seed=5)
    users, items, params = _ids(20, "u"), _ids(12, "i"), params_for("implicit")
    model, _ = train(data, users, items, params, 5)
    state = ModelState(redis_client, namespace)
    load(state, model, data, np.full(data.nnz, 1000.0), shards=SHARDS)
    path = tmp_path / "data.tsv"
    path.write_text("".join(f"u{k // 12}\ti{k % 12}\t1.0\t900\n" for k in data.entry_keys.tolist()))
    save_model(model, tmp_path / "model.npz")
    flags = ["--redis-url", url_of(redis_client), "--namespace", namespace]
    if isinstance(redis_client, redis.RedisCluster):
        monkeypatch.setenv("UNLEARN_REDIS_CLUSTER", "true")
    assert main(["load", "--model", str(tmp_path / "model.npz"), "--interactions", str(path),
                 "--swap", "--trained-at", "950", *flags]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["swapped"] and report["interactions"] == data.nnz
    assert set(report["generations"]) == {str(s) for s in range(SHARDS)}
    assert not any(state.log.read_owners(SHARDS).values())  # every shard released
    assert not list(redis_client.scan_iter(match=f"*{namespace}*next:*"))  # nothing staged left
    other, _ = train(data, users, items, params_for("implicit", factors=3), 2)
    with pytest.raises(SwapError, match="hyperparameters"):
        Swap(state).prepare(other, data, np.zeros(data.nnz))
    assert main(["load", "--model", str(tmp_path / "model.npz"), "--interactions", str(path),
                 "--swap", "--replace", *flags]) == 2  # fmt: skip


def test_a_swap_that_fails_while_holding_gives_the_shards_back(redis_client, random_data):
    _, data = random_data(n_users=20, n_items=12, density=0.4, seed=6)
    users, items, params = _ids(20, "u"), _ids(12, "i"), params_for("implicit")
    model, _ = train(data, users, items, params, 5)
    state = ModelState(redis_client, unique("ns"))
    load(state, model, data, np.full(data.nnz, 1000.0), shards=SHARDS)
    swap = Swap(state)
    green = swap.prepare(model, data, np.full(data.nnz, 900.0), 950.0)
    swap.reconcile(green)
    swap.stage(green)
    before = state.log.read_generations(range(SHARDS))
    with pytest.raises(SwapError, match="ran out"):
        swap.promote(green, hold_s=0.5)  # less than the margin it keeps: never promotes
    assert not any(state.log.read_owners(SHARDS).values())  # released at once, not at the deadline
    assert state.log.read_generations(range(SHARDS)) == before  # nothing promoted


def test_every_interaction_the_live_model_holds_is_accounted_for_in_a_swap(
    redis_client, random_data
):
    """An interaction that arrived after the snapshot with an event time before it
    (`--trained-at`) is in neither the new data nor past the snapshot: it is carried over
    all the same, and counted, like every other one."""
    _, data = random_data(n_users=20, n_items=12, density=0.4, seed=8)
    users, items, params = _ids(20, "u"), _ids(12, "i"), params_for("implicit")
    model, _ = train(data, users, items, params, 5)
    state = ModelState(redis_client, unique("ns"))
    load(state, model, data, np.full(data.nnz, 900.0), shards=SHARDS)
    free = next((u, i) for u in range(20) for i in range(12) if not data.weights_of([u], [i])[0])
    late, fresh = (f"u{free[0]}", f"i{free[1]}"), ("u3", "new-item")
    Engine(state).process(
        [Interaction(*late, 2.0, 940.0, Source("interactions", 0, 0)),  # before --trained-at
         Interaction(*fresh, 1.0, 990.0, Source("interactions", 0, 1))],  # after it
        [],
    )  # fmt: skip
    swap = Swap(state)
    green = swap.prepare(model, data, np.full(data.nnz, 900.0), 950.0)  # the snapshot
    swap.reconcile(green)
    swap.stage(green)
    swap.promote(green)
    assert (green.carried, green.carried_older) == (1, 1)
    assert (green.live_newer, green.live_older) == (1, 1)
    assert green.live == green.in_both + green.live_newer + green.live_older == data.nnz + 2
    stored = {(u, i) for u, i, _, _ in stored_interactions(state)}
    assert late in stored and fresh in stored  # nothing the live model held is lost
