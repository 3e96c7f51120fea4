"""A row's entries and the events that change them."""

from __future__ import annotations

import numpy as np

from unlearn_core.rows import merge_events


def test_implicit_weights_add_up_and_keep_the_earliest_time():
    others, weights, times = np.array([1, 5]), np.array([2.0, 1.0]), np.array([100, 300])
    events = (np.array([5, 2, 5, 1]), np.array([3.0, 1.0, 4.0, -2.0]), np.array([200, 50, 400, 90]))
    keys, merged, when = merge_events(others, weights, times, *events, "implicit")
    # pair 1 sums to zero and is dropped; 5: 1 + 3 + 4. A sum keeps its earliest event's
    # time (a deletion reaching it removes all the sum holds).
    assert keys.tolist() == [2, 5] and merged.tolist() == [1.0, 8.0] and when.tolist() == [50, 200]


def test_a_rating_replaces_the_one_before_and_keeps_its_own_time():
    others, weights, times = np.array([1, 5]), np.array([2.0, 1.0]), np.array([100, 300])
    events = (np.array([5, 2, 5, 1]), np.array([3.0, 1.0, 4.0, -2.0]), np.array([200, 50, 400, 90]))
    keys, merged, when = merge_events(others, weights, times, *events, "explicit")
    assert keys.tolist() == [1, 2, 5]
    assert merged.tolist() == [-2.0, 1.0, 4.0]  # the last rating of each pair
    assert when.tolist() == [90, 50, 400]  # ... and its time


def test_merging_into_an_empty_row_sorts_the_entries():
    empty = np.empty(0, np.int64)
    keys, merged, _ = merge_events(empty, empty, empty, np.array([9, 3]), np.array([1.0, 2.0]),
                                   np.array([1, 1]), "implicit")  # fmt: skip
    assert keys.tolist() == [3, 9] and merged.tolist() == [2.0, 1.0]
