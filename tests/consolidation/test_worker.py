"""The forgetting cycle of one owner on real Redis (one server and a Cluster): it starts
only from forgetting, comes to rest, leaves every touched row the exact solve of its data,
and accounts the objective exactly."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.consolidation.cycle import REST, CyclePolicy
from consumer.consolidation.worker import Consolidator
from consumer.engine import Engine
from consumer.events import Deletion, Interaction, Source
from consumer.metrics import Metrics
from consumer.pipeline.observation import Observer
from consumer.state.bootstrap import export, load
from consumer.state.store import ModelState
from tests.auditor import fit, with_pair
from tests.conftest import params_for
from unlearn_core import train
from unlearn_core.loss import loss

SHARDS = 4


@pytest.fixture(params=["implicit", "explicit"])
def loaded(request, redis_client, random_data):
    kind = request.param
    _, data = random_data(n_users=60, n_items=30, density=0.3, seed=9, kind=kind)
    params = params_for(kind, factors=6, regularization=1.0)
    users, items = [f"u{n}" for n in range(60)], [f"i{n}" for n in range(30)]
    model, _ = train(data, users, items, params, 10)
    state = ModelState(redis_client, f"cycle-{kind}")
    load(state, model, data, np.full(data.nnz, 1e9), shards=SHARDS)
    return state, model, data


def generations(state: ModelState) -> dict[int, tuple[int, str | None]]:
    return state.log.read_generations(range(SHARDS))


def test_without_forgetting_there_is_no_cycle_and_nothing_is_written(loaded):
    state, _, _ = loaded
    engine = Engine(state)
    before = generations(state)
    out = engine.process([Interaction("u1", "i2", 3.0, 1.5e9, Source("interactions", 0, 0))], [])
    assert not out.forgetting and out.solved["user"]  # learning: its rows, no cycle
    consolidator = Consolidator()
    consolidator.attach(engine)
    for forgetting in out.forgetting:
        consolidator.seed(forgetting)
    assert consolidator.resting and consolidator.step().phase == REST
    # Only the batch's own commit (the user's shard, the item's) moved the generations.
    moved = {s for s, g in generations(state).items() if g != before[s]}
    assert moved <= {1 % SHARDS, 2 % SHARDS}


@pytest.mark.parametrize("quiet", [False, True])
def test_deletions_rest_with_every_touched_row_the_exact_solve_of_its_data(loaded, quiet):
    state, model, data = loaded
    engine = Engine(state)
    keys = data.entry_keys[::11][:8]
    pairs = [(int(k // data.shape[1]), int(k % data.shape[1])) for k in keys]
    weights = data.weights_of(np.array([u for u, _ in pairs]), np.array([i for _, i in pairs]))
    deletions = [
        Deletion(f"u{u}", f"i{i}", 2e9, f"r{n}", Source("deletions", 0, n))
        for n, (u, i) in enumerate(pairs)
    ]
    out = engine.process([], deletions)
    assert len(out.receipts) == len(pairs) and out.forgetting
    consolidator = Consolidator()
    consolidator.attach(engine)
    # As while events arrive (the settle rule may end the rounds), or with the input quiet.
    figures = consolidator.rest(out.forgetting, quiet=quiet)
    assert consolidator.cycle.resting
    assert figures["ended_by"] in (("rest", "max_rounds", "reach") if quiet else
                                   ("settled", "rest", "max_rounds"))  # fmt: skip
    assert consolidator.unfinished == (figures["ended_by"] == "settled")
    assert figures["forgotten"] == len(pairs) and figures["solved"] > 0
    assert figures["reach"] == figures["solved"] / len(pairs)
    _assert_touched_rows_exact(state, model, engine, pairs, weights)
    # Then the input is quiet: a cycle the settle rule ended is taken up, on to rest, its
    # rounds counted with those it ran before; the touched rows are exact solves again.
    rounds = figures["rounds"]
    figures = consolidator.rest(quiet=True)
    assert consolidator.resting and not consolidator.unfinished
    assert figures["ended_by"] in ("rest", "max_rounds", "reach")
    assert rounds <= figures["rounds"] <= consolidator.policy.max_rounds
    _assert_touched_rows_exact(state, model, engine, pairs, weights)
    # At rest: a further step does nothing, and Redis does not move.
    before = generations(state)
    assert consolidator.step().phase == REST and generations(state) == before


def test_overtime_re_solves_at_most_its_share_per_deleted_pair(loaded):
    state, model, data = loaded
    engine = Engine(state)
    keys = data.entry_keys[::13][:6]
    deletions = [
        Deletion(f"u{k // data.shape[1]}", f"i{k % data.shape[1]}", 2e9, f"r{n}",
                 Source("deletions", 0, n))
        for n, k in enumerate(keys.tolist())
    ]  # fmt: skip
    out = engine.process([], deletions)
    policy = CyclePolicy(quiet_reach=5, first_rows=16, min_rows=16, max_rows=32)
    consolidator = Consolidator(policy)
    consolidator.attach(engine)
    consolidator.rest(out.forgetting, steps=0, quiet=True)  # seeded, the input quiet
    steps = []
    while not consolidator.resting:
        steps.append(consolidator.step())
    figures = consolidator.last
    assert figures["forgotten"] == len(deletions)
    # What the slices report in overtime is what the cycle counted, and what the metric shows.
    assert sum(step.overtime for step in steps) == figures["overtime_solved"]
    metrics = Metrics()
    observer = Observer(metrics, {})
    for step in steps:
        observer.cycle_slice(step)
    shown = metrics.cycle_overtime_rows._value.get()
    assert shown == figures["overtime_solved"]
    # Past the settle rule the rounds re-solve at most 5 rows a deleted pair (the slice
    # that crosses the share finishes: at most one slice more).
    assert figures["overtime_solved"] <= 5 * len(deletions) + policy.max_rows
    if figures["overtime_solved"] >= 5 * len(deletions):
        assert figures["ended_by"] == "reach"
    if model.params.kind == "implicit":  # its rule is met before rest: overtime is tested
        assert figures["overtime_solved"] > 0
    elif figures["overtime_solved"] == 0:  # rest came first: never in overtime
        assert figures["ended_by"] in ("rest", "max_rounds")


def _assert_touched_rows_exact(state, model, engine, pairs, weights) -> None:
    exported, stored = export(state)
    # The auditor's check: each touched row is its data's exact solve (within 1e-4), and
    # clearly not the solve of the data with the deleted pair put back.
    for (u, i), w in zip(pairs, weights, strict=True):
        back = with_pair(stored, u, i, float(w), model.params.kind)
        for side, row in (("user", u), ("item", i)):
            now = fit(exported, stored, side, row)
            assert now <= 1e-4, (side, row, now)
            assert fit(exported, back, side, row) >= 10 * max(now, 1e-6), (side, row)
    # The running objective is the objective of what Redis holds.
    exact = loss(stored, exported.user_factors, exported.item_factors, model.params)
    assert engine.loss == pytest.approx(exact, rel=1e-5)


def test_rows_that_moved_less_than_the_write_tolerance_keep_their_stored_value(loaded):
    state, _, data = loaded
    engine = Engine(state)
    stored_before = {side: state.read_all_factors(side, state.meta()) for side in ("user", "item")}
    k = int(data.entry_keys[5])
    out = engine.process([], [Deletion(f"u{k // data.shape[1]}", f"i{k % data.shape[1]}",
                                       2e9, "one", Source("deletions", 0, 0))])  # fmt: skip
    written = {side: set(rows.tolist()) for side, rows in
               ((s, np.concatenate(r)) for s, r in out.solved.items())}  # fmt: skip
    consolidator = Consolidator()
    consolidator.attach(engine)
    consolidator.rest(out.forgetting)
    for side in ("user", "item"):
        now = state.read_all_factors(side, state.meta())
        before = stored_before[side]
        scale = np.maximum(np.linalg.norm(before, axis=1), 1e-30)
        moved = np.linalg.norm(now - before, axis=1) / scale
        # Every row that changed at all either was the batch's, or moved by more than the
        # write tolerance: nothing below it is written (nor published).
        changed = np.flatnonzero(moved > 0)
        small = [r for r in changed if r not in written[side] and moved[r] <= 1e-4]
        assert not small, (side, small)
        # ... and the replica agrees with Redis row for row.
        assert np.array_equal(engine.replica.factors[side][: len(now)], now)


def test_another_owners_forgetting_reaches_this_owners_rows_through_the_change_log(loaded):
    state, _, data = loaded
    first, second = Engine(state, owned=[0, 1]), Engine(state, owned=[2, 3])
    keys = [int(k) for k in data.entry_keys if (k // data.shape[1]) % SHARDS in (0, 1)][::13][:6]
    deletions = [
        Deletion(f"u{k // data.shape[1]}", f"i{k % data.shape[1]}", 2e9, f"r{n}",
                 Source("deletions", 0, n))
        for n, k in enumerate(keys)
    ]  # fmt: skip
    out = first.process([], deletions)
    assert out.forgetting
    theirs = second.drain()  # the parts asked of its shards: the items it owns
    second.refresh()
    foreign = second.take_foreign()
    moved = set(foreign.moved["user"].rows.tolist())
    assert moved and all(u % SHARDS in (0, 1) for u in moved)  # the first owner's users
    assert {tuple(p) for p in foreign.pairs.tolist()} <= {
        (k // data.shape[1], k % data.shape[1]) for k in keys
    }
    before = generations(state)
    consolidator = Consolidator()
    consolidator.attach(second)
    figures = consolidator.rest([*theirs.forgetting, foreign])
    assert figures["solved"] > 0 and figures["written"] > 0 and consolidator.cycle.resting
    # It re-solved and wrote only its own rows: the first owner's shards did not move.
    after = generations(state)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2] != before[2] or after[3] != before[3]
