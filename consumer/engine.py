"""The engine: events in, Unlearn-ALS on the rows they touch, each shard's effect durable
under its owner's fence, receipts once every part of a request is.

Two steps, each its own batch:

- `ingest`: events read from Kafka are routed to the inbox of the shard that owns their
  subject (a user's, or for an item forgotten whole the item's), and their offsets are
  recorded with the state. The events are durable there; the Kafka offsets may follow.
- `step`: the shards this instance owns apply their inboxes (shards/batch.py): rows
  edited, touched users and owned items re-solved exactly, each shard written by one
  fenced script, items owned elsewhere asked of their owner. A deletion's receipt is
  stored once every part of it is durable (shards/requests.py), then published.

Each instance owns the shards that go with the deletions topic's partitions it holds
(layout.owned_shards), so instances never wait for one another: each writes only its own
shards, and a writer that lost a shard (a rebalance) writes nothing more to it. An
engine that owns every shard completes most requests in the step that reads them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from consumer.consolidation.forgetting import Forgetting
from consumer.consolidation.forgetting import decode as decode_forgetting
from consumer.consolidation.forgetting import encode as encode_forgetting
from consumer.consolidation.forgetting import merge as merge_forgetting
from consumer.errors import StateRolledBack
from consumer.events import RETENTION_TOPIC, Deletion, Interaction, Source
from consumer.receipts import Receipt
from consumer.shards.asking import PartsAsked
from consumer.shards.batch import Batch, LocalPart, ShardWork, Unprocessable
from consumer.shards.isolation import isolate
from consumer.shards.ledger import Ledger, exact_shares
from consumer.shards.messages import (
    Done,
    Message,
    Purge,
    Raw,
    Routed,
    Solve,
    Waiter,
    decode,
    encode,
)
from consumer.shards.receipting import Receipts
from consumer.shards.replica import Replica
from consumer.shards.requests import Request, item_part
from consumer.shards.routing import advance, marks, route
from consumer.state.layout import shard_of
from consumer.state.shard_log import ShardLost, ShardWrite
from consumer.state.store import SIDES, ModelState, NamespaceReplaced, StateError
from unlearn_core.convergence import relative_change
from unlearn_core.model import pair_scores

log = logging.getLogger("unlearn.engine")

SAMPLE_PAIRS = 4096
PART_RETRY_S = 10.0  # a part asked of another shard, consumed there but not done: again
INBOX_ENTRIES = 64  # inbox entries read per shard and step


class BatchFailed(Exception):
    """The batch failed before anything of it was written (its in-memory effects undone):
    some event in it cannot be processed. The engine splits it to find which."""


Reject = Callable[[list[Routed], str], None]  # dead-letter these events, durably


@dataclass
class IngestOutcome:
    applied: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> offset
    resent: list[Receipt] = field(default_factory=list)  # replayed deletions, answered
    events_replayed: int = 0
    routed: int = 0  # events put into shards' inboxes


@dataclass
class BatchOutcome:
    receipts: list[Receipt] = field(default_factory=list)  # new, to publish
    resent: list[Receipt] = field(default_factory=list)  # replayed deletions
    applied: dict[str, int] = field(default_factory=dict)  # ingest: "topic:partition" -> offset
    interactions_applied: int = 0
    interactions_applied_new: int = 0  # of them, pairs not stored before (count grows)
    interactions_late: int = 0  # covered by a deletion processed in an earlier batch
    interactions_suppressed: int = 0  # covered by a deletion of this batch (in its receipt)
    events_replayed: int = 0
    removed: int = 0  # stored interactions removed
    users_solved: int = 0
    items_solved: int = 0
    residual: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: read, solve, write
    learned_ts: list[float] = field(default_factory=list)  # event times of what was learned
    loss: float = float("nan")  # the objective on the current data, after the batch
    events: int = 0  # routed events this step took from the inboxes
    parts_asked: int = 0  # messages to other owners' shards
    rejected: list[Routed] = field(default_factory=list)  # dead-lettered in processing
    expired: dict[int, int] = field(default_factory=dict)  # retention: shard -> pairs removed
    lost: set[int] = field(default_factory=set)  # shards another instance took over
    # What the batch forgot, durable (a forgetting cycle starts from it), and every row it
    # re-solved and wrote, per side
    forgetting: list[Forgetting] = field(default_factory=list)
    solved: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {side: [] for side in SIDES}
    )

    def absorb(self, other: BatchOutcome) -> None:
        """Add another step's outcome to this one (several steps of one call)."""
        for name in ("interactions_applied", "interactions_applied_new", "interactions_late",
                     "interactions_suppressed", "events_replayed", "removed", "users_solved",
                     "items_solved", "events", "parts_asked"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.receipts += other.receipts
        self.resent += other.resent
        self.learned_ts += other.learned_ts
        self.rejected += other.rejected
        for shard, count in other.expired.items():
            self.expired[shard] = self.expired.get(shard, 0) + count
        self.lost |= other.lost
        self.forgetting += other.forgetting
        for side in SIDES:
            self.solved[side] += other.solved[side]
        for phase, seconds in other.phases.items():
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        if other.events or other.receipts:
            self.residual = other.residual
        if not np.isnan(other.loss):
            self.loss = other.loss


@dataclass
class Owned:
    """A shard this engine owns, as far as it has committed it."""

    token: int
    cursor: str | None
    seen: dict[str, int]
    pending: dict[str, Request]
    generation: int  # the shard's commits as of this engine's last one
    loss: float = 0.0
    interactions: int = 0


class Engine:
    def __init__(
        self,
        state: ModelState,
        clock: Callable[[], float] = time.time,
        solve_threads: int = 1,
        holder: str = "engine",
        owned: Iterable[int] | None = None,
        part_retry_s: float = PART_RETRY_S,
    ) -> None:
        """`owned`: the shards this engine applies (None: every shard, as a lone instance
        does; the service passes the shards of its deletions partitions as they come)."""
        self.state = state
        self.clock = clock
        self.solve_threads = solve_threads  # BLAS stays at one thread per call
        self.holder = holder
        self.part_retry_s = part_retry_s
        state.load_id()  # an older namespace gets its load's id now, before it is compared
        self.meta = state.meta()
        state.watch_replacement = True
        self.params = self.meta.params
        self.shards = self.meta.shards
        self._sample_seed = np.random.default_rng(0).integers(0, 2**31, 2)
        self.replica = Replica(state, self.meta)
        self.replica.load()
        self.owned: dict[int, Owned] = {}
        # partition key -> the last offset this engine took in: Redis holding less means
        # the state went back in time (a restore, a failover that lost writes).
        self.committed: dict[str, int] = {}
        # shard -> the most commits this engine saw it hold (its own, or on taking it):
        # Redis holding fewer means it went back (a restore), even after a restart of
        # the engine within this process (the service rebuilds it after an outage).
        self.generations: dict[int, int] = {}
        self.ledger = Ledger()  # each shard's share of the objective, and its pairs
        self._skip: set[Source] = set()  # dead-lettered in processing: taken, no effect
        self.asking = PartsAsked(state, clock, part_retry_s)  # parts asked of other shards
        self.receipts = Receipts(state, clock, self.shards)  # stored, unsent, sent again
        self._seen_at: dict[int, tuple[int, str | None]] = {}  # shard -> as last refreshed
        self.ledger.read(self.state, range(self.shards))
        if owned is None:
            self.own(range(self.shards))
            self.reset_objective()
        else:
            self.own(owned)

    @property
    def factors(self) -> dict[str, np.ndarray]:
        return self.replica.factors

    @property
    def gramians(self):
        return self.replica.gramians

    @property
    def loss(self) -> float:
        """The objective on the current data, as the shards' ledgers account it."""
        return self.ledger.loss

    @property
    def interactions(self) -> int:
        return self.ledger.interactions

    # ----- ownership --------------------------------------------------------------------

    def own(self, shards: Iterable[int]) -> None:
        """Apply exactly these shards from now on. A shard taken draws a new token (its
        previous owner's writes are refused from then on) and is read as its previous
        owner left it; the receipts it stored but may never have sent are sent again
        with the next step (`resent`), and its unfinished requests' parts asked again."""
        wanted = set(shards)
        for shard in set(self.owned) - wanted:
            del self.owned[shard]
            # Read again from Redis when next needed: what this engine held of it in
            # memory alone (a cycle's rounds not yet written) is not the shard's.
            self.replica.known.pop(shard, None)
        new = sorted(wanted - set(self.owned))
        if not new:
            return
        for shard, acquired in self.state.log.acquire(new, self.holder).items():
            pending = {k: Request.from_json(v) for k, v in self.state.read_pending(shard).items()}
            self.owned[shard] = Owned(
                acquired.token, acquired.cursor, self.state.read_seen(shard), pending,
                acquired.generation,
            )  # fmt: skip
            self.replica.catch_up(shard, acquired.generation, acquired.head)
            # Fewer commits than this engine saw: a restore; the next step says so.
            self.generations[shard] = max(self.generations.get(shard, 0), acquired.generation)
            self.asking.taken_over(pending)  # their parts asked again at the next step
            self.receipts.taken_over(shard)
        self.ledger.read(self.state, new)

    def commits(self) -> dict[int, tuple[int, tuple[int, str | None]]]:
        """Owned shard -> (its fence token, (its commits so far, the newest one's id))."""
        return {
            s: (o.token, self.replica.known.get(s, (o.generation, None)))
            for s, o in self.owned.items()
        }

    def retention_done(self, shard: int, offset: int) -> bool:
        """Has this owned shard applied its retention deletions up to `offset`, each of
        them complete (every part durable)?"""
        owned = self.owned.get(shard)
        if owned is None:
            return False
        key = Source(RETENTION_TOPIC, shard, offset).partition_key
        waiting = any(r.deletion.source.topic == RETENTION_TOPIC for r in owned.pending.values())
        return owned.seen.get(key, -1) >= offset and not waiting

    def awaiting(self) -> bool:
        """Are requests of this owner waiting on parts asked of other shards, or receipts
        to send again (a step must run now and then even with empty inboxes)?"""
        return self.asking.waiting or self.receipts.resending

    def holds_unsent(self, source: str) -> bool:
        """Is this request's receipt stored, not yet acknowledged, in a shard owned here?"""
        return self.receipts.holds_unsent(source, self.owned)

    def answered(self, sources: Iterable[str]) -> None:
        """Requests the receipts topic shows answered (read back when shards are taken
        over): any of them this engine answers now was answered before."""
        self.receipts.answered(sources)

    def last_commit_time(self, shards: Iterable[int]) -> float | None:
        """When the earliest of these shards last committed (None: never, or unknown)."""
        times = [s.get("updated_at") for s in self.state.read_shard_status(shards).values()]
        return min((float(t) for t in times if t is not None), default=None)

    # ----- ingest: events to their shards' inboxes -------------------------------------

    def ingest(
        self,
        interactions: Sequence[Interaction],
        deletions: Sequence[Deletion],
        acknowledged: Mapping[str, tuple[int, int]] | None = None,
        skipped: Sequence[Source] = (),
        raw: Mapping[Source, Raw] | None = None,
    ) -> IngestOutcome:
        """Route a batch of events to their shards' inboxes and record their offsets.

        `acknowledged`: partition key -> the offsets [first, last] acknowledged to Kafka
        before the state lost them (first -1: every offset up to last): those requests'
        receipts say `reapplied`. `skipped`: messages with no effect (dead-lettered),
        recorded as taken all the same. `raw`: the messages as they arrived (a message that
        fails only in processing is dead-lettered with its bytes).
        """
        acknowledged, raw = acknowledged or {}, raw or {}
        out = IngestOutcome()
        applied = self.check_not_behind()
        sources = [*(e.source for e in (*interactions, *deletions)), *skipped]
        out.applied = advance(applied, sources)

        def done(source: Source) -> bool:
            return applied.get(source.partition_key, -1) >= source.offset

        fresh_i = [e for e in interactions if not done(e.source)]
        fresh_d = [e for e in deletions if not done(e.source)]
        out.events_replayed = len(interactions) + len(deletions) - len(fresh_i) - len(fresh_d)
        out.resent = self.receipts.of_replayed([d for d in deletions if done(d.source)])
        if not any(offset > applied.get(key, -1) for key, offset in out.applied.items()):
            return out
        routed = route(self.state, self.shards, fresh_i, fresh_d, acknowledged, raw)
        if routed:
            self.state.log.send({s: [encode(m)] for s, m in routed.items()})
        out.routed = len(fresh_i) + len(fresh_d)
        self.state.record_ingested(out.applied, marks(sources), {"updated_at": repr(self.clock())})
        self.committed.update(out.applied)
        return out

    def check_not_behind(self) -> dict[str, int]:
        """The state's applied offsets; StateRolledBack when they are older than this
        engine's own commits (Redis restored from an older snapshot, a lossy failover)."""
        applied, load = self.state.read_applied_and_load()
        if load != self.meta.load:
            self._replaced(self._current_meta())
        behind = {
            key: (applied.get(key, -1), offset)
            for key, offset in self.committed.items()
            if applied.get(key, -1) < offset
        }
        if behind:
            raise StateRolledBack(behind)
        return applied

    # ----- step: the owned shards apply their inboxes ----------------------------------

    def process(
        self,
        interactions: Sequence[Interaction],
        deletions: Sequence[Deletion],
        acknowledged: Mapping[str, tuple[int, int]] | None = None,
        skipped: Sequence[Source] = (),
        reject: Reject | None = None,
    ) -> BatchOutcome:
        """Ingest the events, then step until the owned shards' inboxes are empty: for an
        engine that owns every shard, every request is answered when this returns."""
        ingested = self.ingest(interactions, deletions, acknowledged, skipped)
        out = BatchOutcome(
            applied=ingested.applied, resent=ingested.resent,
            events_replayed=ingested.events_replayed,
        )  # fmt: skip
        out.absorb(self.drain(reject))
        return out

    def drain(self, reject: Reject | None = None, steps: int = 1000) -> BatchOutcome:
        """Step until a step finds nothing to do."""
        out = BatchOutcome()
        for _ in range(steps):
            outcome = self.step(reject=reject)
            out.absorb(outcome)
            if not (outcome.events or outcome.receipts or outcome.resent or outcome.phases
                    or outcome.parts_asked):  # fmt: skip
                break
        return out

    def step(self, max_events: int = 500, reject: Reject | None = None) -> BatchOutcome:
        """One batch of the owned shards' inboxes, durable when this returns."""
        out = BatchOutcome(resent=self.receipts.take_resend())
        if not self.owned:
            return out
        started = time.perf_counter()
        entries = self.state.log.read_inboxes(
            {s: o.cursor for s, o in self.owned.items()}, INBOX_ENTRIES
        )
        work = self._classify(entries, out, max_events)
        if not work:
            out.parts_asked += self.asking.ask_again(self._pending_requests())
            return out
        self._refresh()
        work = {s: w for s, w in work.items() if s in self.owned}  # none taken meanwhile
        if not work:
            return out
        out.phases["read"] = time.perf_counter() - started
        while True:
            try:
                batch, requests = self._compute(work, out, started)
                break
            except Unprocessable as exc:
                culprits = _events_of(work, set(exc.sources))
                self._reject(culprits, exc.detail, reject, out)
                work = _without(work, {r.event.source for r in culprits})
            except (redis.RedisError, StateRolledBack, ShardLost):
                raise
            except Exception as exc:  # found out by processing: one event at the root?
                culprit = isolate(self, work, exc)
                if culprit is None:
                    raise
                self._reject([culprit], f"{type(exc).__name__}: {exc}", reject, out)
                work = _without(work, {culprit.event.source})
        writing = time.perf_counter()
        try:
            self._commit(batch, requests, work, out)
        except BaseException:
            batch.undo()  # whatever Redis holds now, the replica is read again from it
            for shard in batch.work:
                self.replica.known.pop(shard, None)
            raise
        out.phases["write"] = time.perf_counter() - writing
        if out.events:
            self.state.client.hset(self.state.layout.status, mapping=self.status_line(out))
        out.loss = self.loss
        out.parts_asked += self.asking.ask_again(self._pending_requests())
        return out

    def refresh(self) -> None:
        """Bring the replica up to date with what other owners committed (a step does it
        before a batch; the service now and then when idle); StateRolledBack when an owned
        shard holds fewer commits than this engine saw (Redis restored from a snapshot)."""
        self._refresh()

    def _refresh(self) -> None:
        """Catch up with what other owners committed; notice a state that went back."""
        meta = self._current_meta()  # first: another model's factors are not read as ours
        if (meta.load, meta.params, meta.shards) != (self.meta.load, self.params, self.shards):
            self._replaced(meta)
        now = self.replica.refresh(skip=self.owned)
        self.replica.grow("user", meta.users)
        self.replica.grow("item", meta.items)
        behind = {
            f"shard {s}": (now[s][0], self.generations[s])
            for s in self.owned
            if now[s][0] < self.generations.get(s, 0)
        }
        if behind:
            raise StateRolledBack(behind)
        # An owned shard with more commits than this engine counted: either a commit of
        # its own landed while the reply was lost (a connection cut; the retried batch
        # finds its work done), or someone took the shard (a swap's promotion,
        # docs/lifecycle.md). The fence tells them apart: taken only if it moved on.
        moved = [s for s in self.owned if now[s][0] > self.generations.get(s, 0)]
        if moved:
            fences = self.state.log.read_fences(moved)
            taken = {s for s in moved if fences[s] != self.owned[s].token}
            if taken:
                self._lose(taken)
        moved = [s for s in now if s not in self.owned and now[s] != self._seen_at.get(s)]
        if moved:
            self.ledger.read(self.state, moved)
        self._seen_at = dict(now)

    def _current_meta(self):
        """The namespace's metadata now; a namespace gone or half-written under a running
        service is being replaced."""
        try:
            return self.state.meta()
        except NamespaceReplaced:
            raise
        except StateError as exc:
            raise NamespaceReplaced(
                f"namespace {self.state.layout.namespace!r} was removed or is being replaced "
                f"under this service ({exc}): it stopped without applying anything more; "
                "start it again once the load is done"
            ) from None

    def _replaced(self, meta) -> None:
        raise NamespaceReplaced(
            f"namespace {self.state.layout.namespace!r} was replaced under this service "
            f"(load {self.meta.load} -> {meta.load}, rank {self.params.factors} -> "
            f"{meta.params.factors}, {self.shards} -> {meta.shards} shards): it stopped "
            "without applying anything to the new model; start it again"
        )

    def _classify(
        self, entries: dict[int, list[tuple[str, bytes]]], out: BatchOutcome, max_events: int
    ) -> dict[int, ShardWork]:
        """Each owned shard's inbox entries, as work: events never applied here (a source
        offset at most once), the parts asked of it, the parts done for its requests."""
        work: dict[int, ShardWork] = {}
        resend: dict[int, list[str]] = defaultdict(list)
        events = 0
        for shard, items in entries.items():
            if not items:
                continue
            owned, current = self.owned[shard], ShardWork(shard)
            seen = dict(owned.seen)
            for entry_id, payload in items:
                if events >= max_events and current.last_entry is not None:
                    break
                for message in decode(payload):
                    if isinstance(message, Routed):
                        source = message.event.source
                        key = source.partition_key
                        if source.offset <= seen.get(key, -1) or source in self._skip:
                            if isinstance(message.event, Deletion) and source not in self._skip:
                                resend[shard].append(source.key)
                            out.events_replayed += source not in self._skip
                        else:
                            current.events.append(message)
                            events += 1
                        seen[key] = max(seen.get(key, -1), source.offset)
                        current.seen[key] = seen[key]
                    elif isinstance(message, Solve):
                        current.solves.append(message)
                    elif isinstance(message, Purge):
                        current.purges.append(message)
                    else:
                        current.dones.append(message)
                current.last_entry = entry_id
            work[shard] = current
        out.resent += self.receipts.again(resend)
        return work

    def _compute(
        self, work: dict[int, ShardWork], out: BatchOutcome, started: float
    ) -> tuple[Batch, dict[int, dict[str, Request]]]:
        """Everything the batch changes, in memory (the replica's factors included)."""
        batch = Batch(self, work)
        out.events = sum(len(w.events) for w in work.values())
        try:
            batch.plan_item_requests()
            batch.read()
            batch.edit()
            batch.plan_parts()
            requests = self._requests(batch)
            batch.add_final_items(self._final_items(requests, batch))
            batch.load_items()
            out.phases["read"] = time.perf_counter() - started
            solving = time.perf_counter()
            before = self._sample_scores()
            batch.solve()
            out.residual = relative_change(before, self._sample_scores())
            batch.forgot = batch.forgetting()
        except BaseException:
            batch.undo()
            raise
        out.phases["solve"] = time.perf_counter() - solving
        figures = batch.figures
        out.interactions_applied = figures.interactions_applied
        out.interactions_applied_new = figures.interactions_new
        out.interactions_late = figures.interactions_late
        out.interactions_suppressed = figures.interactions_suppressed
        out.removed = figures.removed
        out.learned_ts = figures.learned_ts
        out.users_solved, out.items_solved = len(batch.touched_users), len(batch.items)
        for request in batch.requests.values():
            request.residual = out.residual
        return batch, requests

    def _requests(self, batch: Batch) -> dict[int, dict[str, Request]]:
        """Per owned coordinator shard, the requests this batch changes: new ones, and
        pending ones (copies) with the parts other shards reported done."""
        out: dict[int, dict[str, Request]] = defaultdict(dict)
        for request in batch.requests.values():
            out[request.coordinator][request.source] = request
        for shard, work in batch.work.items():
            for done in work.dones:
                request = out[shard].get(done.request)
                if request is None:
                    pending = self.owned[shard].pending.get(done.request)
                    if pending is None:
                        continue  # told twice, or already answered
                    request = out[shard][done.request] = pending.copy()
                request.done(done.part, done.at, done.removed, done.kept, done.generation)
        return out

    def _final_items(
        self, requests: dict[int, dict[str, Request]], batch: Batch
    ) -> dict[int, Waiter]:
        """Items forgotten whole whose every purge is durable (or is in this batch): the
        coordinator re-solves the item now, the request's last part."""
        local = defaultdict(set)
        for part in batch.parts:
            local[part.waiter.request].add(part.waiter.part)
        out = {}
        for shard, mine in requests.items():
            for request in mine.values():
                if request.scope != "item" or request.parts.get(item_part(shard)) is not None:
                    continue
                if request.names_unseen:
                    continue  # an item never seen: nothing to solve
                purges = [p for p in request.parts if p.startswith("purge@")]
                if all(request.parts[p] is not None or p in local[request.source] for p in purges):
                    out[request.item] = Waiter(shard, request.source, item_part(shard))
        return out

    def _commit(
        self,
        batch: Batch,
        requests: dict[int, dict[str, Request]],
        work: dict[int, ShardWork],
        out: BatchOutcome,
    ) -> None:
        """Round 1: every touched owned shard's write, fenced, with the parts asked of
        other shards. Round 2: what completes only once round 1 held (parts done here for
        a request coordinated in another shard)."""
        now = batch.now
        writes = self._writes(batch, work)
        later: list[LocalPart] = []  # parts durable in one shard, for another shard's request
        for part in batch.parts:
            coordinator = part.waiter.shard
            if coordinator == part.shard and coordinator in self.owned:
                request = requests[coordinator].get(part.waiter.request)
                if request is None:
                    request = self._pending_copy(requests, part.waiter)
                if request is not None:
                    # Durable with this very commit: the shard's next generation (its
                    # owner is the shard's only writer, and the fence says so).
                    generation = self.owned[coordinator].generation + 1
                    request.done(part.waiter.part, now, part.removed, part.kept, generation)
            else:
                later.append(part)
        stored, expired = self.receipts.store(requests, writes)
        messages = {s: [encode(m)] for s, m in batch.messages.items() if m}
        tokens = {s: o.token for s, o in self.owned.items()}
        written, ids = self.state.log.commit(writes, tokens, messages)
        out.parts_asked = sum(len(m) for m in batch.messages.values())
        self.asking.sent(batch.messages, ids, batch.requests.values(), now)
        lost = set(writes) - set(written)
        for shard, (generation, _) in written.items():
            if generation != self.owned[shard].generation + 1:  # another writer: a bug
                log.error("shard %s went from commit %s to %s in one write", shard,
                          self.owned[shard].generation, generation)  # fmt: skip
        self._after_commit(batch, work, writes, written, requests)
        self._durable_rows(batch, written, out)
        out.receipts += self.receipts.durable(stored, written)
        _count_expired(out, expired, written)
        # Round 2: parts that became durable in round 1 in another shard than their
        # request's; a request of this owner's that they complete is answered now.
        writes2: dict[int, ShardWrite] = {}
        messages2: dict[int, list[Message]] = defaultdict(list)
        updated: dict[int, dict[str, Request]] = defaultdict(dict)
        for part in later:
            if part.shard in lost:  # its shard's write was refused: not durable
                continue
            coordinator = part.waiter.shard
            if coordinator not in self.owned or coordinator in lost:
                generation = self._durable_in(part.shard, written)
                messages2[coordinator].append(
                    Done(
                        part.waiter.request,
                        part.waiter.part,
                        now,
                        part.removed,
                        part.kept,
                        generation,
                    )
                )
                continue
            request = updated[coordinator].get(part.waiter.request)
            if request is None:
                pending = self.owned[coordinator].pending.get(part.waiter.request)
                if pending is None:
                    continue
                request = updated[coordinator][part.waiter.request] = pending.copy()
            generation = self._durable_in(part.shard, written)
            request.done(part.waiter.part, now, part.removed, part.kept, generation)
        stored2, expired = self.receipts.store(updated, writes2)
        if writes2 or messages2:
            encoded = {s: [encode(m)] for s, m in messages2.items()}
            written2, _ = self.state.log.commit(writes2, tokens, encoded)
            lost |= set(writes2) - set(written2)
            for shard, (generation, commit_id) in written2.items():
                owned = self.owned[shard]
                self._committed(shard, generation, commit_id)
                for source, request in updated[shard].items():
                    if request.complete():
                        owned.pending.pop(source, None)
                        self.asking.answered(source)
                    else:
                        owned.pending[source] = request
            out.receipts += self.receipts.durable(stored2, written2)
            _count_expired(out, expired, written2)
        if lost:
            self._lose(lost)
            out.lost |= lost

    def _durable_rows(
        self, batch: Batch, written: dict[int, tuple[int, str]], out: BatchOutcome
    ) -> None:
        """The rows the batch wrote, and what it forgot, of the shards whose write held."""
        for side, rows in (("user", batch.touched_users), ("item", batch.items)):
            chosen = np.array(
                sorted(r for r in rows if shard_of(r, self.shards) in written), np.int64
            )
            out.solved[side].append(chosen)
        if batch.forgot:
            out.forgetting.append(batch.forgot.of_shards(set(written), self.shards))

    def take_foreign(self) -> Forgetting:
        """What other owners' commits forgot since last asked (their change logs)."""
        return merge_forgetting([decode_forgetting(b) for b in self.replica.take_forgotten()])

    def commit_owned(self, writes: Mapping[int, ShardWrite]) -> dict[int, tuple[int, str]]:
        """Writes of owned shards, each fenced by its token; the engine's bookkeeping
        follows the shards written (their objective shares, counts, commits), and a shard
        refused is given up. Returns the shards written."""
        tokens = {s: o.token for s, o in self.owned.items()}
        written, _ = self.state.log.commit({s: w for s, w in writes.items() if s in tokens}, tokens)
        for shard, (generation, commit_id) in written.items():
            self._committed(shard, generation, commit_id)
            self.ledger.add(shard, writes[shard])
        lost = set(writes) - set(written)
        if lost:
            self._lose(lost)
        return written

    def _durable_in(self, shard: int, written: dict[int, tuple[int, str]]) -> int:
        """The commit of a shard a part done there is durable with: round 1's write, or
        (the part changed nothing there) the shard's commit as it stands."""
        if shard in written:
            return written[shard][0]
        owned = self.owned.get(shard)
        return owned.generation if owned is not None else 0

    def _pending_copy(
        self, requests: dict[int, dict[str, Request]], waiter: Waiter
    ) -> Request | None:
        pending = self.owned[waiter.shard].pending.get(waiter.request)
        if pending is None:
            return None
        copy = requests[waiter.shard][waiter.request] = pending.copy()
        return copy

    def _writes(self, batch: Batch, work: dict[int, ShardWork]) -> dict[int, ShardWrite]:
        """Round 1's write of each owned shard the batch touched."""
        writes: dict[int, ShardWrite] = defaultdict(ShardWrite)
        factors = self.replica.factors
        for u in batch.touched_users:
            write = writes[shard_of(u, self.shards)]
            write.factors["user"][u] = factors["user"][u]
            write.rows["user"][u] = batch.user_rows[u]
            write.interactions_delta += len(batch.user_rows[u]) - len(batch.original_users[u])
        for i in batch.items:
            writes[shard_of(i, self.shards)].factors["item"][i] = factors["item"][i]
        for shard, item in batch.changed_slices:
            writes[shard].rows["item"][item] = batch.slices[(shard, item)]
        for shard, tombstones in batch.tombstones.items():
            writes[shard].tombstones.update(tombstones)
        for shard, delta in batch.loss_delta.items():
            writes[shard].loss_delta += delta
        for shard, w in work.items():
            writes[shard].seen.update(w.seen)
            writes[shard].cursor = w.last_entry
        if batch.forgot:
            for shard, write in writes.items():
                part = batch.forgot.of_shard(shard, self.shards)
                if part:
                    write.forgetting = encode_forgetting(part)
        return writes

    def _after_commit(
        self,
        batch: Batch,
        work: dict[int, ShardWork],
        writes: dict[int, ShardWrite],
        written: dict[int, tuple[int, str]],
        requests: dict[int, dict[str, Request]],
    ) -> None:
        """What the engine keeps of round 1: the shards written move on; the replica's
        rows of shards another instance took are read again from Redis."""
        for shard, (generation, commit_id) in written.items():
            owned, write = self.owned[shard], writes[shard]
            self._committed(shard, generation, commit_id)
            if write.cursor is not None:
                owned.cursor = write.cursor
            owned.seen.update(write.seen)
            self.ledger.add(shard, write)
            for source, request in requests.get(shard, {}).items():
                if request.complete():
                    owned.pending.pop(source, None)
                    self.asking.answered(source)
                else:
                    owned.pending[source] = request
        for shard in set(writes) - set(written):
            self.replica.known.pop(shard, None)

    def _pending_requests(self) -> Iterator[Request]:
        return (r for owned in self.owned.values() for r in owned.pending.values())

    def _committed(self, shard: int, generation: int, commit_id: str) -> None:
        """This engine's commit of an owned shard: where the shard and the replica stand."""
        self.owned[shard].generation = generation
        self.generations[shard] = max(self.generations.get(shard, 0), generation)
        self.replica.committed(shard, generation, commit_id)

    def _lose(self, shards: set[int]) -> None:
        """Another instance took these shards: stop applying them; read them again."""
        log.warning("shards %s were taken over by another instance", sorted(shards))
        for shard in shards:
            self.owned.pop(shard, None)
            self.replica.known.pop(shard, None)
        for shard, (generation, head) in self.state.log.read_generations(shards).items():
            self.replica.catch_up(shard, generation, head)
        self.ledger.read(self.state, shards)

    def sent(self, receipts: Iterable[Receipt]) -> None:
        """The broker acknowledged these receipts: they need not be sent again."""
        self.receipts.sent(receipts)

    # ----- what fails in processing ----------------------------------------------------

    def _reject(
        self, culprits: list[Routed], detail: str, reject: Reject | None, out: BatchOutcome
    ) -> None:
        if reject is None:
            raise Unprocessable([r.event.source for r in culprits], detail)
        reject(culprits, detail)  # durable before the events are taken as done
        self._skip |= {r.event.source for r in culprits}
        out.rejected += culprits

    # ----- the objective ----------------------------------------------------------------

    def full_loss(self) -> float:
        """The objective on all stored data, from scratch, shard by shard."""
        return sum(self._exact_shares().values())

    def _exact_shares(self) -> dict[int, float]:
        return exact_shares(self.state, self.replica.factors, self.params, self.shards)

    def reset_objective(self) -> None:
        """Account each owned shard's share of the objective afresh (an engine that owns
        every shard: the shares then sum to the objective exactly)."""
        shares = self._exact_shares()
        total = sum(shares.values())
        if abs(total - self.loss) <= 1e-6 * max(abs(total), 1.0):
            return  # the shares may be split otherwise, their sum is the objective
        writes = {
            shard: ShardWrite(loss_delta=shares[shard] - self.ledger.share(shard))
            for shard in self.owned
        }
        self.commit_owned(writes)

    # ----- helpers ----------------------------------------------------------------------

    def factors_finite(self) -> bool:
        return self.replica.finite

    def _sample_scores(self) -> np.ndarray:
        users, items = self.replica.factors["user"], self.replica.factors["item"]
        if len(users) == 0 or len(items) == 0:
            return np.zeros(0)
        rng = np.random.default_rng(self._sample_seed)
        return pair_scores(
            users, items, rng.integers(0, len(users), SAMPLE_PAIRS),
            rng.integers(0, len(items), SAMPLE_PAIRS),
        )  # fmt: skip

    def status_line(self, out: BatchOutcome) -> dict[str, str]:
        last = {
            "at": self.clock(),
            "interactions_applied": out.interactions_applied,
            "interactions_late": out.interactions_late,
            "deletions": len(out.receipts),
            "removed": out.removed,
            "users_solved": out.users_solved,
            "items_solved": out.items_solved,
            "residual": out.residual,
            "loss": out.loss,
        }
        return {"last_batch": json.dumps(last), "residual": repr(out.residual)}


def _count_expired(
    out: BatchOutcome, expired: dict[int, int], written: Mapping[int, object]
) -> None:
    """Retention's removals, of the shards whose write held."""
    for shard, count in expired.items():
        if shard in written:
            out.expired[shard] = out.expired.get(shard, 0) + count


def _events_of(work: dict[int, ShardWork], sources: set[Source]) -> list[Routed]:
    return [r for w in work.values() for r in w.events if r.event.source in sources]


def _without(work: dict[int, ShardWork], sources: set[Source]) -> dict[int, ShardWork]:
    """The work with these events taken as done without effect."""
    out = {}
    for shard, w in work.items():
        out[shard] = ShardWork(
            shard, w.last_entry, [r for r in w.events if r.event.source not in sources],
            list(w.solves), list(w.purges), list(w.dones), dict(w.seen),
        )  # fmt: skip
    return out


__all__ = [
    "BatchFailed",
    "BatchOutcome",
    "Engine",
    "IngestOutcome",
    "ShardLost",
    "StateError",
    "StateRolledBack",
    "Unprocessable",
]
