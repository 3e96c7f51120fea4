"""One row's observed entries, and how events change them.

A row is three aligned arrays: the other side's indices (sorted, unique), the weights, and
each entry's time. Events add up for implicit feedback and replace for explicit ratings
(the last event of a pair wins). The time an entry keeps is the one a deletion must reach
to remove everything its weight holds: the earliest event's for a sum, the winning
rating's for a replacement. Arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from unlearn_core.params import Kind


def merge_events(
    others: np.ndarray,
    weights: np.ndarray,
    times: np.ndarray,
    new_others: np.ndarray,
    new_weights: np.ndarray,
    new_times: np.ndarray,
    kind: Kind,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row after the events (in arrival order), entries whose weight became 0 dropped.

    Vectorised: a popular item's row holds thousands of entries.
    """
    all_other = np.concatenate([np.asarray(others, np.int64), np.asarray(new_others, np.int64)])
    all_weight = np.concatenate(
        [np.asarray(weights, np.float64), np.asarray(new_weights, np.float64)]
    )
    all_time = np.concatenate([np.asarray(times, np.float64), np.asarray(new_times, np.float64)])
    keys, inverse = np.unique(all_other, return_inverse=True)
    if kind == "implicit":
        merged_weight = np.bincount(inverse, weights=all_weight, minlength=len(keys))
        merged_time = np.full(len(keys), np.inf)
        np.minimum.at(merged_time, inverse, all_time)
    else:  # the stored entries come first, the events after in order: the last one wins
        last = np.zeros(len(keys), dtype=np.int64)
        np.maximum.at(last, inverse, np.arange(len(all_other)))
        merged_weight = all_weight[last]
        merged_time = all_time[last]
    kept = merged_weight != 0
    return keys[kept], merged_weight[kept], merged_time[kept]
