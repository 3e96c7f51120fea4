"""Unlearn-ALS on small data: what it removes, what it reports, what it must refuse."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.conftest import params_for
from unlearn_core import (
    Change,
    FactorModel,
    NonFiniteFactorsError,
    SweepPolicy,
    fold_in,
    forget,
    loss,
    train,
    update,
)
from unlearn_core.convergence import TopNSample, top_n_change
from unlearn_core.interactions import Interactions
from unlearn_core.unlearn import (
    DEFAULT_SETTLE_RATIO,
    SETTLE_MIN_SWEEPS,
    reseed_collapsed_directions,
)

# Sweep to the float32 floor: residuals settle near 1e-6 on these tiny problems.
EXACT = SweepPolicy(
    solver="cholesky", tolerance=0.0, rank_tolerance=None, settle_ratio=None, max_sweeps=300
)
FOUR_SWEEPS = SweepPolicy(max_sweeps=4, tolerance=0, rank_tolerance=None, settle_ratio=None)


def trained(random_data, kind="implicit", seed=0, **kw):
    _, data = random_data(kind=kind, seed=seed, **kw)
    params = params_for(kind, factors=4, regularization=2.0)
    ids_u = [f"u{n}" for n in range(data.shape[0])]
    ids_i = [f"i{n}" for n in range(data.shape[1])]
    model, _ = train(data, ids_u, ids_i, params, iterations=200, solver="cholesky")
    return model, data


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_forget_reaches_the_retraining_objective(random_data, kind):
    model, data = trained(random_data, kind)
    change = Change.deletions(pair_users=[0, 1, 2], pair_items=[0, 1, 2], users=[7])
    forgotten, remaining, report = forget(model, data, change, EXACT)
    params = model.params
    unlearned_loss = loss(remaining, forgotten.user_factors, forgotten.item_factors, params)
    # ALS is not convex: retraining from different seeds can settle in different minima.
    # The unlearned model must land where retraining lands, not merely lower its own loss.
    retrained_losses = []
    for seed in range(4):
        retrained, _ = train(
            remaining, model.user_ids, model.item_ids, params, 300, seed=seed, solver="cholesky"
        )
        retrained_losses.append(
            loss(remaining, retrained.user_factors, retrained.item_factors, params)
        )
    assert min(retrained_losses) * (1 - 1e-4) <= unlearned_loss
    assert unlearned_loss <= max(retrained_losses) * (1 + 1e-4)
    assert report.removed == data.nnz - remaining.nnz > 0


def test_a_user_left_without_data_gets_a_zero_factor(random_data):
    model, data = trained(random_data, "implicit")
    forgotten, remaining, _ = forget(model, data, Change.deletions(users=[3]), SweepPolicy())
    assert remaining.row_counts()[3] == 0
    assert np.all(forgotten.user_factors[3] == 0)
    assert np.all(forgotten.scores(np.full(20, 3), np.arange(20)) == 0)


def test_deleting_nothing_changes_nothing(random_data):
    model, data = trained(random_data)
    unchanged, same_data, report = forget(
        model,
        data,
        Change.deletions(pair_users=[0], pair_items=[0])
        if data.weights_of([0], [0])[0] == 0
        else Change(),
        SweepPolicy(),
    )
    assert unchanged is model
    assert report.removed == 0 and report.sweeps == 0
    assert np.array_equal(same_data.by_user.toarray(), data.by_user.toarray())


def test_report_records_each_step(random_data):
    model, data = trained(random_data, seed=1)
    _, _, report = forget(model, data, Change.deletions(users=[0, 1]), FOUR_SWEEPS)
    phases = [(r.phase, r.index) for r in report.records]
    assert phases == [("touched", 0), ("sweep", 1), ("sweep", 2), ("sweep", 3), ("sweep", 4)]
    assert report.records[0].users_solved == 2
    assert all(r.users_solved == data.shape[0] for r in report.records[1:])
    losses = [report.initial_loss] + [r.loss for r in report.records]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(losses))
    assert not report.converged
    by_scores = SweepPolicy(tolerance=1e-2, rank_tolerance=None, settle_ratio=None)
    _, _, loose = forget(model, data, Change.deletions(users=[0, 1]), by_scores)
    assert loose.converged and loose.final_residual <= 1e-2


def test_fold_in_learns_new_users_and_items(random_data):
    model, data = trained(random_data)
    grown = model.with_ids(["new-user"], ["new-item"])
    n_users, n_items = grown.shape
    additions = Change.additions([n_users - 1] * 3, [0, 1, n_items - 1], [5.0, 5.0, 5.0])
    learned, after, report = fold_in(grown, data, additions, EXACT)
    assert report.added == 3
    assert after.shape == (n_users, n_items)
    assert np.any(learned.user_factors[-1] != 0) and np.any(learned.item_factors[-1] != 0)
    assert learned.scores([n_users - 1], [0])[0] > 0.5


def test_forget_and_fold_in_refuse_the_other_direction(random_data):
    model, data = trained(random_data)
    with pytest.raises(ValueError):
        forget(model, data, Change.additions([0], [0], [1.0]))
    with pytest.raises(ValueError):
        fold_in(model, data, Change.deletions(users=[0]))
    with pytest.raises(ValueError, match="does not have"):
        update(model, data, Change.deletions(users=[10_000]))


def test_nan_factors_are_refused(random_data):
    model, _ = trained(random_data)
    bad_items = model.item_factors.copy()
    bad_items[0, 0] = np.nan
    with pytest.raises(NonFiniteFactorsError):
        FactorModel.create(
            model.user_ids, model.item_ids, model.user_factors, bad_items, model.params
        )


def test_deleted_pairs_lose_score(random_data):
    model, data = trained(random_data, seed=2, density=0.4)
    entries = np.random.default_rng(0).choice(data.nnz, 10, replace=False)
    keys = data.entry_keys[entries]
    users, items = keys // data.shape[1], keys % data.shape[1]
    forgotten, _, _ = forget(model, data, Change.deletions(users, items), EXACT)
    assert forgotten.scores(users, items).mean() < model.scores(users, items).mean() - 0.1


def test_a_model_with_no_data_yet_learns_from_its_first_interactions(random_data):
    """Cold start: all-zero factors are a fixed point of ALS unless a direction is seeded."""
    _, data = random_data(seed=3)
    params = params_for("implicit", factors=4, regularization=0.5)
    empty = FactorModel.create(
        [f"u{n}" for n in range(data.shape[0])],
        [f"i{n}" for n in range(data.shape[1])],
        np.zeros((data.shape[0], 4)),
        np.zeros((data.shape[1], 4)),
        params,
    )
    keys = data.entry_keys
    users, items = keys // data.shape[1], keys % data.shape[1]
    learned, after, _ = fold_in(
        empty,
        Interactions.empty(data.shape),
        Change.additions(users, items, data.by_user.data),
        EXACT,
    )
    retrained, _ = train(after, empty.user_ids, empty.item_ids, params, 300, solver="cholesky")
    assert loss(after, learned.user_factors, learned.item_factors, params) == pytest.approx(
        loss(after, retrained.user_factors, retrained.item_factors, params), rel=1e-2
    )


def test_reseeding_leaves_a_healthy_model_alone(random_data):
    model, _ = trained(random_data)
    users, items = model.user_factors.copy(), model.item_factors.copy()
    assert reseed_collapsed_directions(users, items) == 0
    assert np.array_equal(items, model.item_factors)


def test_forgetting_everything_leaves_a_zero_model(random_data):
    model, data = trained(random_data)
    everyone = Change.deletions(users=np.arange(data.shape[0]))
    forgotten, remaining, report = forget(model, data, everyone, SweepPolicy(max_sweeps=2))
    assert remaining.nnz == 0 and report.removed == data.nnz
    assert not forgotten.user_factors.any()
    assert np.abs(forgotten.scores(np.arange(5), np.arange(5))).max() < 1e-5


def test_the_list_rule_stops_once_what_users_see_has_settled(random_data):
    model, data = trained(random_data, seed=2)
    lists = SweepPolicy(max_sweeps=50, rank_tolerance=0.01, settle_ratio=None)
    _, _, report = forget(model, data, Change.deletions(users=[0, 1]), lists)
    sweeps = [r for r in report.records if r.phase == "sweep"]
    changes = [r.top_n_change for r in sweeps]
    assert all(c is not None and 0 <= c <= 1 for c in changes)
    assert report.converged and len(sweeps) < 50
    # It stopped at the first sweep that changed few enough slots, or no fewer than the
    # one before; not earlier.
    last = changes[-1]
    assert last <= report.rank_tolerance or (len(changes) > 1 and last >= changes[-2])
    for before, now in itertools.pairwise(changes[:-1]):
        assert now > report.rank_tolerance and now < before


def test_the_settle_rule_stops_once_the_changed_pairs_move_like_the_rest(random_data):
    model, data = trained(random_data, seed=2)
    keys = data.entry_keys[:: max(data.nnz // 25, 1)]  # 4 % of the pairs, spread out
    pairs = Change.deletions(keys // data.shape[1], keys % data.shape[1])
    settle = SweepPolicy(max_sweeps=50, tolerance=0.0, rank_tolerance=None)
    forgotten, _, report = forget(model, data, pairs, settle)
    sweeps = [r for r in report.records if r.phase == "sweep"]
    ratios = [r.settle_ratio for r in sweeps]
    assert report.converged and SETTLE_MIN_SWEEPS <= len(sweeps) < 50
    # The last sweep met both halves of the rule (unlearn_core/settle.py, tested alone in
    # tests/core/test_settle.py): the deleted pairs moved at most DEFAULT_SETTLE_RATIO
    # times as much as observed pairs (or no less relative to them than the sweep before),
    # and what their excess fall still projects is bounded.
    assert ratios[-1] <= DEFAULT_SETTLE_RATIO or ratios[-1] >= ratios[-2]
    assert sweeps[-1].settle_tail is not None
    # Where it stopped, the deleted pairs have made most of the way to the optimum.
    converged, _, _ = forget(model, data, pairs, EXACT)
    users, items = pairs.remove_pair_users, pairs.remove_pair_items
    start = model.scores(users, items).mean()
    end = converged.scores(users, items).mean()
    assert abs(forgotten.scores(users, items).mean() - end) <= 0.2 * abs(start - end)


def test_top_n_lists_leave_out_known_items_and_count_changed_slots(random_data):
    _, data = random_data(n_users=30, n_items=40, density=0.2, seed=5)
    sample = TopNSample.draw(data, size=10, n=5, first=np.array([3, 4]))
    assert {3, 4} <= set(sample.users.tolist()) and len(sample.users) == 10
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(40, 4))
    top = sample.top(x, y)
    assert top.shape == (10, 5)
    for row, user in enumerate(sample.users.tolist()):
        known = data.by_user.indices[data.by_user.indptr[user] : data.by_user.indptr[user + 1]]
        assert not set(top[row].tolist()) & set(known.tolist())
    assert top_n_change(top, top) == 0.0
    other = top.copy()
    other[0] = top[1]  # user 0's list replaced by another's: at most 5 of 50 slots
    assert 0 < top_n_change(top, other) <= 5 / 50
