"""The deletion history of a namespace, kept across a reload.

A model retrained from a warehouse snapshot taken before a deletion reached it still holds
the deleted pairs. Reloading it must not bring them back, and must not lose the audit
trail of earlier erasures. So `unlearn load --replace` reads the history first (every
tombstone, by id, and every receipt), drops each interaction of the new data that a
tombstone covers (its time at or before the deletion's), re-solves the rows that lost
interactions exactly (Unlearn-ALS's touched step), loads, and writes the history back
under the new model's indices. A tombstone naming an id the new model lacks is kept by id
(layout `:unseen`), so it still stops a late interaction without adding a row.

An interaction's time is its file's timestamp, capped at `--trained-at` (a snapshot holds
nothing newer than the moment it was taken); an interaction without a time is taken as
old as can be: every tombstone of its scope covers it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from consumer.state.layout import (
    item_tombstone,
    pair_tombstone,
    shard_of,
    unseen_shard,
    user_tombstone,
)
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState
from unlearn_core import FactorModel, Interactions
from unlearn_core.interactions import Change, locate
from unlearn_core.unlearn import SweepPolicy, forget


@dataclass
class DeletionHistory:
    """Tombstones by id (latest deletion time of each scope) and the receipts, as stored."""

    pairs: dict[tuple[str, str], float] = field(default_factory=dict)
    users: dict[str, float] = field(default_factory=dict)
    items: dict[str, float] = field(default_factory=dict)
    receipts: dict[str, str] = field(default_factory=dict)  # source -> receipt JSON

    def __len__(self) -> int:
        return len(self.pairs) + len(self.users) + len(self.items)

    def to_json(self) -> str:
        return json.dumps({
            "pairs": [[u, i, t] for (u, i), t in self.pairs.items()],
            "users": self.users, "items": self.items, "receipts": self.receipts,
        })  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> DeletionHistory:
        raw = json.loads(text)
        pairs = {(u, i): float(t) for u, i, t in raw["pairs"]}
        return cls(pairs, raw["users"], raw["items"], raw["receipts"])

    def ids(self) -> tuple[set[str], set[str]]:
        users = set(self.users) | {u for u, _ in self.pairs}
        items = set(self.items) | {i for _, i in self.pairs}
        return users, items


def read_history(state: ModelState) -> DeletionHistory:
    """Everything the namespace remembers of its deletions (empty if it holds no model).

    Read from the keys every layout format keeps alike (the shard count in the metadata,
    the id maps, each shard's tombstones and receipts), so it also carries the history of
    a namespace an earlier version wrote, or a load that did not finish, into a reload."""
    out = DeletionHistory()
    shards = int(state.client.hget(state.layout.meta, "shards") or 0)
    raw: dict[str, float] = {}
    for shard in range(shards):
        keys = state.layout.shard(shard)
        for name, at in state.client.hgetall(keys.tombstones).items():
            text = name.decode()
            raw[text] = max(raw.get(text, float("-inf")), float(at))
        for source, receipt in state.client.hgetall(keys.receipts).items():
            out.receipts[source.decode()] = receipt.decode()
    pairs = [(k, t) for k, t in raw.items() if k.startswith("p:")]
    users = [(k, t) for k, t in raw.items() if k.startswith("u:")]
    items = [(k, t) for k, t in raw.items() if k.startswith("i:")]
    pair_users = state.ids_of("user", [int(k.split(":")[1]) for k, _ in pairs])
    pair_items = state.ids_of("item", [int(k.split(":")[2]) for k, _ in pairs])
    for u, i, (_, t) in zip(pair_users, pair_items, pairs, strict=True):
        out.pairs[(u, i)] = t
    for u, (_, t) in zip(state.ids_of("user", [int(k[2:]) for k, _ in users]), users, strict=True):
        out.users[u] = t
    for i, (_, t) in zip(state.ids_of("item", [int(k[2:]) for k, _ in items]), items, strict=True):
        out.items[i] = t
    for (scope, user, item), t in state.read_unseen().items():  # kept by id
        found = out.users if scope == "user" else out.items if scope == "item" else out.pairs
        key = user if scope == "user" else item if scope == "item" else (user, item)
        found[key] = max(found.get(key, float("-inf")), t)  # type: ignore[index]
    return out


@dataclass(frozen=True)
class Cleaned:
    model: FactorModel
    data: Interactions
    stamps: np.ndarray  # aligned with data.by_user.data
    dropped: int  # interactions the history had forgotten
    users_resolved: int
    items_resolved: int


def drop_forgotten(
    model: FactorModel,
    data: Interactions,
    stamps: np.ndarray,
    history: DeletionHistory,
    trained_at: float | None = None,
) -> Cleaned:
    """The new model and data with every interaction a tombstone covers removed and the
    rows that lost one re-solved exactly (tombstones of ids the model lacks reach nothing
    of it: they are kept by id, write_history)."""
    user_index = {u: n for n, u in enumerate(model.user_ids.tolist())}
    item_index = {i: n for n, i in enumerate(model.item_ids.tolist())}
    times = np.asarray(stamps, dtype=np.float64)
    if trained_at is not None:
        times = np.minimum(times, trained_at)
    user_t = np.full(data.shape[0], -np.inf)
    for u, t in history.users.items():
        if u in user_index:
            user_t[user_index[u]] = t
    item_t = np.full(data.shape[1], -np.inf)
    for i, t in history.items.items():
        if i in item_index:
            item_t[item_index[i]] = t
    known = [(u, i, t) for (u, i), t in history.pairs.items()
             if u in user_index and i in item_index]  # fmt: skip
    pair_keys = np.array(
        [user_index[u] * data.shape[1] + item_index[i] for u, i, _ in known], dtype=np.int64
    )
    pair_t = np.array([t for _, _, t in known], dtype=np.float64)
    covered = covered_entries(data, times, user_t, item_t, pair_keys, pair_t)
    users = np.repeat(np.arange(data.shape[0]), np.diff(data.by_user.indptr))
    items = data.by_user.indices.astype(np.int64)
    dropped = int(covered.sum())
    if not dropped:
        return Cleaned(model, data, times, 0, 0, 0)
    change = Change(remove_pair_users=users[covered], remove_pair_items=items[covered])
    touched_only = SweepPolicy(max_sweeps=0, rank_tolerance=None, track_loss=False)
    model, remaining, report = forget(model, data, change, touched_only)
    pos, _ = locate(data.entry_keys, remaining.entry_keys)
    return Cleaned(model, remaining, times[pos], dropped, report.touched_users,
                   report.touched_items)  # fmt: skip


def covered_entries(
    data: Interactions,
    times: np.ndarray,
    user_t: np.ndarray,
    item_t: np.ndarray,
    pair_keys: np.ndarray,
    pair_t: np.ndarray,
) -> np.ndarray:
    """Which stored entries (aligned with data.by_user.data, at `times`) a tombstone
    covers: the latest deletion time that reaches each (its user's, its item's, its
    pair's; -inf for none) is at or after the entry's time."""
    users = np.repeat(np.arange(data.shape[0]), np.diff(data.by_user.indptr))
    items = data.by_user.indices.astype(np.int64)
    reach = np.maximum(user_t[users], item_t[items])
    if len(pair_keys):
        pos, found = locate(data.entry_keys, pair_keys)
        np.maximum.at(reach, pos[found], pair_t[found])
    return times <= reach


def _ids_and_found(state: ModelState, side: str, ids: set[str]) -> tuple[list[str], list[int]]:
    ordered = sorted(ids)
    return ordered, state.lookup(side, ordered).tolist()


def write_history(state: ModelState, history: DeletionHistory) -> None:
    """The history under the freshly loaded model's indices: each tombstone where the
    engine looks for it, each receipt with its request's coordinator shard."""
    meta = state.meta()
    shards = meta.shards
    writes: dict[int, ShardWrite] = {}

    def write(shard: int) -> ShardWrite:
        return writes.setdefault(int(shard), ShardWrite())

    # Tombstones of ids the model has, by index where the engine looks for them; of ids it
    # lacks, by id (layout `:unseen`): they name, they do not create.
    users = dict(zip(*_ids_and_found(state, "user", history.ids()[0]), strict=True))
    items = dict(zip(*_ids_and_found(state, "item", history.ids()[1]), strict=True))
    unseen: dict[tuple[str, str | None, str | None], float] = {}
    for (user, item), t in history.pairs.items():
        u, i = users[user], items[item]
        if u >= 0 and i >= 0:
            write(shard_of(u, shards)).tombstones[pair_tombstone(u, i)] = t
        else:
            unseen[("pair", user, item)] = t
    for user, t in history.users.items():
        if users[user] >= 0:
            write(shard_of(users[user], shards)).tombstones[user_tombstone(users[user])] = t
        else:
            unseen[("user", user, None)] = t
    for item, t in history.items.items():
        if items[item] < 0:
            unseen[("item", None, item)] = t
            continue
        for shard in range(shards):  # copied to every shard, as the engine writes them
            write(shard).tombstones[item_tombstone(items[item])] = t
    state.write_unseen(unseen)
    # Each receipt goes to its request's coordinator: the user's shard (a pair's or a
    # user's request), the item's (an item's), or where an unseen subject's id hashes to.
    subjects: dict[str, list[tuple[str, str, str]]] = {"user": [], "item": []}
    for source, text in history.receipts.items():
        receipt = json.loads(text)
        user, item = receipt.get("user"), receipt.get("item")
        side, subject = ("user", user) if user is not None else ("item", item)
        subjects[side].append((source, text, subject if subject is not None else ""))
    for side, entries in subjects.items():
        found = state.lookup(side, [subject for _, _, subject in entries]).tolist()
        for (source, text, subject), n in zip(entries, found, strict=True):
            shard = shard_of(n, shards) if n >= 0 else unseen_shard(subject, shards)
            write(shard).receipts[source] = text
    for shard, one in writes.items():
        state.log.commit({shard: one}, {shard: None})
