"""Top-N recommendations from the factors in Redis: what a user would be shown right now."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from consumer.state.store import ModelState


@dataclass(frozen=True)
class Recommendation:
    item: str
    score: float


def recommend(
    state: ModelState, user: str, n: int = 10, keep: set[str] | None = None
) -> list[Recommendation] | None:
    """The user's top-n items they do not have yet; None for a user the model does not know.

    `keep`: item ids to rank even though the user has them (to watch their scores move).
    """
    meta = state.meta()
    index = int(state.lookup("user", [user])[0])
    if index < 0:
        return None
    factor = state.read_factors("user", np.array([index]), meta.shards, meta.params.factors)[0]
    items = state.read_all_factors("item", meta)
    scores = items.astype(np.float64) @ factor.astype(np.float64)
    seen = state.read_rows("user", np.array([index]), meta.shards)[0]["other"].astype(np.int64)
    seen = seen[seen < len(scores)]
    if keep:
        kept = state.lookup("item", sorted(keep))
        seen = np.setdiff1d(seen, kept[kept >= 0])
    scores[seen] = -np.inf
    n = min(n, int(np.isfinite(scores).sum()))
    top = np.argsort(-scores, kind="stable")[:n]
    names = state.ids_of("item", top.tolist())
    return [Recommendation(name, float(scores[i])) for name, i in zip(names, top, strict=True)]
