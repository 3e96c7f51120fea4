"""Pressure and mass: which rows a forgetting cycle re-solves, on arrays made here."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn_core.active_set import Pressure, confidences, row_mass
from unlearn_core.params import Hyperparameters


def test_a_moved_row_presses_on_each_neighbour_by_confidence_times_its_movement():
    pressure = Pressure()
    # user 0 moved by 2 (neighbours items 1 and 3), user 1 by 0.5 (item 3)
    pressure.push("user", np.array([2.0, 0.5]), np.array([2, 1]), np.array([1, 3, 3]),
                  np.array([1.0, 3.0, 2.0]))  # fmt: skip
    assert pressure.pressure["item"][1] == pytest.approx(2.0)
    assert pressure.pressure["item"][3] == pytest.approx(2.0 * 3.0 + 0.5 * 2.0)
    assert pressure.pressed("item").tolist() == [3, 1]  # most pressed first
    assert pressure.total("user") == 0


def test_a_row_is_over_the_tolerance_once_its_pressure_exceeds_that_share_of_its_mass():
    pressure = Pressure()
    pressure.push("user", np.array([1.0]), np.array([2]), np.array([0, 1]), np.ones(2))
    rows = np.array([0, 1])
    assert pressure.over("item", rows, 0.1).all()  # mass unknown: look at them
    pressure.know_mass("item", rows, np.array([5.0, 50.0]))
    assert pressure.over("item", rows, 0.1).tolist() == [True, False]
    assert pressure.ratio("item", rows) == pytest.approx([0.2, 0.02])
    pressure.relieve("item", np.array([0]))
    assert pressure.ratio("item", rows) == pytest.approx([0.0, 0.02])


def test_a_pressed_row_without_mass_is_always_over():
    pressure = Pressure()
    pressure.push("item", np.array([1.0]), np.array([1]), np.array([4]), np.ones(1))
    pressure.know_mass("user", np.array([4]), np.array([0.0]))
    assert np.isinf(pressure.ratio("user", np.array([4]))[0])


def test_mass_is_the_confidence_weighted_norm_of_a_rows_inputs():
    other = np.array([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
    mass = row_mass(np.array([2, 1]), np.array([0, 1, 2]), np.array([2.0, 1.0, 5.0]), other)
    assert mass == pytest.approx([2 * 5 + 1 * 1, 5 * 1])


def test_confidences_follow_the_objective():
    implicit = Hyperparameters("implicit", 4, 1.0, alpha=2.0)
    explicit = Hyperparameters("explicit", 4, 0.1)
    assert confidences(np.array([0.0, 1.0, 3.0]), implicit) == pytest.approx([1, 3, 7])
    assert confidences(np.array([4.0, 5.0]), explicit) == pytest.approx([1, 1])
