"""`unlearn load --swap`: the command-line side of a blue/green model swap (state/swap.py)."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from consumer.state.store import ModelState
from consumer.state.swap import Swap
from unlearn_core import FactorModel, Interactions

# Reconcile rounds after staging, while the service runs: each takes what the live model
# forgot or learned during the one before, so the last one, under the hold, is short.
CATCH_UP_ROUNDS = 3


def swap_model(
    state: ModelState,
    model: FactorModel,
    data: Interactions,
    stamps: np.ndarray,
    trained_at: float | None,
    hold_s: float,
) -> dict:
    """Build the new model beside the live one, catch it up, promote it; what it did."""
    started = time.perf_counter()
    swap = Swap(state)
    green = swap.prepare(model, data, stamps, trained_at)
    swap.reconcile(green)
    with tqdm(total=swap.meta.shards, desc="stage", unit="shard", disable=None) as bar:
        swap.stage(green, bar.update)
    for _ in range(CATCH_UP_ROUNDS):
        if not swap.reconcile(green):
            break
    swap.promote(green, hold_s)
    return {
        "namespace": state.layout.namespace,
        "swapped": True,
        "users": green.model.shape[0],
        "items": green.model.shape[1],
        "interactions": green.data.nnz,
        "shards": swap.meta.shards,
        "trained_at": green.trained_at,
        "dropped_as_forgotten": green.dropped,
        "carried_over": green.carried,
        # arrived after the snapshot with an event time before --trained-at: kept
        "carried_over_older": green.carried_older,
        # every interaction the live model held at the promotion is one of these three
        "live_interactions": green.live,
        "live_in_new_data": green.in_both,
        "live_newer_than_new_data": green.live_newer,
        "live_older_not_in_new_data": green.live_older,
        "reconcile_rounds": green.rounds,
        "held_seconds": round(green.held_s, 3),
        "generations": {str(s): g for s, g in sorted(green.generations.items())},
        "seconds": round(time.perf_counter() - started, 3),
    }
