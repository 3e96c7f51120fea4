"""The data rules: aggregation per model kind, and what a change removes or adds."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn_core import Change, Interactions, apply_change


def dense(data: Interactions) -> np.ndarray:
    return data.by_user.toarray()


def test_implicit_repeated_events_add_their_weights():
    data = Interactions.from_triples([0, 0, 1], [1, 1, 0], [2.0, 3.0, 1.0], (2, 2), "implicit")
    assert dense(data).tolist() == [[0.0, 5.0], [1.0, 0.0]]


def test_explicit_later_rating_replaces_earlier():
    data = Interactions.from_triples([0, 0, 0], [1, 1, 1], [2.0, 5.0, 3.0], (1, 2), "explicit")
    assert dense(data).tolist() == [[0.0, 3.0]]


def small() -> Interactions:
    #        items 0  1  2  3
    weights = [[1, 2, 0, 0], [0, 3, 4, 0], [5, 0, 6, 7]]
    users, items = np.nonzero(weights)
    return Interactions.from_triples(
        users, items, np.asarray(weights, float)[users, items], (3, 4), "implicit"
    )


def test_pair_user_and_item_deletions_remove_exactly_their_scope():
    change = Change.deletions(pair_users=[0], pair_items=[1], users=[1], items=[3])
    after, summary = apply_change(small(), change, "implicit")
    assert dense(after).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [5, 0, 6, 0]]
    assert summary.removed == 4
    assert summary.touched_users.tolist() == [0, 1, 2]
    assert summary.touched_items.tolist() == [1, 2, 3]
    assert (summary.pairs_not_found, summary.users_not_found, summary.items_not_found) == (0, 0, 0)


def test_deleting_what_is_not_there_is_counted_not_an_error():
    data = small()
    change = Change.deletions(pair_users=[0, 0], pair_items=[2, 3], users=[], items=[])
    after, summary = apply_change(data, change, "implicit")
    assert summary.removed == 0
    assert summary.pairs_not_found == 2
    assert np.array_equal(dense(after), dense(data))
    emptied, _ = apply_change(data, Change.deletions(users=[1]), "implicit")
    _, again = apply_change(emptied, Change.deletions(users=[1], items=[]), "implicit")
    assert again.users_not_found == 1


def test_overlapping_scopes_remove_each_pair_once():
    change = Change.deletions(pair_users=[2, 2], pair_items=[0, 0], users=[2], items=[0])
    _, summary = apply_change(small(), change, "implicit")
    assert summary.removed == 4  # (0,0) (2,0) (2,2) (2,3)


def test_additions_grow_the_matrix_and_follow_the_kind_rule():
    after, summary = apply_change(small(), Change.additions([0, 4], [1, 5], [1.5, 2.0]), "implicit")
    assert after.shape == (5, 6)
    assert after.weights_of([0, 4, 1], [1, 5, 3]).tolist() == [3.5, 2.0, 0.0]
    assert summary.added == 2
    explicit = Interactions.from_triples([0], [0], [4.0], (1, 1), "explicit")
    replaced, _ = apply_change(explicit, Change.additions([0, 0], [0, 0], [2.0, 1.0]), "explicit")
    assert replaced.weights_of([0], [0]).tolist() == [1.0]


def test_invalid_additions_are_refused():
    with pytest.raises(ValueError, match="finite"):
        Change.additions([0], [0], [np.nan])
    with pytest.raises(ValueError, match=">= 0"):
        apply_change(small(), Change.additions([0], [0], [-1.0]), "implicit")
    with pytest.raises(ValueError, match="non-zero"):
        apply_change(small(), Change.additions([0], [0], [0.0]), "explicit")


def test_input_is_not_modified():
    data = small()
    before = dense(data).copy()
    apply_change(data, Change.deletions(users=[0, 1, 2]), "implicit")
    assert np.array_equal(dense(data), before)
