"""One batch of an owner's work: its shards' inboxes in, edited rows and exact solves out.

Per owned shard: the events routed to it (deduplicated by source offset), and the parts
of requests it was asked to do. The batch edits the shard's users' rows and item slices
(deletions and purges first, then interactions, under the time rule), re-solves every
touched user, then every item it owns whose data changed or that it was asked to solve,
against the replica's current factors; items owned elsewhere become `Solve` messages to
their shard. What it computes is written by the engine (engine.py), shard by shard.

Until the commit, its only effect outside itself is on the replica's factors (the
solves); `undo` puts them back.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from consumer.consolidation.forgetting import Forgetting, Moved
from consumer.events import Deletion, Interaction, Source
from consumer.shards.ledger import touched_terms
from consumer.shards.messages import Done, Message, Purge, Routed, Solve, Waiter
from consumer.shards.requests import Request, item_part, items_part, purge_part, user_part
from consumer.state.layout import (
    ROW_DTYPE,
    item_tombstone,
    pair_tombstone,
    shard_of,
    user_tombstone,
)
from consumer.state.store import EMPTY_ROW, SIDES
from unlearn_core.active_set import confidences
from unlearn_core.objective import all_pairs_term
from unlearn_core.rows import merge_events
from unlearn_core.solve import solve_rows

# The largest value a float32 holds: stored weights and the confidences built from them.
F32_MAX = float(np.finfo(np.float32).max)


class Unprocessable(Exception):
    """Events the state cannot take (a pair's weights sum beyond float32, a solve that
    gives factors no float32 holds): named, so the service dead-letters exactly them and
    applies the rest of the batch."""

    def __init__(self, sources: list[Source], detail: str) -> None:
        super().__init__(detail)
        self.sources = sources
        self.detail = detail


@dataclass
class ShardWork:
    """What one owned shard has to do in a batch, read from its inbox (or handed to it by
    another shard of the same owner in the same batch)."""

    shard: int
    last_entry: str | None = None  # the last inbox entry read (None: nothing read)
    events: list[Routed] = field(default_factory=list)  # fresh: never applied here
    solves: list[Solve] = field(default_factory=list)
    purges: list[Purge] = field(default_factory=list)
    dones: list[Done] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # partition key -> last offset taken

    def empty(self) -> bool:
        return not (self.events or self.solves or self.purges or self.dones or self.seen)


@dataclass(frozen=True)
class LocalPart:
    """A part of a request done in this batch, durable with shard `shard`'s write."""

    waiter: Waiter
    shard: int
    removed: int = 0
    kept: int = 0


@dataclass
class Figures:
    interactions_applied: int = 0
    interactions_new: int = 0  # pairs not stored before (the count grows)
    interactions_late: int = 0  # covered by a deletion processed in an earlier batch
    interactions_suppressed: int = 0  # covered by a deletion of this batch
    removed: int = 0  # stored interactions removed
    learned_ts: list[float] = field(default_factory=list)


class Batch:
    def __init__(self, engine, work: dict[int, ShardWork]) -> None:  # engine: Engine
        self.engine = engine
        self.state = engine.state
        self.shards = engine.shards
        self.params = engine.params
        self.kind = engine.params.kind
        self.owned: set[int] = set(engine.owned)
        self.work = work
        self.now = engine.clock()
        self.user_rows: dict[int, np.ndarray] = {}
        self.original_users: dict[int, np.ndarray] = {}
        self.slices: dict[tuple[int, int], np.ndarray] = {}
        self.original_slices: dict[tuple[int, int], np.ndarray] = {}
        self.touched_users: set[int] = set()
        self.changed_slices: set[tuple[int, int]] = set()
        self.tombstones: dict[int, dict[str, float]] = defaultdict(dict)
        self.stored_tombstones: dict[int, dict[str, float]] = {}
        self.requests: dict[str, Request] = {}  # created in this batch, by coordinator key
        self.parts: list[LocalPart] = []
        self.messages: dict[int, list[Message]] = defaultdict(list)
        self.items: dict[int, np.ndarray] = {}  # items solved here -> their row (after)
        self.items_before: dict[int, np.ndarray] = {}
        self.figures = Figures()
        self.replaced: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.loss_delta: dict[int, float] = defaultdict(float)  # shard -> objective change
        # Per purge (by its waiter): pairs removed, stored or arriving with it.
        self._purged: dict[Waiter, set[tuple[int, int]]] = defaultdict(set)
        # Per pair or user request (by source): the pairs it removed.
        self._removed_by: dict[str, set[tuple[int, int]]] = {}
        self.to_solve: set[int] = set()
        # Items solved because data left them (a deletion's part, an item forgotten whole)
        self.forgetting_items: set[int] = set()
        self.forgot = Forgetting()  # what it forgot, once solved (forgetting())

    # ----- planning -------------------------------------------------------------------

    def plan_item_requests(self) -> None:
        """An item forgotten whole: its coordinator (the item's shard) asks every shard to
        purge the item's interactions with its users; this owner's shards do it now."""
        for shard, work in list(self.work.items()):
            for routed in work.events:
                event = routed.event
                if not isinstance(event, Deletion) or event.scope != "item":
                    continue
                if routed.names_unseen:
                    continue  # nothing to purge (_edit_shard)
                request = self._request(shard, routed)
                request.parts = {purge_part(t): None for t in range(self.shards)}
                request.parts[item_part(shard)] = None
                for target in range(self.shards):
                    purge = Purge(routed.item, event.ts, Waiter(shard, request.source,
                                                                 purge_part(target)))  # fmt: skip
                    if target in self.owned:
                        self.work.setdefault(target, ShardWork(target)).purges.append(purge)
                    else:
                        self.messages[target].append(purge)

    def _request(self, shard: int, routed: Routed) -> Request:
        event = routed.event
        assert isinstance(event, Deletion)
        request = Request(event, shard, routed.user, routed.item, {}, reapplied=routed.reapplied)
        self.requests[request.source] = request
        return request

    # ----- reading --------------------------------------------------------------------

    def read(self) -> None:
        fields: dict[int, set[str]] = defaultdict(set)
        users: dict[int, set[int]] = defaultdict(set)
        items: dict[int, set[int]] = defaultdict(set)
        for shard, work in self.work.items():
            for routed in work.events:
                u, i, event = routed.user, routed.item, routed.event
                if routed.names_unseen:
                    continue  # nothing of it is stored
                if isinstance(event, Interaction):
                    fields[shard] |= {pair_tombstone(u, i), user_tombstone(u), item_tombstone(i)}
                    users[shard].add(u)
                    items[shard].add(i)
                elif event.scope == "pair":
                    fields[shard].add(pair_tombstone(u, i))
                    users[shard].add(u)
                    items[shard].add(i)
                elif event.scope == "user":
                    fields[shard].add(user_tombstone(u))
                    users[shard].add(u)
            for purge in work.purges:
                fields[shard].add(item_tombstone(purge.item))
                items[shard].add(purge.item)
        self.stored_tombstones = self.state.read_tombstones(
            {s: sorted(f) for s, f in fields.items()}
        )
        self._load(users, items)
        # Whole-user deletions reach the items of the user's row; purges the users of the
        # item's slice.
        more_items: dict[int, set[int]] = defaultdict(set)
        more_users: dict[int, set[int]] = defaultdict(set)
        for shard, work in self.work.items():
            for routed in work.events:
                event = routed.event
                if isinstance(event, Deletion) and event.scope == "user" and routed.user >= 0:
                    row = self.user_rows[routed.user]
                    more_items[shard] |= set(row["other"][row["ts"] <= event.ts].tolist())
            for purge in work.purges:
                piece = self.slices[(shard, purge.item)]
                more_users[shard] |= set(piece["other"][piece["ts"] <= purge.ts].tolist())
        self._load(more_users, more_items)

    def _load(self, users: dict[int, set[int]], items: dict[int, set[int]]) -> None:
        wanted_users = np.array(
            sorted({u for us in users.values() for u in us} - self.user_rows.keys()), np.int64
        )
        wanted_slices = {
            s: sorted(i for i in its if (s, i) not in self.slices) for s, its in items.items()
        }
        if len(wanted_users):
            rows = self.state.read_rows("user", wanted_users, self.shards)
            for u, row in zip(wanted_users.tolist(), rows, strict=True):
                self.user_rows[u] = self.original_users[u] = row
        found = self.state.read_slices(wanted_slices)
        for shard, its in wanted_slices.items():
            for i in its:
                piece = found.get((shard, i), EMPTY_ROW)
                self.slices[(shard, i)] = self.original_slices[(shard, i)] = piece

    # ----- editing ----------------------------------------------------------------------

    def edit(self) -> None:
        """Each shard's deletions and purges, then its interactions (time rule)."""
        for shard, work in self.work.items():
            self._edit_shard(shard, work)

    def _edit_shard(self, shard: int, work: ShardWork) -> None:
        """The shard's events in their order, as one event at a time would apply them
        (so neither the state nor a receipt depends on where a batch was cut): an
        interaction is learned unless a tombstone (stored, or of a deletion before it in
        this batch) covers it; a deletion removes what its user's row holds at its place,
        the interactions before it included, and keeps what is newer. Interactions are
        merged into a row in runs, up to the next deletion of its user. Then the purges
        (items forgotten whole), after every event."""
        stored = self.stored_tombstones.get(shard, {})
        pending: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
        sources: dict[tuple[int, int], list[Source]] = defaultdict(list)
        figures = self.figures
        for routed in work.events:
            event = routed.event
            if isinstance(event, Interaction):
                u, i = routed.user, routed.item
                names = (pair_tombstone(u, i), user_tombstone(u), item_tombstone(i))
                earlier = max(stored.get(n, -np.inf) for n in names)
                here = max(self.tombstones[shard].get(n, -np.inf) for n in names)
                if event.ts <= max(earlier, routed.unseen_limit):
                    figures.interactions_late += 1  # an earlier batch's deletion covers it
                elif event.ts <= here:
                    figures.interactions_suppressed += 1  # a deletion before it, here
                else:
                    pending[u].append((i, event.weight, event.ts))
                    sources[(u, i)].append(event.source)
                    figures.interactions_applied += 1
                    figures.learned_ts.append(event.ts)
                continue
            if routed.names_unseen:
                # Nothing of it is stored: its tombstone by id was kept as it was routed
                # (ModelState.resolve_deletions); the coordinator's part is the request.
                request = self._request(shard, routed)
                request.parts[user_part(shard)] = None
                self._removed_by[request.source] = set()
                continue
            if event.scope == "item":
                continue
            u, i, t = routed.user, routed.item, event.ts
            self._learn(shard, u, pending.pop(u, []), sources)
            request = self._request(shard, routed)
            removed: set[tuple[int, int]] = set()
            if event.scope == "pair":
                if self._drop_user_pairs(u, {i}, t):
                    removed.add((u, i))
                self._drop_slice_users(shard, i, {u}, t)
                self._tombstone(shard, pair_tombstone(u, i), t, stored)
                # One item: a comparison (np.isin sorts; it was 40 % of the edit's time).
                request.kept = int(bool(_matches(self.user_rows[u]["other"], {i}).any()))
            else:
                for j in self._take_user_row(u, t):
                    removed.add((u, j))
                    self._drop_slice_users(shard, j, {u}, t)
                self._tombstone(shard, user_tombstone(u), t, stored)
                request.kept = len(self.user_rows[u])
            request.parts[user_part(shard)] = None
            self._removed_by[request.source] = removed
        for u, events in pending.items():
            self._learn(shard, u, events, sources)
        for purge in work.purges:
            victims = self._take_slice(shard, purge.item, purge.ts)
            purged = self._purged[purge.waiter]
            for v in victims:
                self._drop_user_pairs(v, {purge.item}, purge.ts)
                purged.add((v, purge.item))
            self._tombstone(shard, item_tombstone(purge.item), purge.ts, stored)

    def _learn(
        self,
        shard: int,
        u: int,
        events: list[tuple[int, float, float]],
        sources: dict[tuple[int, int], list[Source]],
    ) -> None:
        """A run of the user's interactions into its row and the items' slices."""
        if not events:
            return
        before = len(self.user_rows[u])
        merged = _merge(self.user_rows[u], events, self.kind)
        _check_weights(u, merged, sources, self.params.alpha)
        self.user_rows[u] = merged
        self.touched_users.add(u)
        self.figures.interactions_new += len(merged) - before
        by_item: dict[int, list[tuple[int, float, float]]] = defaultdict(list)
        for i, w, t in events:
            by_item[i].append((u, w, t))
        for i, item_events in by_item.items():
            self.slices[(shard, i)] = _merge(self.slices[(shard, i)], item_events, self.kind)
            self.changed_slices.add((shard, i))

    def _tombstone(self, shard: int, name: str, t: float, stored: dict[str, float]) -> None:
        if t > max(stored.get(name, -np.inf), self.tombstones[shard].get(name, -np.inf)):
            self.tombstones[shard][name] = t

    def _drop_user_pairs(self, user: int, items: set[int], t: float) -> int:
        row = self.user_rows[user]
        drop = _matches(row["other"], items) & (row["ts"] <= t)
        if drop.any():
            self.user_rows[user] = row[~drop]
            self.touched_users.add(user)
            self.figures.removed += int(drop.sum())
        return int(drop.sum())

    def _take_user_row(self, user: int, t: float) -> list[int]:
        row = self.user_rows[user]
        drop = row["ts"] <= t
        if drop.any():
            self.user_rows[user] = row[~drop]
            self.touched_users.add(user)
            self.figures.removed += int(drop.sum())
        return row["other"][drop].astype(np.int64).tolist()

    def _drop_slice_users(self, shard: int, item: int, users: set[int], t: float) -> None:
        piece = self.slices[(shard, item)]
        drop = _matches(piece["other"], users) & (piece["ts"] <= t)
        if drop.any():
            self.slices[(shard, item)] = piece[~drop]
            self.changed_slices.add((shard, item))

    def _take_slice(self, shard: int, item: int, t: float) -> list[int]:
        piece = self.slices[(shard, item)]
        drop = piece["ts"] <= t
        if drop.any():
            self.slices[(shard, item)] = piece[~drop]
            self.changed_slices.add((shard, item))
        return piece["other"][drop].astype(np.int64).tolist()

    # ----- the parts of requests ---------------------------------------------------------

    def plan_parts(self) -> None:
        """Which items this owner solves now, and the parts it completes or asks for."""
        owned = self.owned
        changed_items: dict[int, set[int]] = defaultdict(set)  # item's shard -> items
        for _, i in self.changed_slices:
            changed_items[shard_of(i, self.shards)].add(i)
        to_solve: set[int] = {i for s, its in changed_items.items() if s in owned for i in its}
        solved_for: list[tuple[Solve, int]] = []
        for shard, work in self.work.items():
            for solve in work.solves:
                to_solve.update(solve.items)
                solved_for.append((solve, shard))
        # Pairs and users: the coordinator's own part, and the items whose slices changed.
        asked: dict[int, set[int]] = defaultdict(set)  # remote shard -> items with a waiter
        for request in self.requests.values():
            if request.scope == "item" and not request.names_unseen:
                continue
            removed = self._removed_by[request.source]
            request.removed = len(removed)  # kept: counted at its place (_edit_shard)
            self.parts.append(LocalPart(Waiter(request.coordinator, request.source,
                                               user_part(request.coordinator)),
                                        request.coordinator))  # fmt: skip
            by_shard: dict[int, list[int]] = defaultdict(list)
            for _, j in sorted(removed):
                by_shard[shard_of(j, self.shards)].append(j)
            for target, items in by_shard.items():
                part = items_part(target)
                request.parts[part] = None
                request.items[target] = items
                waiter = Waiter(request.coordinator, request.source, part)
                if target in owned:
                    self.parts.append(LocalPart(waiter, target))
                else:
                    self.messages[target].append(Solve(tuple(items), waiter))
                    asked[target].update(items)
        # Interactions' items owned elsewhere: solved there, nobody waits.
        for target, items in changed_items.items():
            rest = sorted(items - asked[target])
            if target not in owned and rest:
                self.messages[target].append(Solve(tuple(rest), None))
        for solve, shard in solved_for:
            if solve.waiter is not None:
                self.parts.append(LocalPart(solve.waiter, shard))
                self.forgetting_items.update(solve.items)
        for shard, work in self.work.items():
            for purge in work.purges:
                kept = len(self.slices[(shard, purge.item)])
                self.parts.append(
                    LocalPart(purge.waiter, shard, len(self._purged[purge.waiter]), kept)
                )
        self.to_solve = to_solve

    def add_final_items(self, items: dict[int, Waiter]) -> None:
        """Items forgotten whole whose every purge is durable: their coordinator (this
        owner) re-solves them now, the request's last part."""
        for item, waiter in items.items():
            self.to_solve.add(item)
            self.forgetting_items.add(item)
            self.parts.append(LocalPart(waiter, waiter.shard))

    # ----- solving ----------------------------------------------------------------------

    def load_items(self) -> None:
        """The full rows of the items to solve: slices edited here, the rest from Redis."""
        if not self.to_solve:
            return
        items = sorted(self.to_solve)
        wanted = {s: [i for i in items if (s, i) not in self.slices] for s in range(self.shards)}
        found = self.state.read_slice_bytes(wanted)
        for i in items:
            after, before = [], []
            for s in range(self.shards):
                piece = self.slices.get((s, i))
                if piece is not None:
                    after.append(piece.tobytes())
                    before.append(self.original_slices[(s, i)].tobytes())
                else:
                    raw = found.get((s, i))
                    if raw is not None:
                        after.append(raw)
                        before.append(raw)
            # Unsorted: a solve and the objective need the pairs, not their order.
            self.items[i] = np.frombuffer(b"".join(after), dtype=ROW_DTYPE)
            self.items_before[i] = np.frombuffer(b"".join(before), dtype=ROW_DTYPE)

    def solve(self) -> None:
        """Every touched user, then every item to solve, exactly; the objective's change."""
        engine = self.engine
        replica = engine.replica
        users = np.array(sorted(self.touched_users), dtype=np.int64)
        items = np.array(sorted(self.items), dtype=np.int64)
        replica.grow("item", int(items.max(initial=-1)) + 1)
        for _, i in self.changed_slices:
            replica.grow("item", i + 1)
        before = self._terms(self.original_users, self.items_before, users, items)
        gramians_before = {side: replica.gramians.full(side) for side in SIDES}
        if len(users):
            self._solve_side("user", users, [self.user_rows[int(u)] for u in users])
        if len(items):
            self._solve_side("item", items, [self.items[int(i)] for i in items])
        after = self._terms(self.user_rows, self.items, users, items)
        for shard in set(before) | set(after):
            self.loss_delta[shard] += after.get(shard, 0.0) - before.get(shard, 0.0)
        global_change = all_pairs_term(
            replica.gramians.full("user"), replica.gramians.full("item"), self.params
        ) - all_pairs_term(gramians_before["user"], gramians_before["item"], self.params)
        if global_change:
            written = sorted({*self.work, *self.loss_delta})
            self.loss_delta[written[0]] += global_change

    def _solve_side(self, side: str, rows: np.ndarray, records: list[np.ndarray]) -> None:
        engine, replica = self.engine, self.engine.replica
        other = "item" if side == "user" else "user"
        matrix = _csr(records, len(replica.factors[other]))
        solved = solve_rows(
            matrix, np.arange(len(rows)), replica.factors[other], self.params,
            replica.gramians.full(other), num_threads=engine.solve_threads,
        )  # fmt: skip
        bad = ~np.isfinite(solved).all(axis=1) | (np.abs(solved).max(axis=1) > F32_MAX)
        if bad.any():
            culprits = self._sources_of(side, rows[bad])
            if culprits:
                raise Unprocessable(culprits, f"a {side} solve gave factors no float32 holds")
            solved[bad] = 0.0  # nothing of this batch caused it: the row carries nothing
        self.replaced.append((side, rows, replica.factors[side][rows].copy()))
        replica.set_rows(side, rows, solved)

    def _sources_of(self, side: str, rows: np.ndarray) -> list[Source]:
        """The batch's events that touched these rows."""
        wanted = set(rows.tolist())
        out = []
        for work in self.work.values():
            for routed in work.events:
                index = routed.user if side == "user" else routed.item
                if index in wanted:
                    out.append(routed.event.source)
        return out

    def forgetting(self) -> Forgetting:
        """What the batch forgot, once solved: the pairs removed, and the rows re-solved
        because data left them, with how far each moved and its neighbours (the start of a
        forgetting cycle, consumer/consolidation)."""
        out = Forgetting()
        pairs = set().union(*self._removed_by.values(), *self._purged.values())
        if not pairs:
            return out
        out.pairs = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
        users = {u for u, _ in pairs} & self.touched_users
        items = ({i for _, i in pairs} | self.forgetting_items) & set(self.items)
        old = {side: {} for side in SIDES}
        for side, rows, values in self.replaced:
            for row, value in zip(rows.tolist(), values, strict=True):
                old[side].setdefault(row, value)
        factors = self.engine.replica.factors
        for side, chosen, records in (
            ("user", users, self.user_rows),
            ("item", items, self.items),
        ):
            rows = np.array(sorted(r for r in chosen if r in old[side]), dtype=np.int64)
            if not len(rows):
                continue
            before = np.array([old[side][r] for r in rows.tolist()], dtype=np.float64)
            movements = np.linalg.norm(factors[side][rows] - before, axis=1)
            data = [records[int(r)] for r in rows]
            lengths = np.array([len(d) for d in data], dtype=np.int64)
            joined = np.concatenate(data) if len(data) else EMPTY_ROW
            out.moved[side] = Moved(
                rows, movements, lengths, joined["other"].astype(np.int64),
                confidences(joined["weight"], self.params),
            )  # fmt: skip
            out.touched[side] = set(rows.tolist())
        return out

    def _terms(
        self,
        user_rows: dict[int, np.ndarray],
        item_rows: dict[int, np.ndarray],
        users: np.ndarray,
        items: np.ndarray,
    ) -> dict[int, float]:
        replica = self.engine.replica
        return touched_terms(
            user_rows, item_rows, users, items, replica.factors["user"],
            replica.factors["item"], self.params, self.shards,
        )  # fmt: skip

    def undo(self) -> None:
        """Put back the factors the solves replaced, newest first."""
        while self.replaced:
            side, rows, old = self.replaced.pop()
            self.engine.replica.set_rows(side, rows, old)


def _matches(others: np.ndarray, wanted: set[int]) -> np.ndarray:
    """Which entries of a row name one of `wanted` (usually one: a comparison, no sort)."""
    if len(wanted) == 1:
        return others == next(iter(wanted))
    return np.isin(others, list(wanted))


def _merge(row: np.ndarray, events: list[tuple[int, float, float]], kind: str) -> np.ndarray:
    """Events (other index, weight, time) into a stored row (unlearn_core.rows)."""
    other = np.fromiter((e[0] for e in events), np.int64, len(events))
    weight = np.fromiter((e[1] for e in events), np.float64, len(events))
    ts = np.maximum(np.fromiter((e[2] for e in events), np.float64, len(events)), 0.0)
    keys, merged_weight, merged_ts = merge_events(
        row["other"], row["weight"], row["ts"], other, weight, ts,
        kind,  # type: ignore[arg-type]
    )  # fmt: skip
    out = np.empty(len(keys), dtype=ROW_DTYPE)
    with np.errstate(over="ignore"):  # a sum beyond float32 is refused by the caller
        out["other"], out["weight"], out["ts"] = keys, merged_weight, merged_ts
    return out


def _check_weights(
    user: int, row: np.ndarray, sources: dict[tuple[int, int], list[Source]], alpha: float
) -> None:
    """A pair's weights may each be valid and still sum beyond float32, or make a
    confidence (1 + alpha w) no float32 solve can hold: those events are refused."""
    weight = row["weight"].astype(np.float64)
    confidence = 1.0 + alpha * np.abs(weight)
    bad = ~np.isfinite(weight) | (np.abs(weight) > F32_MAX) | (confidence > F32_MAX)
    if bad.any():
        culprits = [src for j in row["other"][bad].tolist() for src in sources[(user, int(j))]]
        if culprits:
            raise Unprocessable(culprits, "the pair's weights sum beyond float32")


def _csr(rows: list[np.ndarray], n_columns: int) -> sp.csr_array:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    if len(rows) and indptr[-1]:
        records = np.concatenate(rows)
        indices, data = records["other"].astype(np.int32), records["weight"].astype(np.float64)
    else:
        indices, data = np.empty(0, np.int32), np.empty(0, np.float64)
    return sp.csr_array((data, indices, indptr), shape=(len(rows), n_columns))
