"""`unlearn load` and `unlearn export`: a model and its interactions into Redis and back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from consumer.state.layout import ROW_DTYPE, rows_of_shard
from consumer.state.store import SIDES, ModelState, ShardWrite
from unlearn_core import FactorModel, Interactions
from unlearn_core.interactions import locate
from unlearn_core.solve import gramian

_ROWS_PER_WRITE = 5000  # rows per transaction while loading: bounded request size


def pair_timestamps(
    data: Interactions,
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    kind: str = "implicit",
) -> np.ndarray:
    """Each stored pair's time, aligned with data.by_user.data (0: none).

    The time a deletion must reach to remove all the pair's weight holds: the earliest
    event's where weights add up (implicit), the latest's where a rating replaces the one
    before (explicit).
    """
    ts = np.nan_to_num(np.asarray(timestamps, dtype=np.float64), nan=0.0)
    keys = np.asarray(users, np.int64) * data.shape[1] + np.asarray(items, np.int64)
    order = np.argsort(keys, kind="stable")
    unique, starts = np.unique(keys[order], return_index=True)
    reduce = np.minimum if kind == "implicit" else np.maximum
    per_pair = reduce.reduceat(ts[order], starts) if len(starts) else np.empty(0)
    out = np.zeros(data.nnz)
    pos, found = locate(unique, data.entry_keys)
    out[found] = per_pair[pos[found]]
    return out


def load(
    state: ModelState,
    model: FactorModel,
    data: Interactions,
    timestamps: np.ndarray,
    shards: int,
    replace: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Bootstrap a namespace: ids, factors, interactions both ways, partial Gramians."""
    state.write_meta(model.params, shards, replace)
    for side, ids in (("user", model.user_ids), ("item", model.item_ids)):
        indices = state.allocate(side, ids.tolist())
        if not np.array_equal(indices, np.arange(len(ids))):
            raise RuntimeError("a fresh namespace must allocate indices in order")
    stamps = np.clip(np.asarray(timestamps, dtype=np.float64), 0, 2**32 - 1)
    # Carry entry positions (never zero, so never dropped) through the transpose to find
    # where each item-major entry sits in user-major order.
    positions = sp.csr_array(
        (np.arange(1, data.nnz + 1, dtype=np.int64), data.by_user.indices, data.by_user.indptr),
        shape=data.shape,
    ).T.tocsr()
    positions.sort_indices()
    if not np.array_equal(positions.indices, data.by_item.indices):
        raise RuntimeError("item-major layouts disagree")
    matrices = {
        "user": (data.by_user, stamps),
        "item": (data.by_item, stamps[positions.data - 1]),
    }
    factors = {"user": model.user_factors, "item": model.item_factors}
    for shard in range(shards):
        for side in SIDES:
            weights, stamps = matrices[side]
            rows = rows_of_shard(shard, shards, len(factors[side]))
            for start in range(0, max(len(rows), 1), _ROWS_PER_WRITE):
                chunk = rows[start : start + _ROWS_PER_WRITE]
                write = ShardWrite()
                write.factors[side] = {int(n): factors[side][n] for n in chunk}
                write.rows[side] = {
                    int(n): _row(weights, stamps, int(n)) for n in chunk if n < weights.shape[0]
                }
                if start == 0:
                    write.gramians[side] = gramian(factors[side][rows])
                state.write_shards({shard: write}, token=0)  # a fresh namespace
        if progress is not None:
            progress(1)
    state.set_counts(len(model.user_ids), len(model.item_ids))
    state.set_interactions(data.nnz)


def export(state: ModelState) -> tuple[FactorModel, Interactions]:
    meta = state.meta()
    users = state.read_all_factors("user", meta)
    items = state.read_all_factors("item", meta)
    rows = state.read_all_rows("user", meta)
    n_users, n_items = max(meta.users, len(users)), max(meta.items, len(items))
    user_index = np.concatenate(
        [np.full(len(r), n, dtype=np.int64) for n, r in sorted(rows.items())]
        or [np.empty(0, np.int64)]
    )
    records = np.concatenate([r for _, r in sorted(rows.items())] or [np.empty(0, ROW_DTYPE)])
    data = Interactions.from_triples(
        user_index,
        records["other"].astype(np.int64),
        records["weight"].astype(np.float64),
        (n_users, n_items),
        meta.params.kind,
    )
    model = FactorModel.create(
        state.ids_of("user", range(n_users)),
        state.ids_of("item", range(n_items)),
        _pad(users, n_users),
        _pad(items, n_items),
        meta.params,
    )
    return model, data


def _row(weights: sp.csr_array, stamps: np.ndarray, n: int) -> np.ndarray:
    start, stop = weights.indptr[n], weights.indptr[n + 1]
    row = np.empty(stop - start, dtype=ROW_DTYPE)
    row["other"] = weights.indices[start:stop]
    row["weight"] = weights.data[start:stop]
    row["ts"] = stamps[start:stop]
    return row


def _pad(factors: np.ndarray, rows: int) -> np.ndarray:
    if len(factors) >= rows:
        return factors[:rows]
    out = np.zeros((rows, factors.shape[1]), dtype=factors.dtype)
    out[: len(factors)] = factors
    return out
