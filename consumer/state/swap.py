"""`unlearn load --swap`: a retrained model into a live namespace, blue/green.

The running service keeps applying deletions to the live (blue) model while the new
(green) one is built beside it, in each shard's own slot under the STAGED key prefix:

1. prepare: the new model's ids take the live namespace's indices (ids it does not know
   get new ones), so tombstones, receipts, pending requests and inbox entries keep naming
   the same rows: they are never copied and never swapped, and the audit trail stays one.
2. reconcile, repeated while the service runs: every interaction of green that a live
   tombstone covers is dropped; every interaction the live model holds that green lacks
   is carried over (learned after the snapshot, `--trained-at`; or older but arrived after
   it was taken, counted apart): nothing the live model holds is lost, and the report
   accounts for all of it (live = in both + carried over + carried over older). The rows
   either touched are re-solved exactly (Unlearn-ALS's touched step) and only they are
   staged again. The first pass does the bulk, later ones what arrived since.
3. hold: the loader draws every shard's fence token (owner "swap:<deadline>"); from then on
   the service's writes are refused and its work waits in the inboxes. A last reconcile
   takes what the live model did before the hold.
4. promote: one script per shard renames the staged factors, rows, slices and status over
   the live ones, counts a commit that changed every row (replicas and the factors topic
   read the shard whole) and releases the shard; on one Redis server every shard in one
   script, so readers see blue or green, never a mix. The service takes its shards back
   and applies what waited to green. A loader that dies while holding: the hold expires.

The swap keeps the hyperparameters: a model with another kind or rank (or penalty) is a
different service configuration; it is loaded with `--replace` while the service is
stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import redis

from consumer.state.bootstrap import (
    objective_shares,
    pair_timestamps,
    stored_times,
    user_row,
    write_shards,
)
from consumer.state.history import covered_entries
from consumer.state.layout import ROW_DTYPE, STAGED, shard_of
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState, StateError
from unlearn_core import FactorModel, Interactions
from unlearn_core.interactions import Change, locate
from unlearn_core.unlearn import SweepPolicy, update

log = logging.getLogger(__name__)

HOLD_PREFIX = "swap:"  # a shard's owner while a swap holds it: "swap:<deadline, epoch s>"
HOLD_S = 300.0  # how long a hold lasts at most: a loader that died releases it so
_TOUCHED_ONLY = SweepPolicy(max_sweeps=0, rank_tolerance=None, track_loss=False)
# The model's keys of a shard, renamed staged -> live at promotion.
_SWAPPED = ("uf", "if", "ur", "ir", "status")

# Promote shards: if every fence still holds the loader's token, each staged model key
# replaces its live one (an absent staged key: the live one goes), a commit that changed
# every row is counted and logged, and the shard is released ('' owner).
# KEYS per shard (15): fence, owner, gen, head, changes, then the live and the staged
# keys of _SWAPPED. ARGV per shard: token, commit id. Returns the new generations or -1.
_PROMOTE = """
local per = 15
local shards = #KEYS / per
for s = 0, shards - 1 do
  if redis.call('GET', KEYS[s * per + 1]) ~= ARGV[2 * s + 1] then return -1 end
end
local out = {}
for s = 0, shards - 1 do
  local k = s * per
  for n = 0, 4 do
    if redis.call('EXISTS', KEYS[k + 11 + n]) == 1 then
      redis.call('RENAME', KEYS[k + 11 + n], KEYS[k + 6 + n])
    else
      redis.call('DEL', KEYS[k + 6 + n])
    end
  end
  local generation = redis.call('INCR', KEYS[k + 3])
  local previous = redis.call('GET', KEYS[k + 4]) or ''
  redis.call('XADD', KEYS[k + 5], generation .. '-1', 'users', '', 'items', '', 'all', '1',
             'id', ARGV[2 * s + 2], 'prev', previous)
  redis.call('SET', KEYS[k + 4], ARGV[2 * s + 2])
  redis.call('SET', KEYS[k + 2], '')
  out[#out + 1] = generation
end
return out
"""


# A hold given back: the owner cleared if the fence still holds the swap's token.
# KEYS: fence, owner. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], '') end
return 0
"""


class SwapError(StateError):
    """The swap cannot go on (another configuration, or the hold ran out)."""


def released(owner: str | None, now: float) -> bool:
    """May an instance whose shard was taken take it back? Yes when a promotion released
    it ('' owner) or a swap's hold ran out; never from another instance."""
    if not owner:
        return True
    if owner.startswith(HOLD_PREFIX):
        return float(owner[len(HOLD_PREFIX) :]) < now
    return False


@dataclass
class Green:
    """The new model in the live namespace's index space, as staged so far."""

    model: FactorModel
    data: Interactions
    stamps: np.ndarray  # each entry's time, aligned with data.by_user.data
    trained_at: float
    dropped: int = 0  # interactions of the new data the deletion history had forgotten
    carried: int = 0  # interactions the live model learned after the snapshot
    # ... and those it holds that the new data lacks although they are older than the
    # snapshot (they arrived after it was taken, or it left them out): kept all the same
    carried_older: int = 0
    # What the live model held at the promotion, split by where green has it from: the new
    # data (in_both), or carried over (newer than the snapshot, or older): every one of
    # them is one of these, live = in_both + live_newer + live_older
    live: int = 0
    in_both: int = 0
    live_newer: int = 0
    live_older: int = 0
    snapshot_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rounds: int = 0
    staged: bool = False
    held_s: float = 0.0
    generations: dict[int, int] = field(default_factory=dict)


class Swap:
    def __init__(self, state: ModelState) -> None:
        self.state = state
        self.staged = ModelState(state.client, state.layout.namespace, stage=STAGED)
        self.meta = state.meta()
        self._promote = state.client.register_script(_PROMOTE)

    # ----- building ---------------------------------------------------------------------

    def prepare(
        self,
        model: FactorModel,
        data: Interactions,
        stamps: np.ndarray,
        trained_at: float | None = None,
    ) -> Green:
        """The new model with the live indices; nothing staged yet. `trained_at` defaults
        to the newest interaction of the new data (a snapshot holds nothing newer)."""
        if model.params != self.meta.params:
            raise SwapError(
                f"the new model's hyperparameters {model.params} differ from the live "
                f"{self.meta.params}: a live swap keeps them; stop the service and load it "
                "with --replace"
            )
        times = np.asarray(stamps, dtype=np.float64)
        if trained_at is None:
            trained_at = float(times.max()) if len(times) else 0.0
        users = self.state.allocate("user", model.user_ids.tolist())
        items = self.state.allocate("item", model.item_ids.tolist())
        shape = self._shape()
        k = model.params.factors
        xs = np.zeros((shape[0], k), np.float32)
        ys = np.zeros((shape[1], k), np.float32)
        xs[users], ys[items] = model.user_factors, model.item_factors
        live = FactorModel.create(
            self.state.ids_of("user", range(shape[0])),
            self.state.ids_of("item", range(shape[1])),
            xs, ys, model.params,
        )  # fmt: skip
        owners = np.repeat(np.arange(data.shape[0]), np.diff(data.by_user.indptr))
        new_users = users[owners]
        new_items = items[data.by_user.indices]
        moved = Interactions.from_triples(
            new_users, new_items, data.by_user.data.astype(np.float64), shape, model.params.kind
        )
        times = np.minimum(times, trained_at)  # a snapshot holds nothing newer
        moved_stamps = pair_timestamps(moved, new_users, new_items, times, model.params.kind)
        self._clear_staged()
        green = Green(live, moved, moved_stamps, float(trained_at))
        green.snapshot_keys = moved.entry_keys.copy()  # sorted: what the new data holds
        return green

    def reconcile(self, green: Green) -> int:
        """Bring green up to the live deletion history and carry over what the live model
        learned after the snapshot; re-solve and stage the rows that changed. Returns the
        interactions changed this round."""
        green.rounds += 1
        self._grow(green)
        tombstones = self._tombstones(green.data.shape)
        covered = covered_entries(green.data, green.stamps, *tombstones)
        owners = np.repeat(np.arange(green.data.shape[0]), np.diff(green.data.by_user.indptr))
        columns = green.data.by_user.indices.astype(np.int64)
        carry_users, carry_items, carry_weights, carry_ts = self._learned_after(green)
        removed = int(covered.sum())
        if not removed and not len(carry_users):
            return 0
        change = Change(
            remove_pair_users=owners[covered], remove_pair_items=columns[covered],
            add_users=carry_users, add_items=carry_items, add_weights=carry_weights,
        )  # fmt: skip
        model, data, _ = update(green.model, green.data, change, _TOUCHED_ONLY)
        # Each remaining entry keeps its time; a carried one has the live model's.
        times = np.zeros(data.nnz)
        pos, found = locate(green.data.entry_keys, data.entry_keys)
        times[found] = green.stamps[pos[found]]
        carried_keys = carry_users * data.shape[1] + carry_items
        pos, found = locate(carried_keys, data.entry_keys) if len(carried_keys) else (None, None)
        if found is not None:
            times[found] = carry_ts[pos[found]]
        touched_users = np.unique(np.concatenate([owners[covered], carry_users]))
        touched_items = np.unique(np.concatenate([columns[covered], carry_items]))
        green.model, green.data, green.stamps = model, data, times
        green.dropped += removed
        older = int((carry_ts <= green.trained_at).sum()) if len(carry_ts) else 0
        green.carried += len(carry_users) - older
        green.carried_older += older
        if green.staged:
            self._stage_rows(green, touched_users, touched_items)
        return removed + len(carry_users)

    def stage(self, green: Green, progress=None) -> None:
        """Write green whole into the staged keys (the long part; the service runs)."""
        self._clear_staged()
        write_shards(self.staged, green.model, green.data, green.stamps, self.meta.shards,
                     progress)  # fmt: skip
        green.staged = True

    # ----- promotion --------------------------------------------------------------------

    def promote(self, green: Green, hold_s: float = HOLD_S) -> Green:
        """Hold every shard, take in what the live model did last, promote green."""
        if not green.staged:
            raise SwapError("nothing staged: stage the new model before promoting it")
        shards = range(self.meta.shards)
        started = time.monotonic()
        deadline = time.time() + hold_s
        holder = f"{HOLD_PREFIX}{deadline!r}"
        tokens = {s: a.token for s, a in self.state.log.acquire(shards, holder).items()}
        try:
            self.reconcile(green)
            if time.time() > deadline - 1.0:
                raise SwapError(
                    f"the hold of {hold_s:g} s ran out before promotion: nothing was "
                    "promoted; run the swap again (a longer --hold)"
                )
            generations = self._switch(tokens)
        except BaseException:
            self._release(tokens)  # the service takes its shards back now, not at the deadline
            raise
        finally:
            self.state.ring()  # the service reads its shards' new commits now
        green.held_s = time.monotonic() - started
        green.generations = generations
        self._clear_staged()
        return green

    def _switch(self, tokens: dict[int, int]) -> dict[int, int]:
        groups: list[list[int]] = (
            [[s] for s in sorted(tokens)]
            if isinstance(self.state.client, redis.RedisCluster)
            else [sorted(tokens)]  # one server: every shard in one script, all or nothing
        )
        out: dict[int, int] = {}
        for group in groups:
            keys: list[str] = []
            args: list[object] = []
            for shard in group:
                live, staged = self.state.layout.shard(shard), self.staged.layout.shard(shard)
                keys += [live.fence, live.owner, live.gen, live.head, live.changes]
                keys += [live.named(name) for name in _SWAPPED]
                keys += [staged.named(name) for name in _SWAPPED]
                args += [tokens[shard], os.urandom(8).hex()]
            result = self._promote(keys=keys, args=args)
            if result == -1:
                raise SwapError(
                    f"shards {group} were taken from the swap before promotion"
                    + (f"; shards {sorted(out)} were promoted" if out else ": nothing promoted")
                )
            out.update(zip(group, (int(g) for g in result), strict=True))
        return out

    def _release(self, tokens: dict[int, int]) -> None:
        """Give back the shards this swap still holds (those it promoted are released)."""
        for shard, token in tokens.items():
            keys = self.state.layout.shard(shard)
            self.state.client.eval(_RELEASE, 2, keys.fence, keys.owner, token)

    # ----- internals --------------------------------------------------------------------

    def _shape(self) -> tuple[int, int]:
        meta = self.state.meta()
        return meta.users, meta.items

    def _grow(self, green: Green) -> None:
        """Ids the live namespace met since (new users, new items) join green empty."""
        users, items = self._shape()
        have_u, have_i = green.model.shape
        if users > have_u or items > have_i:
            green.model = green.model.with_ids(
                self.state.ids_of("user", range(have_u, users)),
                self.state.ids_of("item", range(have_i, items)),
            )
            green.data = green.data.resized(green.model.shape)

    def _tombstones(
        self, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The live deletion history by index: each user's and item's latest deletion
        time (-inf: none), and the pairs' (keys, times)."""
        user_t = np.full(shape[0], -np.inf)
        item_t = np.full(shape[1], -np.inf)
        pairs: dict[int, float] = {}
        pipe = self.state.client.pipeline(transaction=False)
        for shard in range(self.meta.shards):
            pipe.hgetall(self.state.layout.shard(shard).tombstones)
        for found in pipe.execute():
            for name, at in found.items():
                kind, *rest = name.decode().split(":")
                t = float(at)
                if kind == "p":
                    key = int(rest[0]) * shape[1] + int(rest[1])
                    pairs[key] = max(pairs.get(key, -np.inf), t)
                elif kind == "u" and int(rest[0]) < shape[0]:
                    user_t[int(rest[0])] = max(user_t[int(rest[0])], t)
                elif kind == "i" and int(rest[0]) < shape[1]:
                    item_t[int(rest[0])] = max(item_t[int(rest[0])], t)
        # Deletions that named an id before the live namespace had seen it: green's ids are
        # allocated by now, so their tombstones by id reach green's rows too.
        unseen = self.state.read_unseen()
        if unseen:
            found = {
                side: dict(zip(ids, self.state.lookup(side, ids).tolist(), strict=True))
                for side, ids in (
                    ("user", sorted({u for _, u, _ in unseen if u is not None})),
                    ("item", sorted({i for _, _, i in unseen if i is not None})),
                )
            }
            for (scope, user, item), t in unseen.items():
                u = found["user"].get(user, -1) if user is not None else -1
                i = found["item"].get(item, -1) if item is not None else -1
                if scope == "user" and 0 <= u < shape[0]:
                    user_t[u] = max(user_t[u], t)
                elif scope == "item" and 0 <= i < shape[1]:
                    item_t[i] = max(item_t[i], t)
                elif scope == "pair" and 0 <= u < shape[0] and 0 <= i < shape[1]:
                    key = u * shape[1] + i
                    pairs[key] = max(pairs.get(key, -np.inf), t)
        keys = np.fromiter(pairs, dtype=np.int64, count=len(pairs))
        times = np.fromiter(pairs.values(), dtype=np.float64, count=len(pairs))
        order = np.argsort(keys)
        return user_t, item_t, keys[order], times[order]

    def _learned_after(self, green: Green) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The live model's interactions that green lacks, sorted by pair: those learned
        after the snapshot, and those older than it that it does not hold (they arrived
        after it was taken): the live rows hold nothing a tombstone covers, so nothing of
        what the live model holds is lost. Also counts what the live model holds."""
        shape = green.data.shape
        users, items, weights, stamps = [], [], [], []
        live = 0
        for shard in range(self.meta.shards):
            for user, row in self.state.read_shard_rows("user", shard).items():
                live += len(row)
                if len(row):
                    users.append(np.full(len(row), user, np.int64))
                    items.append(row["other"].astype(np.int64))
                    weights.append(row["weight"].astype(np.float64))
                    stamps.append(row["ts"].astype(np.float64))
        green.live = live
        if not users:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0), np.empty(0)
        u, i = np.concatenate(users), np.concatenate(items)
        w, t = np.concatenate(weights), np.concatenate(stamps)
        keys = u * shape[1] + i
        _, in_snapshot = locate(green.snapshot_keys, keys)
        green.in_both = int(in_snapshot.sum())
        green.live_newer = int((~in_snapshot & (t > green.trained_at)).sum())
        green.live_older = int((~in_snapshot & (t <= green.trained_at)).sum())
        _, present = locate(green.data.entry_keys, keys)
        keep = ~present & (u < shape[0]) & (i < shape[1])
        order = np.argsort(keys[keep])
        return u[keep][order], i[keep][order], w[keep][order], t[keep][order]

    def _stage_rows(self, green: Green, users: np.ndarray, items: np.ndarray) -> None:
        """Stage again what a reconcile changed: the touched rows' factors, the touched
        users' rows, the touched items' slices in every shard, each shard's status."""
        shards = self.meta.shards
        writes: dict[int, ShardWrite] = defaultdict(ShardWrite)
        by_user, stamps = green.data.by_user, stored_times(green.stamps)
        for side, rows, factors in (("user", users, green.model.user_factors),
                                    ("item", items, green.model.item_factors)):  # fmt: skip
            for n in rows.tolist():
                writes[shard_of(n, shards)].factors[side][n] = factors[n]
        for n in users.tolist():
            writes[shard_of(n, shards)].rows["user"][n] = user_row(by_user, stamps, n)
        by_item = green.data.by_item
        for i in items.tolist():
            start, stop = by_item.indptr[i], by_item.indptr[i + 1]
            owners = by_item.indices[start:stop].astype(np.int64)
            pos, _ = locate(green.data.entry_keys, owners * green.data.shape[1] + i)
            for shard in range(shards):
                mine = shard_of(owners, shards) == shard
                piece = np.empty(int(mine.sum()), dtype=ROW_DTYPE)
                piece["other"], piece["weight"] = owners[mine], by_item.data[start:stop][mine]
                piece["ts"] = stamps[pos[mine]]
                writes[shard].rows["item"][i] = piece  # empty: the slice goes
        shares = objective_shares(green.model, green.data, shards)
        counts = np.bincount(
            shard_of(np.repeat(np.arange(green.data.shape[0]), np.diff(by_user.indptr)), shards),
            minlength=shards,
        )
        for shard in range(shards):
            writes[shard].status = {
                "interactions": int(counts[shard]), "loss": repr(shares[shard]),
                "consolidation": "sweeping",
            }  # fmt: skip
        for shard, write in writes.items():
            self.staged.log.commit({shard: write}, {shard: None})

    def _clear_staged(self) -> None:
        """Every staged key (an earlier swap's that stopped half-way, or this one's
        counters once promoted)."""
        for shard in range(self.meta.shards):
            self.state.client.delete(*self.staged.layout.shard(shard).every_key())
