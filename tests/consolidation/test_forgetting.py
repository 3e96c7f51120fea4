"""What a commit forgot, as other owners read it from the change log."""

from __future__ import annotations

import numpy as np

from consumer.consolidation.forgetting import PAIRS_LOGGED, Forgetting, Moved, decode, encode, merge


def forgetting() -> Forgetting:
    out = Forgetting()
    out.moved["user"] = Moved(np.array([3, 8]), np.array([0.5, 0.25]), np.array([2, 1]),
                              np.array([1, 2, 5]), np.array([1.0, 2.0, 3.0]))  # fmt: skip
    out.moved["item"] = Moved(np.array([5]), np.array([0.125]), np.array([1]), np.array([8]),
                              np.array([3.0]))  # fmt: skip
    out.pairs = np.array([[3, 7], [8, 2]])
    out.touched = {"user": {3, 8}, "item": {5}}
    return out


def test_the_change_log_field_gives_back_rows_movements_and_pairs():
    back = decode(encode(forgetting()))
    assert back.moved["user"].rows.tolist() == [3, 8]
    assert back.moved["user"].movements.tolist() == [0.5, 0.25]
    assert back.moved["item"].rows.tolist() == [5]
    assert back.moved["user"].neighbours is None  # the reader looks its own up
    assert back.pairs.tolist() == [[3, 7], [8, 2]]


def test_the_change_log_carries_a_bounded_sample_of_pairs():
    many = forgetting()
    many.pairs = np.arange(2 * (PAIRS_LOGGED + 10)).reshape(-1, 2)
    assert len(decode(encode(many)).pairs) == PAIRS_LOGGED


def test_a_shards_part_keeps_its_rows_with_their_neighbours():
    part = forgetting().of_shards({0}, 4)  # rows 8 (user) and pair (8, 2): shard 0
    assert part.moved["user"].rows.tolist() == [8]
    assert part.moved["user"].neighbours.tolist() == [5]
    assert part.moved["user"].confidence.tolist() == [3.0]
    assert part.moved["item"].rows.tolist() == []
    assert part.pairs.tolist() == [[8, 2]]
    assert part.touched == {"user": {8}, "item": set()}
    assert not Forgetting()


def test_merged_parts_add_up():
    both = merge([forgetting(), forgetting()])
    assert both.moved["user"].rows.tolist() == [3, 8, 3, 8]
    assert len(both.moved["user"].neighbours) == 6
    assert len(both.pairs) == 4
