"""Top-N recommendations from the factors in Redis: what a user would be shown right now."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from consumer.state.store import ModelState


@dataclass(frozen=True)
class Recommendation:
    item: str
    score: float


@dataclass(frozen=True)
class Answer:
    items: list[Recommendation]
    why: str | None = None  # why there is nothing to show (an unknown or erased user)


def recommend(
    state: ModelState,
    user: str,
    n: int = 10,
    keep: set[str] | None = None,
    include_deleted: bool = False,
) -> Answer:
    """The user's top-n items they do not have yet, nor deleted (unless `include_deleted`:
    whoever deleted a pair would not expect to be shown it again). An unknown user, or one
    whose whole history was erased, gets an empty list and the reason.

    `keep`: item ids to rank even though the user has them (to watch their scores move).
    """
    meta = state.meta()
    index = int(state.lookup("user", [user])[0])
    if index < 0:
        return Answer([], f"user {user!r} is not in the model: nothing to recommend")
    factor = state.read_factors("user", np.array([index]), meta.shards, meta.params.factors)[0]
    erased = state.user_erased_at(index)
    if not factor.any():
        why = f"user {user!r} has no data left in the model"
        if erased is not None:
            why = f"user {user!r} was erased (whole history deleted up to {erased:.3f})"
        return Answer([], why + ": nothing to recommend")
    items = state.read_all_factors("item", meta)
    scores = items.astype(np.float64) @ factor.astype(np.float64)
    seen = state.read_rows("user", np.array([index]), meta.shards)[0]["other"].astype(np.int64)
    if not include_deleted:
        seen = np.union1d(seen, state.deleted_items_of(index))
    seen = seen[seen < len(scores)]
    if keep:
        kept = state.lookup("item", sorted(keep))
        seen = np.setdiff1d(seen, kept[kept >= 0])
    scores[seen] = -np.inf
    n = min(n, int(np.isfinite(scores).sum()))
    top = np.argsort(-scores, kind="stable")[:n]
    names = state.ids_of("item", top.tolist())
    return Answer(
        [Recommendation(name, float(scores[i])) for name, i in zip(names, top, strict=True)]
    )
