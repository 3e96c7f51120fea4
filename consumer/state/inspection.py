"""What the namespace holds about one subject, and everything it is fitted to: the answer
to an access request (GDPR art. 15) and the way to check an erasure by hand.

`subject_record` gathers one user's or item's stored interactions (with their times), the
tombstones of its scope and the receipts that name it; `stored_interactions` walks every
stored pair, shard by shard, for `unlearn export --interactions`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from consumer.state.layout import item_tombstone, shard_of, user_tombstone
from consumer.state.store import ModelState


def subject_record(state: ModelState, side: str, subject: str) -> dict[str, Any]:
    """JSON-ready: the subject's stored history, tombstones and receipts."""
    meta = state.meta()
    index = int(state.lookup(side, [subject])[0])
    other = "item" if side == "user" else "user"
    out: dict[str, Any] = {side: subject, "known": index >= 0, "interactions": []}
    if index >= 0:
        (row,) = state.read_rows(side, np.array([index]), meta.shards)
        ids = state.ids_of(other, row["other"].tolist())
        out["interactions"] = [
            {other: i, "weight": float(w), "ts": float(t) or None}
            for i, w, t in zip(ids, row["weight"].tolist(), row["ts"].tolist(), strict=True)
        ]
    out["tombstones"] = _merged(
        _tombstones(state, side, index, meta.shards) + state.unseen_of(side, subject)
    )
    out["receipts"] = [r for r in state.read_receipts(meta.shards) if r.get(side) == subject]
    return out


def _tombstones(state: ModelState, side: str, index: int, shards: int) -> list[dict[str, Any]]:
    """The deletions of this subject's scope the state remembers: its whole-history one
    and its pairs' (a user's live in its shard; an item's pairs in its users' shards)."""
    if index < 0:
        return []
    whole = user_tombstone(index) if side == "user" else item_tombstone(index)
    whole_at: float | None = None  # an item's is copied to every shard: listed once
    pairs: list[tuple[int, float]] = []  # the other side's index, the deletion time
    other_side = "item" if side == "user" else "user"
    where = [int(shard_of(index, shards))] if side == "user" else list(range(shards))
    for shard in where:
        for field, at in state.client.hgetall(state.layout.shard(shard).tombstones).items():
            name = field.decode()
            kind, _, rest = name.partition(":")
            if name == whole:
                whole_at = float(at)
            elif kind == "p":
                user, item = (int(n) for n in rest.split(":"))
                mine, other = (user, item) if side == "user" else (item, user)
                if mine == index:
                    pairs.append((other, float(at)))
    found: list[dict[str, Any]] = [] if whole_at is None else [{"scope": side, "ts": whole_at}]
    names = state.ids_of(other_side, [other for other, _ in pairs])  # one call for all
    found += [{"scope": "pair", other_side: name, "ts": at}
              for name, (_, at) in zip(names, pairs, strict=True)]  # fmt: skip
    return found


def _merged(tombstones: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One tombstone per scope (the latest): a deletion may have named the subject before
    the model saw it (kept by id) and again after (by index); it reads the same either way.
    The whole history's first, then the pairs' by the other id."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for t in tombstones:
        other = str(t.get("user", t.get("item", ""))) if t["scope"] == "pair" else ""
        key = (t["scope"], other)
        if key not in latest or t["ts"] > latest[key]["ts"]:
            latest[key] = t
    return [latest[key] for key in sorted(latest, key=lambda k: (k[0] == "pair", k[1]))]


def stored_interactions(state: ModelState) -> Iterator[tuple[str, str, float, int]]:
    """Every stored pair: user id, item id, weight, time (seconds; 0: none), by user."""
    meta = state.meta()
    for shard in range(meta.shards):
        rows = state.read_shard_rows("user", shard)
        if not rows:
            continue
        users = sorted(rows)
        user_ids = state.ids_of("user", users)
        items = np.unique(np.concatenate([rows[u]["other"] for u in users]))
        item_ids = dict(zip(items.tolist(), state.ids_of("item", items), strict=True))
        for user, user_id in zip(users, user_ids, strict=True):
            row = rows[user]
            for item, weight, ts in zip(
                row["other"].tolist(), row["weight"].tolist(), row["ts"].tolist(), strict=True
            ):
                yield user_id, item_ids[item], weight, ts
