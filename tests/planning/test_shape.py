"""The shape a capacity plan draws from a model's size matches the data drawn that way."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.planning.shape import Shape
from unlearn_core.synthetic import power_law_pairs


@pytest.mark.parametrize(
    "users, items, interactions",
    [(20_000, 4_000, 600_000), (60_000, 2_000, 240_000), (3_000, 1_500, 400_000)],
)
def test_the_typical_shape_is_what_the_generator_draws(users, items, interactions):
    u, i = power_law_pairs(users, items, interactions, seed=3)
    drawn = Shape.of_counts(np.bincount(u, minlength=users), np.bincount(i, minlength=items), 64)
    typical = Shape.typical(users, items, interactions)
    assert typical.user_neighbours == pytest.approx(drawn.user_neighbours, rel=0.1)
    assert typical.item_neighbours == pytest.approx(drawn.item_neighbours, rel=0.1)


def test_the_neighbours_of_counts_are_size_biased_means():
    shape = Shape.of_counts(np.array([1, 3]), np.array([2, 2]), 32)
    assert (shape.users, shape.items, shape.interactions) == (2, 2, 4)
    assert shape.user_neighbours == pytest.approx((1 + 9) / 4)
    assert shape.item_neighbours == pytest.approx(2.0)
    assert shape.work == pytest.approx((2.5 + 2.0) * (32 / 64) ** 2)
    assert shape.factor_bytes == 4 * 32 * 4


def test_a_long_tail_makes_an_event_read_more_than_the_mean_row():
    flat = Shape.typical(100_000, 10_000, 5_000_000, popularity_exponent=0.0)
    tailed = Shape.typical(100_000, 10_000, 5_000_000, popularity_exponent=0.9)
    assert flat.item_neighbours == pytest.approx(500, rel=0.05)  # the mean, plus one
    assert tailed.item_neighbours > 3 * flat.item_neighbours


@pytest.mark.parametrize(
    "users, items, interactions, named",
    [(0, 10, 10, "users"), (10, 10, 101, "do not fit"), (10, 0, 5, "at least 1")],
)
def test_an_impossible_size_is_refused_by_name(users, items, interactions, named):
    with pytest.raises(ValueError, match=named):
        Shape.typical(users, items, interactions)
