"""`unlearn load` and `unlearn export`: a model and its interactions into Redis and back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from consumer.shards.ledger import all_pairs, pair_shares, penalty_shares
from consumer.state.layout import ROW_DTYPE, rows_of_shard
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState
from unlearn_core import FactorModel, Interactions
from unlearn_core.interactions import locate

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
    """Bootstrap a namespace, shard by shard: ids, factors, each user's row and each
    item's slice of the shard's users, the interactions count and the shard's share of
    the objective."""
    state.write_meta(model.params, shards, replace)
    for side, ids in (("user", model.user_ids), ("item", model.item_ids)):
        indices = state.allocate(side, ids.tolist())
        if not np.array_equal(indices, np.arange(len(ids))):
            raise RuntimeError("a fresh namespace must allocate indices in order")
    write_shards(state, model, data, timestamps, shards, progress)
    state.set_counts(len(model.user_ids), len(model.item_ids))


def stored_times(timestamps: np.ndarray) -> np.ndarray:
    """Times as the state keeps them: seconds to the millisecond, none before 1970 (a row
    without a time keeps 0, which every deletion of its scope covers)."""
    seconds = np.maximum(np.nan_to_num(np.asarray(timestamps, dtype=np.float64)), 0.0)
    return np.floor(seconds * 1000.0) / 1000.0


def write_shards(
    state: ModelState,
    model: FactorModel,
    data: Interactions,
    timestamps: np.ndarray,
    shards: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Every shard's factors, user rows, item slices, interactions count and share of the
    objective, unfenced: into a namespace no owner writes yet (a fresh load, or the keys
    a swap stages beside the live model)."""
    stamps = stored_times(timestamps)
    by_user = data.by_user
    factors = {"user": model.user_factors, "item": model.item_factors}
    shares = objective_shares(model, data, shards)
    for shard in range(shards):
        users = rows_of_shard(shard, shards, data.shape[0])
        items = rows_of_shard(shard, shards, len(model.item_factors))
        for start in range(0, max(len(users), len(items), 1), _ROWS_PER_WRITE):
            write = ShardWrite()
            for side, rows in (("user", users), ("item", items)):
                chunk = rows[start : start + _ROWS_PER_WRITE]
                write.factors[side] = {int(n): factors[side][n] for n in chunk}
            for n in users[start : start + _ROWS_PER_WRITE].tolist():
                write.rows["user"][n] = user_row(by_user, stamps, n)
            state.log.commit({shard: write}, {shard: None})  # no owner writes these keys yet
        write = ShardWrite(interactions_delta=int(np.diff(by_user.indptr)[users].sum()))
        write.rows["item"] = _slices(by_user, stamps, users)
        write.status = {"consolidation": "sweeping", "loss": repr(shares[shard])}
        state.log.commit({shard: write}, {shard: None})
        if progress is not None:
            progress(1)


def _slices(by_user: sp.csr_array, stamps: np.ndarray, users: np.ndarray) -> dict[int, np.ndarray]:
    """Each item's records with these users (one shard's), sorted by user."""
    starts, stops = by_user.indptr[users], by_user.indptr[users + 1]
    positions = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)]
                               or [np.empty(0, np.int64)])  # fmt: skip
    owners = np.repeat(users, stops - starts)
    items = by_user.indices[positions]
    order = np.lexsort((owners, items))
    records = np.empty(len(order), dtype=ROW_DTYPE)
    records["other"] = owners[order]
    records["weight"] = by_user.data[positions][order]
    records["ts"] = stamps[positions][order]
    sorted_items = items[order]
    cuts = np.flatnonzero(np.diff(sorted_items)) + 1
    return {
        int(group[0]): piece
        for group, piece in zip(np.split(sorted_items, cuts), np.split(records, cuts), strict=True)
        if len(group)
    }


def objective_shares(model: FactorModel, data: Interactions, model_shards: int) -> list[float]:
    """Each shard's share of the objective (as the engine accounts it, engine.py): its
    users' pairs, the ALS-WR penalties of its users and items, the all-pairs term in
    shard 0. Their sum is the objective (shards/ledger.py)."""
    params, shards = model.params, model_shards
    users = np.repeat(np.arange(data.shape[0]), np.diff(data.by_user.indptr))
    xs, ys = model.user_factors, model.item_factors
    out = pair_shares(users, data.by_user.indices, data.by_user.data, xs, ys, params, shards)
    out += penalty_shares(np.diff(data.by_user.indptr), xs, params, shards)
    out += penalty_shares(np.diff(data.by_item.indptr), ys, params, shards)
    out[0] += all_pairs(xs, ys, params)
    return out.tolist()


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


def user_row(weights: sp.csr_array, stamps: np.ndarray, n: int) -> np.ndarray:
    """User n's stored row: its interactions as ROW_DTYPE records, sorted by item."""
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
