"""The commit order (pipeline/checkpoint.py), held by the whole service and tested at each
of its failure points: `unlearn run` against the in-memory broker (brokers/local.py) and a
real redis-server (and a Cluster), killed between two steps of a batch, then restarted.

At the kill point each step before it must have happened, none after it:
- between the effect and its factors (the first factor record a deletion's batch hands
  the producer): the deletion is durable in Redis, no receipt and no offset has left;
- between the factors and the receipts (the first receipt handed the producer): the
  factors topic holds the rows the receipt names at the generations it names, and no
  offset past the request was committed;
- between the receipts and the offsets (the first offset commit): every request below
  the committed offsets has its receipt on the receipts topic.
After a restart on the same broker and Redis, every request has its receipts (each with
the same `removed`, one of them not a re-send), nothing was removed twice, the offsets
reach the end of the input and the factors topic shows every row as Redis holds it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import redis

from consumer.application import Application
from consumer.brokers.local import LocalBroker, Operation, Process
from consumer.engine import Engine
from consumer.serving.records import FactorRecord, parse_key
from consumer.settings import Settings, load_settings
from consumer.shards.messages import Routed, decode
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import params_for
from tests.service.kafka_helpers import TOPIC_KINDS, event, unique
from unlearn_core import Interactions, train

USERS, ITEMS, SHARDS, K = 40, 25, 4, 4
DELETIONS = 16


@dataclass
class World:
    broker: LocalBroker
    settings: Settings
    client: redis.Redis
    data: Interactions
    pairs: list[tuple[int, int]] = field(default_factory=list)  # the deleted pairs

    def state(self) -> ModelState:
        return ModelState(self.client, self.settings.namespace)

    def service(self, process: Process) -> Application:
        return Application(self.settings, Engine(self.state()), clients=process)

    def request_ids(self) -> list[str]:
        return [f"r-{u}-{i}" for u, i in self.pairs]

    def receipts(self) -> list[dict]:
        return [json.loads(m.value()) for m in self.broker.records(self.settings.topic_receipts)]

    def factor_records(self) -> list[FactorRecord]:
        out = []
        for m in self.broker.records(self.settings.topic_factors):
            if m.value() is not None:
                out.append(FactorRecord.from_json(m.value()))
        return out

    def input_ends(self) -> dict[tuple[str, int], int]:
        out = {}
        for topic in (self.settings.topic_deletions, self.settings.topic_interactions):
            for m in self.broker.records(topic):
                out[(topic, m.partition())] = m.offset() + 1
        return out

    def committed(self) -> dict[tuple[str, int], int]:
        return self.broker.committed(self.settings.group_id)

    def stored_items(self, user: int) -> set[int]:
        return set(self.state().read_rows("user", np.array([user]), SHARDS)[0]["other"].tolist())


@pytest.fixture
def world(redis_client: redis.Redis, random_data) -> World:
    broker = LocalBroker()
    names = {kind: unique(kind) for kind in TOPIC_KINDS}
    for name in names.values():
        broker.create_topic(name, 2)
    # A slow broker: what must wait for an acknowledgement (a receipt for its factors, a
    # batch's offsets for its records) waits, or the kill points below find it missing.
    broker.delay(names["factors"], 0.1)
    broker.delay(names["receipts"], 0.05)
    broker.delay(names["dlq"], 0.05)
    settings = load_settings(
        None,
        kafka_bootstrap_servers="in-memory",
        namespace=unique("order"),
        group_id=unique("group"),
        batch_max_ms=20,
        batch_max_events=4,  # several batches, so a kill falls between two of them
        **{f"topic_{kind}": name for kind, name in names.items()},
    )
    _, data = random_data(n_users=USERS, n_items=ITEMS, density=0.3, seed=5)
    model, _ = train(data, [f"u{n}" for n in range(USERS)], [f"i{n}" for n in range(ITEMS)],
                     params_for("implicit"), 10)  # fmt: skip
    load(ModelState(redis_client, settings.namespace), model, data, np.full(data.nnz, 1e9),
         shards=SHARDS)  # fmt: skip
    return World(broker, settings, redis_client, data)


class Running:
    """`unlearn run` in a thread; a kill ends it with `Killed`, kept in `ended`."""

    def __init__(self, service: Application) -> None:
        self.service = service
        self.ended: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(max_seconds=120)
        except BaseException as exc:  # a kill is what these tests cause
            self.ended = exc

    def stop(self) -> None:
        self.service.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def wait_for(check: Callable[[], object], what: str, running: Running, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not running.thread.is_alive() and running.ended is not None and what != "killed":
            raise AssertionError(f"the service ended ({running.ended!r}) before: {what}")
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)


def start(world: World) -> tuple[Running, Process]:
    """A service on the loaded namespace, once it has published the model it took."""
    process = world.broker.process()
    running = Running(world.service(process))
    rows = USERS + ITEMS
    wait_for(lambda: len(world.broker.records(world.settings.topic_factors)) >= rows,
             "the loaded model on the factors topic", running)  # fmt: skip
    return running, process


def send_deletions(world: World) -> None:
    keys = world.data.entry_keys[: DELETIONS * 3 : 3].astype(np.int64)
    world.pairs = [(int(k) // ITEMS, int(k) % ITEMS) for k in keys]
    producer = world.broker.process().producer({})
    for u, i in world.pairs:
        body = event(user=f"u{u}", item=f"i{i}", ts=2e9, request_id=f"r-{u}-{i}")
        producer.produce(world.settings.topic_deletions, key=f"u{u}", value=body)
    assert producer.flush() == 0


def answered(world: World) -> bool:
    ids = {r["request_id"] for r in world.receipts()}
    committed = world.committed()
    ends = world.input_ends()
    caught_up = all(committed.get(p, 0) >= o for p, o in ends.items())
    return ids >= set(world.request_ids()) and caught_up


def snapshot(world: World, operation: Operation) -> dict:
    """What the broker and Redis hold at the kill point (read from the killed thread)."""
    return {
        "operation": operation,
        "receipts": world.receipts(),
        "committed": world.committed(),
        "factors": world.factor_records(),
        "removed": [p for p in world.pairs if p[1] not in world.stored_items(p[0])],
        "unsent": {  # the receipts stored and not yet known to be acknowledged
            json.loads(text)["request_id"]
            for shard in range(SHARDS)
            for text in world.state().read_unsent(shard)
        },
        "inboxes": inbox_sources(world),
    }


def inbox_sources(world: World) -> set[str]:
    """The input messages waiting in the shards' inboxes ("topic:partition:offset")."""
    out = set()
    for shard in range(SHARDS):
        for _, entry in world.client.xrange(world.state().layout.shard(shard).inbox):
            for message in decode(entry[b"m"]):
                if isinstance(message, Routed):
                    s = message.event.source
                    out.add(f"{s.topic}:{s.partition}:{s.offset}")
    return out


def deletions_below(world: World, offsets) -> list[tuple[str, tuple[int, int]]]:
    """(source, pair) of the deletions below these offsets of the deletions topic."""
    below = {(t, p): o for t, p, o in offsets if t == world.settings.topic_deletions}
    out = []
    for m in world.broker.records(world.settings.topic_deletions):
        if m.offset() < below.get((m.topic(), m.partition()), 0):
            body = json.loads(m.value())
            pair = (int(body["user"][1:]), int(body["item"][1:]))
            out.append((f"{m.topic()}:{m.partition()}:{m.offset()}", pair))
    return out


def effect_before_factors(world: World, seen: dict) -> None:
    assert seen["removed"], "a factor record left before its deletion was durable"
    assert seen["receipts"] == [], "a receipt left before its factors"


def factors_before_receipts(world: World, seen: dict) -> None:
    receipt = json.loads(seen["operation"].value)
    assert receipt["removed"] == 1
    checked = 0
    for part in receipt["parts"]:
        kind, shard = part["part"].rsplit("@", 1)
        if kind not in ("user", "items"):
            continue
        side, row = ("user", receipt["user"]) if kind == "user" else ("item", receipt["item"])
        checked += 1
        assert any(
            r.side == side
            and r.id == row
            and r.shard == int(shard)
            and r.generation >= part["generation"]
            for r in seen["factors"]
        ), f"receipt {receipt['request_id']} left before {side} {row} at {part}"
    assert checked == 2


def receipts_before_sent(world: World, seen: dict) -> None:
    """A receipt on the topic that its process never saw acknowledged: still in its shard's
    unsent set, so the next owner sends it again (a re-send, not a second effect)."""
    receipt = json.loads(seen["operation"].value)
    assert receipt["request_id"] in {r["request_id"] for r in seen["receipts"]}
    assert receipt["request_id"] in seen["unsent"]


def inbox_before_offsets(world: World, seen: dict) -> None:
    """Offsets move past a request only once it is durable in the state: applied (its pair
    gone) or waiting in its shard's inbox."""
    below = deletions_below(world, seen["operation"].offsets)
    assert below, "the commit covered no deletion"
    for source, pair in below:
        durable = pair in seen["removed"] or source in seen["inboxes"]
        assert durable, f"offsets committed past {source}, which the state does not hold"


POINTS: dict[str, tuple[Callable[[World, Operation], bool], Callable[[World, dict], None]]] = {
    "effect|factors": (
        lambda w, op: op.kind == "produce" and op.topic == w.settings.topic_factors,
        effect_before_factors,
    ),
    "factors|receipts": (
        lambda w, op: op.kind == "produce" and op.topic == w.settings.topic_receipts,
        factors_before_receipts,
    ),
    "receipts|sent": (
        lambda w, op: op.kind == "delivered" and op.topic == w.settings.topic_receipts,
        receipts_before_sent,
    ),
    "inbox|offsets": (
        lambda w, op: op.kind == "commit" and op.group == w.settings.group_id
        and any(t == w.settings.topic_deletions and o > 0 for t, _, o in op.offsets),
        inbox_before_offsets,
    ),
}  # fmt: skip


def check_the_end(world: World) -> None:
    """Every request answered, with one truth; nothing removed twice; offsets at the end
    of the input; the factors topic shows every row as Redis holds it."""
    by_request: dict[str, list[dict]] = defaultdict(list)
    for receipt in world.receipts():
        by_request[receipt["request_id"]].append(receipt)
    assert sorted(by_request) == sorted(world.request_ids())
    for request, receipts in by_request.items():
        assert {r["removed"] for r in receipts} == {1}, request
        assert len({r["event_ts"] for r in receipts}) == 1, request
        assert sum(not r["resent"] for r in receipts) <= 1, request
    for user, item in world.pairs:
        assert item not in world.stored_items(user)
    stored = sum(len(r["other"]) for r in
                 world.state().read_rows("user", np.arange(USERS), SHARDS))  # fmt: skip
    assert stored == world.data.nnz - len(set(world.pairs))
    committed, ends = world.committed(), world.input_ends()
    assert all(committed.get(p, 0) == o for p, o in ends.items())
    latest: dict[tuple[str, str], np.ndarray] = {}
    for m in world.broker.records(world.settings.topic_factors):
        side, row = parse_key(m.key())
        value = m.value()
        latest[(side, row)] = (
            FactorRecord.from_json(value).factor if value is not None else np.zeros(K, np.float32)
        )
    state = world.state()
    for side, count in (("user", USERS), ("item", ITEMS)):
        factors = state.read_factors(side, np.arange(count), SHARDS, K)
        shown = np.stack([latest[(side, f"{side[0]}{n}")] for n in range(count)])
        np.testing.assert_array_equal(shown, factors.astype(np.float32))


def test_without_a_kill_every_request_is_answered_once(world: World):
    running, _ = start(world)
    send_deletions(world)
    wait_for(lambda: answered(world), "every request answered and committed", running)
    running.stop()
    assert running.ended is None
    assert all(not r["resent"] for r in world.receipts())
    assert len(world.receipts()) == DELETIONS
    check_the_end(world)


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_kill_between_two_steps_finds_the_steps_before_it_done(world: World, point: str):
    trap, check = POINTS[point]
    running, process = start(world)
    seen: dict = {}

    def at(operation: Operation) -> bool:
        if seen or not trap(world, operation):
            return False
        seen.update(snapshot(world, operation))
        return True

    process.kill_when(at)
    send_deletions(world)
    wait_for(lambda: not running.thread.is_alive(), "killed", running)
    assert process.killed_at is not None, f"no kill: {running.ended!r}"
    check(world, seen)

    again = Running(world.service(world.broker.process()))
    wait_for(lambda: answered(world), "every request answered after the restart", again)
    again.stop()
    assert again.ended is None
    check_the_end(world)
