"""Each shard's fenced log: who may write the shard, its inbox, its commits and the log of
what they changed.

A shard has one writer at a time. `acquire` draws the shard's next fence token; every
commit names its token and is refused once another owner drew a newer one, so a writer
that lost the shard (a rebalance, a pause past its session) writes nothing. One commit is
one Lua script on the shard's slot: the batch's effect (factors, rows, tombstones,
receipts, requests, replay marks, objective), the inbox cursor it took up to, the commit
counted (`gen`, `head`) and its changed rows appended to the shard's change log (bounded
in bytes), so a shard's state, the work it took from its inbox and its change log always
agree. Nothing spans two shards in one write: work for another shard goes to that shard's
inbox (`send`), and is idempotent there. The factors topic's `published` mark moves under
the same fence. Other owners follow a shard through `read_generations` and its change
log; everything else about the state is read through `ModelState` (store.py).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from consumer.state.layout import FACTOR_DTYPE, ShardKeys
from consumer.state.timing import Observer
from consumer.state.timing import timed as _timed

if TYPE_CHECKING:
    from consumer.state.store import ModelState

SIDES = ("user", "item")  # a model's two sides, in the order every record lists them
_SCRIPT_ARGS = 4000  # field/value arguments per command in a script (Lua's unpack limit)
# Each shard's change log, in bytes (about 4 bytes per changed row): an instance further
# behind than that reloads the shard's factors.
CHANGES_BYTES = 512 << 10

# One shard's commit, if the fence still holds the token (ARGV[1]; '' = unfenced: the
# bootstrap load). Then commands as (name, key number, argument count, arguments...); the
# inbox cursor (ARGV[7]: the last entry taken, ARGV[8]: the first to keep); the commit
# counted and its changed rows logged, bounded in bytes (ARGV[6]).
# KEYS: fence, gen, head, changes, changes-bytes, inbox, cursor, then the commands' keys.
# ARGV: token, commit id, users (u4 bytes), items (u4 bytes), all rows?, what the commit
#       forgot (consolidation/forgetting.py, '' for nothing), log cap, cursor, trim below,
#       commands... Returns the shard's new generation, or -1.
_SHARD_COMMIT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local n = 10
while n <= #ARGV do
  local count = tonumber(ARGV[n + 2])
  redis.call(ARGV[n], KEYS[tonumber(ARGV[n + 1])], unpack(ARGV, n + 3, n + 2 + count))
  n = n + 3 + count
end
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[7], ARGV[8])
  redis.call('XTRIM', KEYS[6], 'MINID', ARGV[9])
end
local generation = redis.call('INCR', KEYS[2])
local previous = redis.call('GET', KEYS[3]) or ''
redis.call('XADD', KEYS[4], generation .. '-1', 'users', ARGV[3], 'items', ARGV[4],
           'all', ARGV[5], 'id', ARGV[2], 'prev', previous, 'f', ARGV[6])
local total = redis.call('INCRBY', KEYS[5],
                         string.len(ARGV[3]) + string.len(ARGV[4]) + string.len(ARGV[6]) + 64)
while total > tonumber(ARGV[7]) do
  local oldest = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
  if #oldest == 0 then
    redis.call('SET', KEYS[5], 0)
    break
  end
  local size, entry = 64, oldest[1][2]
  for j = 1, #entry, 2 do
    if entry[j] == 'users' or entry[j] == 'items' or entry[j] == 'f' then
      size = size + string.len(entry[j + 1])
    end
  end
  redis.call('XDEL', KEYS[4], oldest[1][1])
  total = redis.call('DECRBY', KEYS[5], size)
end
redis.call('SET', KEYS[3], ARGV[2])
return generation
"""

# The factors topic has a shard's factors up to a commit: recorded if the fence still
# holds the owner's token. KEYS: fence, published. ARGV: token, generation, commit id.
_MARK_PUBLISHED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
redis.call('HSET', KEYS[2], 'generation', ARGV[2], 'head', ARGV[3])
return 0
"""

# A new owner takes a shard: the next token, its name, and where the shard stands.
# KEYS: fence, owner, gen, head, cursor.
_ACQUIRE = """
local token = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
return {token, tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('GET', KEYS[4]) or '',
        redis.call('GET', KEYS[5]) or ''}
"""


class ShardLost(RuntimeError):
    """Another instance took these shards since this one did: nothing of the batch was
    written to them. The work stays in their inboxes for the new owner."""

    def __init__(self, shards: set[int]) -> None:
        super().__init__(f"shards {sorted(shards)} were taken over by another instance")
        self.shards = shards


@dataclass(frozen=True)
class Acquired:
    """A shard as its new owner finds it."""

    token: int
    generation: int
    head: str | None
    cursor: str | None


@dataclass
class ShardWrite:
    """Everything one batch changes in one shard, written by one script."""

    factors: dict[str, dict[int, np.ndarray]] = field(
        default_factory=lambda: {side: {} for side in SIDES}
    )
    # A user's row (`user`) or an item's slice of the shard (`item`); empty: deleted.
    rows: dict[str, dict[int, np.ndarray]] = field(
        default_factory=lambda: {side: {} for side in SIDES}
    )
    tombstones: dict[str, float] = field(default_factory=dict)
    receipts: dict[str, str] = field(default_factory=dict)  # source -> receipt JSON
    pending: dict[str, str | None] = field(default_factory=dict)  # source -> JSON (None: done)
    unsent: list[str] = field(default_factory=list)  # receipts stored, to be published
    seen: dict[str, int] = field(default_factory=dict)  # input partition key -> offset
    cursor: str | None = None  # the last inbox entry this write takes
    interactions_delta: int = 0
    loss_delta: float = 0.0
    status: dict[str, str] = field(default_factory=dict)
    all_rows: bool = False  # every factor of the shard changed (a reload for readers)
    # What the commit forgot, for other owners' cycles (consolidation/forgetting.py)
    forgetting: bytes = b""

    def empty(self) -> bool:
        return not (
            any(self.factors.values()) or any(self.rows.values()) or self.tombstones
            or self.receipts or self.pending or self.unsent or self.seen or self.cursor
            or self.interactions_delta or self.loss_delta or self.status
        )  # fmt: skip


class ShardLog:
    """The fenced side of one namespace's shards (see the module's docstring)."""

    def __init__(self, state: ModelState) -> None:
        self.state = state
        self.client = state.client
        self.layout = state.layout

    @property
    def observer(self) -> Observer | None:  # the state's: `timed` reports through it
        return self.state.observer

    def acquire(self, shards: Iterable[int], holder: str) -> dict[int, Acquired]:
        """Take these shards: each draws its next token (an earlier owner's writes are
        refused from now on). One round trip."""
        shards = sorted(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            keys = self.layout.shard(shard)
            pipe.execute_command(
                "EVAL", _ACQUIRE, 5, keys.fence, keys.owner, keys.gen, keys.head, keys.cursor,
                holder,
            )  # fmt: skip
        pipe.incr(self.layout.bell)
        results = pipe.execute()
        self.state.heard_own_ring(results[-1])
        out = {}
        for shard, (token, generation, head, cursor) in zip(shards, results[:-1], strict=True):
            out[shard] = Acquired(int(token), int(generation), _text(head), _text(cursor))
        return out

    @_timed("commit")
    def commit(
        self,
        writes: Mapping[int, ShardWrite],
        tokens: Mapping[int, int | None],
        messages: Mapping[int, list[bytes]] | None = None,
    ) -> tuple[dict[int, tuple[int, str]], dict[int, list[str]]]:
        """Each shard's write by one script, fenced by its token (None: unfenced), and the
        messages for other shards' inboxes, all in one round trip. Returns the shards
        written (-> their generation and commit id; those a newer owner holds are absent)
        and the inbox entry ids of the messages."""
        pipe = self.client.pipeline(transaction=False)
        order: list[tuple[str, int, str]] = []
        for shard, payloads in (messages or {}).items():
            for payload in payloads:
                pipe.xadd(self.layout.shard(shard).inbox, {"m": payload})
                order.append(("message", shard, ""))
        now = repr(time.time())
        for shard, write in sorted(writes.items()):
            token = tokens.get(shard)
            commit_id = os.urandom(8).hex()
            write.status.setdefault("updated_at", now)
            keys, args = _shard_commands(self.layout.shard(shard), write)
            head_args = [
                "" if token is None else token,
                commit_id,
                *_changed(write),
                write.forgetting,
                CHANGES_BYTES,
                write.cursor or "",
                _successor(write.cursor) if write.cursor else "",
            ]
            # EVAL by name: Redis Cluster's pipeline routes it by its keys (one slot).
            pipe.execute_command("EVAL", _SHARD_COMMIT, len(keys), *keys, *head_args, *args)
            order.append(("shard", shard, commit_id))
        if not order:
            return {}, {}
        pipe.incr(self.layout.bell)
        results = pipe.execute()
        self.state.heard_own_ring(results[-1])
        written: dict[int, tuple[int, str]] = {}
        ids: dict[int, list[str]] = defaultdict(list)
        for (kind, shard, commit_id), result in zip(order, results[:-1], strict=True):
            if kind == "message":
                ids[shard].append(_text(result) or "")
            elif int(result) >= 0:
                written[shard] = (int(result), commit_id)
        return written, dict(ids)

    @_timed("route")
    def send(self, messages: Mapping[int, list[bytes]]) -> dict[int, list[str]]:
        """Append messages to shards' inboxes; their entry ids."""
        pipe = self.client.pipeline(transaction=False)
        order = []
        for shard, payloads in messages.items():
            for payload in payloads:
                pipe.xadd(self.layout.shard(shard).inbox, {"m": payload})
                order.append(shard)
        if not order:
            return {}
        pipe.incr(self.layout.bell)
        results = pipe.execute()
        self.state.heard_own_ring(results[-1])
        ids: dict[int, list[str]] = defaultdict(list)
        for shard, result in zip(order, results[:-1], strict=True):
            ids[shard].append(_text(result) or "")
        return dict(ids)

    def mark_published(
        self, marks: Mapping[int, tuple[int, str | None]], tokens: Mapping[int, int]
    ) -> set[int]:
        """The factors topic acknowledged these shards' factors up to these commits,
        recorded by their owner (fenced: a former owner's late mark is refused). Returns
        the shards refused."""
        pipe = self.client.pipeline(transaction=False)
        order = sorted(marks)
        for shard in order:
            keys = self.layout.shard(shard)
            generation, head = marks[shard]
            pipe.execute_command(
                "EVAL", _MARK_PUBLISHED, 2, keys.fence, keys.published, tokens[shard],
                generation, head or "",
            )  # fmt: skip
        return {s for s, r in zip(order, pipe.execute(), strict=True) if int(r) < 0}

    def read_generations(self, shards: Iterable[int]) -> dict[int, tuple[int, str | None]]:
        """shard -> (commits so far, the id of the newest): what a replica compares."""
        shards = list(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            keys = self.layout.shard(shard)
            pipe.get(keys.gen)
            pipe.get(keys.head)
        values = pipe.execute()
        return {
            s: (int(values[2 * n] or 0), _text(values[2 * n + 1])) for n, s in enumerate(shards)
        }

    def read_changes(
        self, shard: int, after: int, head: str | None
    ) -> tuple[set[int], set[int]] | None:
        """Users and items whose factors changed in the shard's commits after `after`,
        whose commit was `head`. None when the log no longer reaches back that far, when a
        commit changed every row, or when the commit after `after` does not follow `head`
        (Redis went back to an older state and moved on from there): reload the shard."""
        found = self.read_change_log(shard, after, head)
        return None if found is None else (found[0], found[1])

    def read_change_log(
        self, shard: int, after: int, head: str | None
    ) -> tuple[set[int], set[int], list[bytes]] | None:
        """`read_changes`, and what each of those commits forgot (its `forgetting`)."""
        key = self.layout.shard(shard).changes
        entries = self.client.xrange(key, min=f"{after + 1}-1")
        if not entries or entries[0][0].decode() != f"{after + 1}-1":
            return None
        if (entries[0][1].get(b"prev", b"").decode() or None) != head:
            return None
        users: set[int] = set()
        items: set[int] = set()
        forgot: list[bytes] = []
        for _, body in entries:
            if body[b"all"] == b"1":
                return None
            users.update(np.frombuffer(body[b"users"], dtype="<u4").tolist())
            items.update(np.frombuffer(body[b"items"], dtype="<u4").tolist())
            if body.get(b"f"):
                forgot.append(body[b"f"])
        return users, items, forgot

    def read_fences(self, shards: Iterable[int]) -> dict[int, int]:
        """Each shard's current fence token (0: never acquired)."""
        shards = sorted(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.get(self.layout.shard(shard).fence)
        return {s: int(v or 0) for s, v in zip(shards, pipe.execute(), strict=True)}

    def read_owners(self, shards: int) -> dict[int, str | None]:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(shards):
            pipe.get(self.layout.shard(shard).owner)
        return {s: _text(v) for s, v in enumerate(pipe.execute())}

    def read_published(self, shards: Iterable[int]) -> dict[int, tuple[int, str | None]]:
        """shard -> (generation, commit id) whose factors the factors topic holds."""
        shards = list(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hmget(self.layout.shard(shard).published, "generation", "head")
        return {
            s: (int(g or 0), _text(h)) for s, (g, h) in zip(shards, pipe.execute(), strict=True)
        }

    @_timed("read_inbox")
    def read_inboxes(
        self, cursors: Mapping[int, str | None], count: int
    ) -> dict[int, list[tuple[str, bytes]]]:
        """shard -> up to `count` inbox entries after its cursor: (entry id, payload)."""
        pipe = self.client.pipeline(transaction=False)
        order = list(cursors.items())
        for shard, cursor in order:
            start = f"({cursor}" if cursor else "-"
            pipe.xrange(self.layout.shard(shard).inbox, min=start, count=count)
        out = {}
        for (shard, _), entries in zip(order, pipe.execute(), strict=True):
            out[shard] = [(entry_id.decode(), body[b"m"]) for entry_id, body in entries]
        return out

    def read_cursors(self, shards: Iterable[int]) -> dict[int, str | None]:
        """shard -> the last inbox entry its owner took (None: none yet)."""
        order = sorted(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in order:
            pipe.get(self.layout.shard(shard).cursor)
        return {s: _text(v) for s, v in zip(order, pipe.execute(), strict=True)}

    def inbox_lengths(self, shards: Iterable[int]) -> dict[int, int]:
        shards = list(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.xlen(self.layout.shard(shard).inbox)
        return dict(zip(shards, pipe.execute(), strict=True))


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text or None


def _successor(entry_id: str) -> str:
    """The stream id right after `entry_id`: XTRIM MINID keeps it and what follows."""
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _changed(write: ShardWrite) -> list[Any]:
    return [
        np.asarray(sorted(write.factors["user"]), dtype="<u4").tobytes(),
        np.asarray(sorted(write.factors["item"]), dtype="<u4").tobytes(),
        int(write.all_rows),
    ]


# The keys every commit script names first, in the order _SHARD_COMMIT reads them.
def _fixed_keys(keys: ShardKeys) -> list[str]:
    return [keys.fence, keys.gen, keys.head, keys.changes, keys.changes_bytes, keys.inbox,
            keys.cursor]  # fmt: skip


def _shard_commands(keys: ShardKeys, write: ShardWrite) -> tuple[list[str], list[Any]]:
    """The shard's keys and the commands for the _SHARD_COMMIT script."""
    names = _fixed_keys(keys)
    args: list[Any] = []

    def command(name: str, key: str, values: list[Any], per: int) -> None:
        if not values:
            return  # nothing to write: the key need not travel with the script
        if key not in names:
            names.append(key)
        number = names.index(key) + 1
        step = _SCRIPT_ARGS - _SCRIPT_ARGS % per
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            args.extend([name, number, len(chunk), *chunk])

    for side in SIDES:
        factors = write.factors[side]
        command(
            "HSET", keys.factors(side), [x for n, v in factors.items() for x in (n, _f32(v))], 2
        )
        rows = write.rows[side]
        full = [x for n, r in rows.items() if len(r) for x in (n, r.tobytes())]
        command("HSET", keys.rows(side), full, 2)
        command("HDEL", keys.rows(side), [n for n, r in rows.items() if not len(r)], 1)
    command(
        "HSET", keys.tombstones, [x for k, v in write.tombstones.items() for x in (k, repr(v))], 2
    )
    command("HSET", keys.receipts, [x for pair in write.receipts.items() for x in pair], 2)
    done = [k for k, v in write.pending.items() if v is None]
    command("HSET", keys.pending, [x for k, v in write.pending.items() if v is not None
                                   for x in (k, v)], 2)  # fmt: skip
    command("HDEL", keys.pending, done, 1)
    command("SADD", keys.unsent, list(write.unsent), 1)
    command("HSET", keys.seen, [x for pair in write.seen.items() for x in pair], 2)
    if write.interactions_delta:
        command("HINCRBY", keys.status, ["interactions", write.interactions_delta], 2)
    if write.loss_delta:
        command("HINCRBYFLOAT", keys.status, ["loss", repr(write.loss_delta)], 2)
    command("HSET", keys.status, [x for pair in write.status.items() for x in pair], 2)
    return names, args


def _f32(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=FACTOR_DTYPE).tobytes()
