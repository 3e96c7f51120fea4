"""A replay gives the same record (one Redis server and a Cluster, noida-db): the whole
input of a 5,000-event run, deletions without a time among them, read again from offset 0
into a fresh namespace loaded as the live one was, twice, at different times, gives the
stored interactions, the tombstones and the receipts (what each removed and kept, and its
time) of the live run.

The service reads both topics merged in time order while it is behind (a replay's whole
input is behind), and a batch applies its events as one event at a time would: neither
which partition the broker answered first nor where batches were cut shows in the record.
Deletions of whole items are left out here: their purges reach every shard's owner when
the coordinator gets to them, so what each purge counts can depend on timing; their
effect on the state does not."""

from __future__ import annotations

import time

import numpy as np

from consumer.application import Application
from consumer.engine import Engine
from consumer.state.bootstrap import load
from consumer.state.history import read_history
from consumer.state.inspection import stored_interactions
from consumer.state.store import ModelState
from tests.conftest import params_for
from tests.service.conftest import service_running
from tests.service.kafka_helpers import (
    create_topics,
    event,
    eventually,
    produce,
    read_all,
    unique,
)
from unlearn_core import Interactions, train

EVENTS = 5_000
USERS, ITEMS = 60, 35  # the model knows 40 and 25: the rest arrive with the input


def the_input(seed: int = 2) -> list[tuple[str, bytes, bytes]]:
    """Interactions and deletions as a platform sends them, in order: keyed by user, most
    interactions without a time (the message's counts), deletions of pairs and of whole
    users, half of them without a time (as privacy tools send them), some naming ids the
    model has never seen. (kind, key, value) each."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(EVENTS):
        user = f"u{int(rng.zipf(1.6)) % USERS}"
        item = f"i{int(rng.zipf(1.4)) % ITEMS}"
        if rng.random() < 0.12:
            fields = {"user": user, "request_id": f"r{n}"}
            if rng.random() < 0.7:
                fields["item"] = item
            if rng.random() < 0.5:
                fields["ts"] = 1e9 + 10 * n  # a time of its own, in the past
            out.append(("deletions", user.encode(), event(**fields)))
        else:
            fields = {"user": user, "item": item, "weight": float(rng.integers(1, 4))}
            if rng.random() < 0.2:
                fields["ts"] = 1e9 + 10 * n + float(rng.integers(-50, 50))
            out.append(("interactions", user.encode(), event(**fields)))
    return out


def fresh_namespace(client, settings, data: Interactions) -> ModelState:
    """A namespace loaded as the live run's was: the same data, the same seeded model."""
    model, _ = train(data, [f"u{n}" for n in range(40)], [f"i{n}" for n in range(25)],
                     params_for("implicit"), 10)  # fmt: skip
    state = ModelState(client, settings.namespace)
    load(state, model, data, np.full(data.nnz, 1e9), shards=4)
    return state


def record_of(state: ModelState) -> dict:
    history = read_history(state)
    receipts = {}
    for r in state.read_receipts(4):
        receipts[r["request_id"]] = (r["scope"], r["removed"], r["kept_newer"], r["event_ts"])
    return {
        "interactions": sorted(stored_interactions(state)),
        "tombstones": (history.users, history.items, history.pairs),
        "receipts": receipts,
    }


def run_over(settings, client, bootstrap: str, requests: int, data: Interactions) -> dict:
    """The service over the whole input from offset 0, in a fresh namespace, with its own
    group and receipts topic, until every request is answered; the record it leaves."""
    state = fresh_namespace(client, settings, data)
    with service_running(Application(settings, Engine(state)), seconds=300):
        read_all(bootstrap, settings.topic_receipts, lambda m: len(m) >= requests, timeout=240)
        eventually(lambda: len(state.read_receipts(4)) >= requests, timeout=60,
                   what="every receipt stored")  # fmt: skip
    return record_of(state)


def test_a_replay_from_offset_zero_gives_the_same_record(noida_setup):
    s = noida_setup.settings
    client = noida_setup.state.client
    bootstrap = noida_setup.bootstrap
    sent = the_input()
    requests = sum(1 for kind, _, _ in sent if kind == "deletions")
    # The run: the service live while the platform sends its input in bursts.
    with service_running(noida_setup.service(), seconds=300):
        for start in range(0, len(sent), 400):
            burst = sent[start : start + 400]
            for kind, topic in (("interactions", s.topic_interactions),
                                ("deletions", s.topic_deletions)):  # fmt: skip
                produce(bootstrap, topic, [(k, v) for c, k, v in burst if c == kind])
            time.sleep(0.05)
        read_all(bootstrap, s.topic_receipts, lambda m: len(m) >= requests, timeout=240)

    def replay() -> dict:
        fresh = {"topic_receipts": unique("receipts"), "topic_factors": unique("factors"),
                 "topic_dlq": unique("dlq")}  # fmt: skip
        create_topics(bootstrap, fresh.values())
        settings = s.model_copy(
            update={"namespace": unique("replay"), "group_id": unique("group"), **fresh}
        )
        return run_over(settings, client, bootstrap, requests, noida_setup.data)

    live_state = noida_setup.state
    eventually(lambda: len(live_state.read_receipts(4)) >= requests, timeout=60,
               what="every live receipt stored")  # fmt: skip
    live = record_of(live_state)
    first = replay()
    time.sleep(2.0)  # later: a deletion without a time must not take the replay's
    second = replay()
    assert len(live["receipts"]) == requests
    assert sum(1 for r in live["receipts"].values() if r[1] > 0) > requests // 4
    # The live run and both replays: the same record.
    for replayed in (first, second):
        assert replayed["tombstones"] == live["tombstones"]
        assert replayed["interactions"] == live["interactions"]
        different = {k: (v, replayed["receipts"].get(k)) for k, v in live["receipts"].items()
                     if replayed["receipts"].get(k) != v}  # fmt: skip
        assert not different, f"{len(different)} receipts differ: {list(different.items())[:5]}"
