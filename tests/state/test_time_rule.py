"""The time rule against real Redis, over generated timestamps and arrival orders.

Producers write times in seconds, milliseconds, microseconds, ISO-8601, negative, far in
the future, or not at all; events arrive in any order and batch. Whatever they write:

1. after any deletion's receipt, no stored interaction of its scope has a time at or
   before the deletion's effective time (each event carries its own power of two as its
   weight, so a stored sum tells exactly which events it holds);
2. every interaction that happened after a deletion of its scope was processed is learned
   (no deletion suppresses what comes after it).
"""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source, parse_deletion, parse_interaction
from consumer.state.bootstrap import load
from consumer.state.store import ModelState
from tests.conftest import params_for
from unlearn_core import FactorModel, Interactions

START = 1_790_000_000.0
USERS, ITEMS = ("u0", "u1"), ("i0", "i1")
FORMATS = ("seconds", "milliseconds", "microseconds", "iso", "negative", "future", "missing")


def written(true_time: float, form: str) -> dict:
    """The "ts" field a producer of this kind writes for an event at `true_time`."""
    if form == "seconds":
        return {"ts": true_time}
    if form == "milliseconds":
        return {"ts": int(true_time * 1000)}
    if form == "microseconds":
        return {"ts": int(true_time * 1_000_000)}
    if form == "iso":
        return {"ts": datetime.fromtimestamp(true_time, UTC).isoformat()}
    if form == "negative":
        return {"ts": -true_time}
    if form == "future":
        return {"ts": true_time + 10 * 365 * 86400}
    return {}


steps = st.lists(
    st.tuples(
        st.sampled_from(["interaction", "interaction", "deletion"]),
        st.sampled_from(USERS),
        st.sampled_from((*ITEMS, None)),  # None: a deletion of the user's whole history
        st.sampled_from(FORMATS),
        st.floats(0.001, 30.0),  # time since the previous arrival
        st.floats(0.0, 60.0),  # how long before its arrival the event happened (late)
        st.booleans(),  # ends a batch
    ),
    min_size=1,
    max_size=24,  # each pair's events weigh 1, 2, 4, ...: their sums stay exact in float32
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=steps)
@example(  # one pair's events on both sides of a deletion's time
    plan=[
        ("interaction", "u0", "i1", "seconds", 1.0, 50.0, False),
        ("interaction", "u0", "i1", "milliseconds", 1.0, 0.0, True),
        ("deletion", "u0", "i1", "seconds", 1.0, 26.0, True),
    ]
)
def test_no_timestamp_defeats_the_rule(redis_client, plan):
    state = ModelState(redis_client, f"rule-{uuid.uuid4().hex[:8]}")
    data = Interactions.from_triples([0, 1], [0, 1], [1.0, 1.0], (2, 2), "implicit")
    params = params_for("implicit", factors=2)
    model = FactorModel.create(list(USERS), list(ITEMS), np.full((2, 2), 0.1, np.float32),
                               np.full((2, 2), 0.1, np.float32), params)  # fmt: skip
    load(state, model, data, np.full(2, START - 86400), shards=2)
    clock = [START]
    engine = Engine(state, clock=lambda: clock[0])
    offsets = itertools.count()
    arrival = START
    batch: list[tuple[Interaction | Deletion, float]] = []
    processed: dict[str, list[tuple[str | None, float]]] = {u: [] for u in USERS}
    # pair -> weight bit -> the event's time; the loaded pairs weigh 1 (bit 0)
    times: dict[tuple[str, str], dict[int, float]] = {
        (USERS[0], ITEMS[0]): {0: START - 86400},
        (USERS[1], ITEMS[1]): {0: START - 86400},
    }
    for kind, user, item, form, gap, late, ends in plan:
        arrival += gap
        happened = arrival - late
        source = Source(kind, 0, next(offsets))
        if kind == "interaction":
            pair = (user, item or ITEMS[0])
            bit = len(times.setdefault(pair, {}))
            value = {"user": pair[0], "item": pair[1], "weight": 2.0**bit,
                     **written(happened, form)}  # fmt: skip
            event = parse_interaction(
                json.dumps(value).encode(), source, happened, received=arrival
            )
            assert isinstance(event, Interaction), event
            times[pair][bit] = event.ts
        else:
            value = {"user": user, **({"item": item} if item else {}), **written(happened, form)}
            event = parse_deletion(json.dumps(value).encode(), source, None, received=arrival)
        assert isinstance(event, Interaction | Deletion), event
        assert event.ts <= arrival  # never later than its arrival
        batch.append((event, happened))
        if ends:
            clock[0] = arrival + 0.001
            check_batch(state, engine, batch, processed, times, clock[0])
            batch = []
    if batch:
        clock[0] = arrival + 0.001
        check_batch(state, engine, batch, processed, times, clock[0])


def check_batch(state, engine, batch, processed, times, moment) -> None:
    interactions = [e for e, _ in batch if isinstance(e, Interaction)]
    deletions = [e for e, _ in batch if isinstance(e, Deletion)]
    out = engine.process(interactions, deletions)
    rows = stored_rows(state)
    for receipt in out.receipts:
        for (user, item), weight in rows.items():
            if user != receipt.user or receipt.item not in (None, item):
                continue
            held = [times[(user, item)][b] for b in range(32) if int(weight) >> b & 1]
            assert all(t > receipt.event_ts for t in held), (receipt, held)
        assert receipt.event_ts <= moment and receipt.latency_seconds > 0
    for event, happened in batch:
        if not isinstance(event, Interaction):
            continue
        earlier = processed[event.user]
        # It happened after every deletion of its scope was processed, and none of this
        # batch covers it: it is learned.
        same_batch = any(d.user == event.user and d.item in (None, event.item) for d in deletions)
        if not same_batch and all(
            happened > at for item, at in earlier if item in (None, event.item)
        ):
            assert (event.user, event.item) in rows, (event, happened, earlier)
    for deletion in deletions:
        processed[deletion.user].append((deletion.item, moment))


def stored_rows(state) -> dict[tuple[str, str], float]:
    """(user, item) -> stored weight."""
    meta = state.meta()
    out = {}
    for index, row in state.read_all_rows("user", meta).items():
        user = state.ids_of("user", [index])[0]
        for other, weight in zip(row["other"].tolist(), row["weight"].tolist(), strict=True):
            out[(user, state.ids_of("item", [other])[0])] = weight
    return out
