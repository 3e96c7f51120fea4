"""A receipt that tells the truth, through Kafka and Redis: the inputs and operations that
made a receipt lie or a request vanish, each tried on real servers."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np

from consumer.state.layout import ROW_DTYPE
from tests.service.conftest import Setup, service_running
from tests.service.kafka_helpers import (
    event,
    eventually,
    produce,
    read_all,
    receipts_of,
    recreate_topic,
)

YEAR = 365 * 86400


def now_ms() -> int:
    return int(time.time() * 1000)


def row(setup: Setup, side: str, name: str) -> np.ndarray:
    index = int(setup.state.lookup(side, [name])[0])
    if index < 0:
        return np.empty(0, dtype=ROW_DTYPE)
    return setup.state.read_rows(side, np.array([index]), 4)[0]


def stored_pair(setup: Setup, n: int) -> tuple[str, str]:
    key = int(setup.data.entry_keys[n])
    return f"u{key // setup.data.shape[1]}", f"i{key % setup.data.shape[1]}"


def dead_letters(setup: Setup, count: int) -> list:
    return read_all(setup.bootstrap, setup.settings.topic_dlq, lambda m: len(m) >= count)


def reasons(messages: list) -> list[str]:
    return sorted(dict(m.headers())["unlearn.reason"].decode() for m in messages)


def test_a_time_in_milliseconds_or_ahead_cannot_hide_an_interaction_from_a_deletion(setup, running):
    s = setup.settings
    produce(
        setup.bootstrap,
        s.topic_interactions,
        [
            ("ms", event(user="ms", item="i1", ts=now_ms())),  # a producer writing ms
            ("ms", event(user="ms", item="i2", ts=time.time() + YEAR)),  # a clock a year ahead
        ],
    )
    eventually(lambda: len(row(setup, "user", "ms")) == 2, what="both interactions learned")
    assert row(setup, "user", "ms")["ts"].max() <= time.time()  # never later than arrival
    produce(setup.bootstrap, s.topic_deletions, [("ms", event(user="ms", request_id="all"))])
    [receipt] = receipts_of(setup.bootstrap, s.topic_receipts, 1)
    assert (receipt["removed"], receipt["kept_newer"]) == (2, 0)
    assert receipt["ts_adjusted"] == "missing"  # no ts: "now", and the receipt says so
    assert len(row(setup, "user", "ms")) == 0


def test_a_deletion_stamped_ahead_never_suppresses_what_comes_after_it(setup, running):
    s = setup.settings
    produce(
        setup.bootstrap,
        s.topic_deletions,
        [
            ("a", event(user="a", ts=now_ms(), request_id="in-ms")),
            ("b", event(user="b", ts=1e300, request_id="far")),
            # no ts of its own, and a Kafka timestamp five years ahead
            ("c", event(user="c", request_id="kafka-ahead"), now_ms() + 5 * YEAR * 1000),
        ],
    )
    receipts = receipts_of(setup.bootstrap, s.topic_receipts, 3)
    for receipt in receipts:
        assert receipt["event_ts"] <= receipt["received_at"] < receipt["applied_at"]
        assert receipt["latency_seconds"] > 0  # measured, not clamped
    # Users the model had never seen: their tombstones are kept by id.
    tombstones = [setup.state.read_unseen()[("user", u, None)] for u in ("a", "b", "c")]
    assert max(tombstones) <= time.time()
    later = time.time()
    produce(
        setup.bootstrap,
        s.topic_interactions,
        [(u, event(user=u, item="i3", ts=later)) for u in ("a", "b", "c")],
    )
    for user in ("a", "b", "c"):
        eventually(lambda user=user: len(row(setup, "user", user)) == 1, what=f"{user} learned")


def test_poison_messages_are_dead_lettered_and_everything_else_applied(setup, running):
    s = setup.settings
    user, item = stored_pair(setup, 0)
    produce(
        setup.bootstrap,
        s.topic_deletions,
        [
            ("u1", b'{"user": "u1", "request_id": "\\ud800"}'),  # not encodable
            (user, event(user=user, item=item, request_id="ok")),
        ],
    )
    produce(
        setup.bootstrap,
        s.topic_interactions,
        [
            ("p", event(user="p", item="i1", weight=1e39)),  # beyond float32
            ("q", event(user="q", item="i2", weight=3e38)),  # each fits float32 ...
            ("q", event(user="q", item="i2", weight=3e38)),  # ... their sum does not
            ("fine", event(user="fine", item="i4", weight=2.0)),
        ],
    )
    dead = dead_letters(setup, 4)
    assert reasons(dead) == ["bad_request_id", "bad_weight", "unprocessable", "unprocessable"]
    [receipt] = receipts_of(setup.bootstrap, s.topic_receipts, 1)
    assert receipt["request_id"] == "ok" and receipt["removed"] == 1
    eventually(lambda: len(row(setup, "user", "fine")) == 1, what="the valid interaction")
    assert len(row(setup, "user", "q")) == 0 and len(row(setup, "user", "p")) == 0
    # Still up: the next request is acknowledged too.
    produce(setup.bootstrap, s.topic_deletions, [("fine", event(user="fine", request_id="after"))])
    receipts = receipts_of(setup.bootstrap, s.topic_receipts, 2)
    assert receipts[-1]["request_id"] == "after" and running.stats.batches > 0


def test_a_message_that_fails_only_in_processing_is_found_and_dead_lettered_alone(
    setup, monkeypatch
):
    """Whatever fails in a batch because of one message (here: the solve of one item,
    as a solve that overflows would) is isolated by splitting the batch."""
    import consumer.shards.batch as batch_module
    from unlearn_core.solve import SingularSystemError

    real = batch_module.solve_rows
    poisoned = int(setup.state.allocate("item", ["poisoned"])[0])

    def solve(matrix, rows, other, params, gramian, num_threads=1):
        column = matrix[:, [poisoned]] if matrix.shape[1] > poisoned else None
        if column is not None and (column.toarray() == 7.0).any():
            raise SingularSystemError("the normal equations are not positive definite")
        return real(matrix, rows, other, params, gramian, num_threads=num_threads)

    monkeypatch.setattr(batch_module, "solve_rows", solve)
    s = setup.settings
    events = [(f"v{n}", event(user=f"v{n}", item="i1", weight=1.0)) for n in range(9)]
    events.insert(5, ("bad", event(user="bad", item="poisoned", weight=7.0)))
    produce(setup.bootstrap, s.topic_interactions, events)
    with service_running(setup.service()) as service:
        dead = dead_letters(setup, 1)
        assert reasons(dead) == ["unprocessable"]
        assert json.loads(dead[0].value())["user"] == "bad"
        for n in range(9):
            eventually(lambda n=n: len(row(setup, "user", f"v{n}")) == 1, what=f"v{n}")
        assert service.metrics.dead_lettered.labels("unprocessable")._value.get() == 1


def test_a_recreated_deletions_topic_is_a_new_life_not_a_replay(noida_setup):
    setup = noida_setup
    s = setup.settings
    pairs = [stored_pair(setup, n) for n in range(0, 60, 3)]
    first, second, third = pairs[:6], pairs[6:12], pairs[12:18]

    def delete(batch: list[tuple[str, str]], tag: str) -> None:
        messages = [(u, event(user=u, item=i, request_id=f"{tag}-{u}-{i}")) for u, i in batch]
        produce(setup.bootstrap, s.topic_deletions, messages)

    def recreate() -> None:
        recreate_topic(setup.bootstrap, s.topic_deletions)

    def all_receipts(count: int) -> list[dict]:
        return receipts_of(setup.bootstrap, s.topic_receipts, count)

    with service_running(setup.service()):
        delete(first, "first")
        all_receipts(len(first))
        recreate()  # under the running service: its offsets start over
        delete(second, "second")
        receipts = all_receipts(len(first) + len(second))
    recreate()  # while no service runs
    delete(third, "third")
    with service_running(setup.service()):
        receipts = all_receipts(len(pairs[:18]))
    fresh = [r for r in receipts if not r["resent"]]
    assert sorted(r["request_id"] for r in fresh) == sorted(
        f"{tag}-{u}-{i}" for tag, batch in (("first", first), ("second", second),
                                            ("third", third)) for u, i in batch
    )  # fmt: skip
    assert all(r["removed"] == 1 for r in fresh)
    assert len({r["source"] for r in fresh}) == len(fresh)  # no receipt took another's key
    audit = setup.state.read_receipts(4)
    assert len(audit) == len(fresh)
    for u, i in pairs[:18]:
        assert i not in [f"i{o}" for o in row(setup, "user", u)["other"]]


def test_a_topic_recreated_under_a_running_service_loses_no_request_of_its_new_life(
    noida_setup,
):
    """A new life that outgrows the consumer's position before it is read: no offset runs
    backwards, the consumer would read on from its old position and never see the new
    life's first messages. The topic's changed id shows it; the new life is read from its
    start."""
    from confluent_kafka import Producer

    setup = noida_setup
    s = setup.settings
    pairs = [stored_pair(setup, n) for n in range(0, 150, 3)]
    old_life, new_life = pairs[:6], pairs[6:46]

    def send(batch: list[tuple[str, str]], tag: str) -> None:
        producer = Producer({"bootstrap.servers": setup.bootstrap})
        for n, (u, i) in enumerate(batch):  # spread evenly: every partition outgrows
            value = event(user=u, item=i, request_id=f"{tag}-{u}-{i}")
            producer.produce(s.topic_deletions, value=value, key=u, partition=n % 2)
        assert producer.flush(30) == 0

    with service_running(setup.service()):
        send(old_life, "old")
        receipts_of(setup.bootstrap, s.topic_receipts, len(old_life))
        recreate_topic(setup.bootstrap, s.topic_deletions)
        send(new_life, "new")
        wanted = {f"new-{u}-{i}" for u, i in new_life}

        def answered_in_new_life() -> set[str]:
            receipts = read_all(setup.bootstrap, s.topic_receipts, lambda m: False, timeout=2)
            found = [json.loads(m.value()) for m in receipts]
            return {r["request_id"] for r in found if "#" in r["source"]} & wanted

        eventually(lambda: answered_in_new_life() == wanted, timeout=60,
                   what="every request of the new life answered in it")  # fmt: skip
    everything = read_all(setup.bootstrap, s.topic_receipts, lambda m: False, timeout=3)
    receipts = [json.loads(m.value()) for m in everything]
    read_early = {r["request_id"] for r in receipts if r["request_id"] in wanted
                  and "#" not in r["source"]}  # fmt: skip
    in_new_life = [r for r in receipts if "#" in r["source"]]
    # What was read under the old life's name before the new life showed is answered
    # again in it, and says so; nothing else does.
    assert {r["request_id"] for r in in_new_life if r["reapplied"]} == read_early
    for u, i in new_life:
        assert i not in [f"i{o}" for o in row(setup, "user", u)["other"]]


def test_garbage_on_interactions_never_holds_deletions_back(setup):
    s = setup.settings.model_copy(
        update={"dlq_window": 20, "dlq_min_messages": 10, "dlq_max_ratio": 0.5,
                "dlq_pause_s": 120.0, "batch_max_events": 10}
    )  # fmt: skip
    setup.settings = s
    with service_running(setup.service()) as service:
        garbage = [(None, b"garbage %d" % n) for n in range(200)]
        produce(setup.bootstrap, s.topic_interactions, garbage)
        paused = service.metrics.dlq_paused
        eventually(lambda: paused.labels("interactions")._value.get() >= 1, what="a pause")
        pairs = [stored_pair(setup, n) for n in range(0, 30, 3)]
        produce(
            setup.bootstrap,
            s.topic_deletions,
            [(u, event(user=u, item=i, request_id=f"{u}-{i}")) for u, i in pairs],
        )
        receipts = receipts_of(setup.bootstrap, s.topic_receipts, len(pairs), timeout=30)
        assert len(receipts) == len(pairs)
        assert paused.labels("interactions")._value.get() >= 1  # still paused meanwhile
        assert paused.labels("deletions")._value.get() == 0
        _, why = service.health.ready()
        assert "paused" in why and "dead-letter surge" in why


def test_harmless_forms_are_applied_and_an_explicit_null_is_never_widened(setup, running):
    s = setup.settings
    (u0, i0), (u1, i1), (u2, i2) = (stored_pair(setup, n) for n in (0, 7, 14))
    _, wide_item = stored_pair(setup, 21)
    wide_user, _ = stored_pair(setup, 28)
    iso_now = datetime.now(UTC).isoformat()
    item_users, user_items = len(row(setup, "item", wide_item)), len(row(setup, "user", wide_user))
    produce(
        setup.bootstrap,
        s.topic_deletions,
        [
            (u0, json.dumps({"user": u0, "item": i0, "request_id": 17}).encode()),
            (u1, json.dumps({"user": u1, "item": i1, "ts": iso_now}).encode()),
            (u2, json.dumps({"user": u2, "item": i2, "ts": None}).encode()),
            ("x", json.dumps({"user": None, "item": wide_item}).encode()),
            ("y", json.dumps({"user": wide_user, "item": None}).encode()),
        ],
    )
    receipts = receipts_of(setup.bootstrap, s.topic_receipts, 3)
    assert [r["removed"] for r in receipts] == [1, 1, 1]
    by_pair = {(r["user"], r["item"]): r for r in receipts}
    assert by_pair[(u0, i0)]["request_id"] == "17"
    assert by_pair[(u1, i1)]["ts_adjusted"] is None  # ISO-8601, read as written
    assert by_pair[(u2, i2)]["ts_adjusted"] == "missing"
    assert reasons(dead_letters(setup, 2)) == ["null_id", "null_id"]
    assert len(row(setup, "item", wide_item)) == item_users  # not "everyone's item"
    assert len(row(setup, "user", wide_user)) == user_items  # not "the whole user"


def test_time_adjustments_are_counted(setup, running):
    s = setup.settings
    produce(setup.bootstrap, s.topic_interactions, [("t", event(user="t", item="i1", ts=now_ms()))])
    eventually(lambda: len(row(setup, "user", "t")) == 1)
    counted = running.metrics.time_adjusted.labels("interactions", "milliseconds")
    assert counted._value.get() == 1
