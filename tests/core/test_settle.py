"""The settle rule on its own: scores of a deleted-pairs sample and an observed sample,
step by step, with the movements chosen here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_core.settle import SettleRule, Settling, movement_ratio

OBSERVED = np.linspace(0.5, 1.0, 400)


def run(falls: list[float], churn: float = 0.01, noise: float = 0.0, pairs: int = 400):
    """A run whose deleted pairs' mean score falls by falls[n] at step n (beside a churn
    that moves observed pairs back and forth); every step's record."""
    rng = np.random.default_rng(0)
    settling = Settling(SettleRule())
    deleted = np.full(pairs, 0.6)
    observed = OBSERVED.copy()
    steps = []
    for fall in falls:
        jitter = rng.normal(0.0, noise, pairs) if noise else 0.0
        moved = deleted - fall + jitter
        churned = observed + churn * np.where(np.arange(len(observed)) % 2, 1, -1)
        steps.append(settling.step((deleted, moved), (observed, churned)))
        deleted, observed = moved, churned
        if steps[-1].settled:
            break
    return steps


def test_a_geometric_fall_settles_once_its_projected_tail_is_small():
    falls = [0.1 * 0.5**n for n in range(40)]
    steps = run(falls)
    last = steps[-1]
    assert last.settled and not any(s.settled for s in steps[:-1])
    scale = float(np.mean(np.abs(OBSERVED)))  # about what the churn leaves it
    assert last.tail <= 0.004 * scale * 1.01
    # One step earlier the tail was still too long, or the ratio not yet met.
    before = steps[-2]
    assert before.tail > 0.004 * scale * 0.99 or before.ratio > 1.3
    # The tail is the excess times q / (1 - q), q the shrink from the step before.
    assert math.isclose(last.tail, last.excess * 0.5 / 0.5, rel_tol=1e-6)


def test_a_slow_fall_holds_the_run_open_where_the_ratio_alone_would_stop():
    """Deleted pairs that keep falling slowly (q = 0.9) but move little per step: the
    ratio falls under 1.3 early, the tail keeps the run open far longer."""
    falls = [0.02 * 0.9**n for n in range(200)]
    steps = run(falls, churn=0.05)
    first_ratio_met = next(s.index for s in steps if s.ratio <= 1.3)
    assert first_ratio_met <= 2
    assert steps[-1].settled and steps[-1].index > first_ratio_met + 10


def test_a_fall_within_its_own_noise_does_not_hold_the_run_open():
    falls = [0.0005] * 30  # each step: a 5e-4 fall hidden in 0.05 noise over 20 pairs
    steps = run(falls, noise=0.05, pairs=20)
    # Noise makes the ratio large and erratic: the run ends as soon as it stops falling.
    assert steps[-1].settled and steps[-1].index <= 3
    assert all(s.tail == 0.0 for s in steps)


def test_the_rule_is_never_met_before_the_second_step():
    steps = run([0.0] * 5)
    assert steps[0].index == 1 and not steps[0].settled
    assert steps[-1].index == 2 and steps[-1].settled


def test_the_ratio_is_deleted_movement_over_observed_movement():
    before, after = np.zeros(4), np.array([0.2, -0.2, 0.2, -0.2])
    assert movement_ratio((before, after), (before, after / 2)) == pytest.approx(2.0)
    assert movement_ratio((before, before), (before, after)) == 0.0
    assert movement_ratio((before, after), (before, before)) == math.inf


def test_bad_rules_are_refused():
    with pytest.raises(ValueError):
        SettleRule(ratio=0.5)
    with pytest.raises(ValueError):
        SettleRule(tail=-1)
