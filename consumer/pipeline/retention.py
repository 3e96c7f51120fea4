"""Retention: interactions older than a window are forgotten continuously, by the same
machinery as a deletion.

Each owner walks its shards' user rows a slice at a time (HSCAN, a few hundred users per
idle step). A user holding an interaction at or before the cutoff (now minus the window)
gets a user-scope deletion at the cutoff, put into the shard's own inbox with a source of
its own (`unlearn.retention`, partition = shard, offset = the shard's counter, so a replay
is recognised as one): the owner's next step removes those interactions, re-solves the
user and the items exactly, and records the user's tombstone at the cutoff, so a late
copy of an expired interaction is not learned either. No receipt is sent for it (nobody
asked); when a pass over a shard ends, one summary record goes into the audit trail
(`unlearn audit`: scope "retention", the cutoff, the users expired, the pairs removed).
Interactions without a time (0) are never expired: their age is unknown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from consumer.events import RETENTION_TOPIC, Deletion, Source
from consumer.shards.messages import Routed, encode
from consumer.state.store import ROW_DTYPE, ModelState

log = logging.getLogger("unlearn.retention")
DAY_S = 86_400.0


@dataclass
class _Pass:
    cutoff: float
    started: float
    cursor: int = 0
    users: int = 0
    last: int = -1  # the last retention offset this pass made
    scanned: bool = False  # every user looked at; the summary waits for the deletions


@dataclass
class RetentionPolicy:
    days: float  # the window; 0: off
    interval_s: float = 3600.0  # a shard's passes start at most this often
    users_per_step: int = 500  # users one step looks at


@dataclass
class Retention:
    state: ModelState
    policy: RetentionPolicy
    clock: Callable[[], float] = time.time
    removed: dict[int, int] = field(default_factory=dict)  # shard -> pairs since its summary
    _passes: dict[int, _Pass] = field(default_factory=dict)
    _last_started: dict[int, float] = field(default_factory=dict)
    _turn: int = 0

    def expired(self, counts: dict[int, int]) -> None:
        """Pairs the engine removed for retention deletions, per shard."""
        for shard, count in counts.items():
            self.removed[shard] = self.removed.get(shard, 0) + count

    def step(
        self, owned: Iterable[int], applied: Callable[[int, int], bool]
    ) -> tuple[int, dict | None]:
        """Look at one slice of one owned shard's users. Returns the deletions made, and
        the summary record of a pass that ended (None otherwise): a pass ends once its
        every user was looked at and `applied(shard, last offset)` says its deletions are
        durable and complete, so the summary counts what they removed."""
        shards = sorted(owned)
        for gone in set(self._passes) - set(shards):
            del self._passes[gone]  # another owner walks it now
        now = self.clock()
        interval, started = self.policy.interval_s, self._last_started
        due = [s for s in shards if s in self._passes or now - started.get(s, -1e18) >= interval]
        if not due:
            return 0, None
        shard = due[self._turn % len(due)]
        self._turn += 1
        current = self._passes.get(shard)
        if current is not None and current.scanned:
            if not applied(shard, current.last):
                return 0, None
            del self._passes[shard]
            return 0, self._summarise(shard, current)
        if current is None:
            current = self._passes[shard] = _Pass(now - self.policy.days * DAY_S, now)
            self._last_started[shard] = now
        cursor, rows = self.state.client.hscan(
            self.state.layout.shard(shard).rows("user"), cursor=current.cursor,
            count=self.policy.users_per_step,
        )  # fmt: skip
        expired = []
        for name, value in rows.items():
            stamps = np.frombuffer(value, dtype=ROW_DTYPE)["ts"]
            if ((stamps > 0) & (stamps <= current.cutoff)).any():
                expired.append(int(name))
        if expired:
            current.last = self._delete(shard, expired, current.cutoff)
        current.users += len(expired)
        current.cursor = int(cursor)
        current.scanned = current.cursor == 0
        return len(expired), None

    def _delete(self, shard: int, users: list[int], cutoff: float) -> int:
        """User-scope deletions at the cutoff, into the shard's inbox. Returns the last
        offset used."""
        key = self.state.layout.shard(shard).retention
        last = int(self.state.client.hincrby(key, "offset", len(users)))
        ids = self.state.ids_of("user", users)
        now = self.clock()
        first = last - len(users) + 1
        messages = []
        for n, (uid, user) in enumerate(zip(ids, users, strict=True)):
            source = Source(RETENTION_TOPIC, shard, first + n)
            messages.append(Routed(Deletion(uid, None, cutoff, None, source, now), user, -1))
        self.state.log.send({shard: [encode(messages)]})
        return last

    def _summarise(self, shard: int, done: _Pass) -> dict:
        """The pass's one record in the audit trail (the shard's receipts)."""
        keys = self.state.layout.shard(shard)
        number = int(self.state.client.hincrby(keys.retention, "passes", 1))
        source = f"retention:{shard}:{number}"
        record = {
            "scope": "retention", "source": source, "shard": shard, "pass": number,
            "window_days": self.policy.days, "cutoff": done.cutoff, "event_ts": done.cutoff,
            "users_expired": done.users, "removed": self.removed.pop(shard, 0),
            "started_at": done.started, "applied_at": self.clock(),
        }  # fmt: skip
        self.state.client.hset(keys.receipts, source, json.dumps(record))
        log.info("retention pass %s of shard %s: %s users expired", number, shard, done.users)
        return record
