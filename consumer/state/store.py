"""Reading and writing the model's state in Redis (see layout.py for the keys).

A batch is made durable in three steps: (1) the whole batch, as absolute values, is stored
as an intent (a redo log); (2) each shard is written in one MULTI/EXEC; (3) the offsets
the batch applied are recorded and the intent deleted, in one MULTI/EXEC. A crash between
(1) and (3) leaves the intent, and `recover` re-applies it before anything else happens:
every write is a plain SET/HSET/HDEL of final values, so applying twice changes nothing.
A batch is therefore in the state entirely or not at all, with its offsets.

Every write is fenced by the write lease's token (lease.py), so several instances can
share a namespace: the shards are written by one script each (all pipelined in one round
trip), which refuses a token older than the shard's; the intent and the final step are
written only while the token is current. The final step also appends the rows whose
factors changed to a capped change log, from which other instances refresh their replica.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from consumer.pipeline.positions import MARKS_KEPT, Marks
from consumer.state import intent
from consumer.state.layout import (
    FACTOR_DTYPE,
    FORMAT_VERSION,
    GRAMIAN_DTYPE,
    ROW_DTYPE,
    Layout,
    ShardKeys,
    shard_of,
)
from consumer.state.lease import LeaseLost, WriteLease
from unlearn_core.params import Hyperparameters

SIDES = ("user", "item")
_PIPELINE_CHUNK = 2000
_SCRIPT_ARGS = 4000  # field/value arguments per command in a script (Lua's unpack limit)
# The change log's size in bytes (about 4 bytes per changed row): an instance further
# behind than that reloads everything.
CHANGES_BYTES = 4 << 20

# Allocates dense indices for new ids; existing ids keep theirs. One slot: atomic.
_ALLOCATE = """
local out = {}
for n = 2, #ARGV do
  local index = redis.call('HGET', KEYS[1], ARGV[n])
  if not index then
    index = redis.call('HINCRBY', KEYS[3], ARGV[1], 1) - 1
    redis.call('HSET', KEYS[1], ARGV[n], index)
    redis.call('HSET', KEYS[2], index, ARGV[n])
  end
  out[#out + 1] = tonumber(index)
end
return out
"""


# One shard's writes, if no newer token wrote the shard: KEYS[1] is its epoch, ARGV[1]
# the token, then commands as (name, key number, argument count, arguments...).
_SHARD_WRITE = """
local token = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') > token then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
local n = 2
while n <= #ARGV do
  local count = tonumber(ARGV[n + 2])
  redis.call(ARGV[n], KEYS[tonumber(ARGV[n + 1])], unpack(ARGV, n + 3, n + 2 + count))
  n = n + 3 + count
end
return 1
"""

# Store the intent while the token is current (KEYS: fence, intent, lease).
_WRITE_INTENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""

# The final step while the token is current: offsets, status, interaction count, intent
# removal, the next generation and its change-log entry (which names the commit before it,
# so a replica can tell a continuation from a history Redis went back on). Returns the
# generation, or -1.
# Each partition's fingerprints (positions.Marks) get the batch's last message in front,
# capped; a partition's first batch records its message as the epoch's first too.
# KEYS: fence, lease, applied, status, intent, generation, changes, head, marks, log bytes.
# ARGV: token, holder, ttl, log byte cap, users, items, all, delta, n, applied..., m, status...,
#       j, marks..., marks kept, commit id (last).
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local n = 10
local count = tonumber(ARGV[9])
if count > 0 then redis.call('HSET', KEYS[3], unpack(ARGV, n, n + 2 * count - 1)) end
n = n + 2 * count
count = tonumber(ARGV[n])
n = n + 1
if count > 0 then redis.call('HSET', KEYS[4], unpack(ARGV, n, n + 2 * count - 1)) end
n = n + 2 * count
count = tonumber(ARGV[n])
local marks_kept = tonumber(ARGV[n + 2 * count + 1])
n = n + 1
for m = 0, count - 1 do
  local field, mark = ARGV[n + 2 * m], ARGV[n + 2 * m + 1]
  local current = redis.call('HGET', KEYS[9], field)
  local value
  if not current then
    value = mark .. '|' .. mark
  else
    local bar = string.find(current, '|', 1, true)
    local kept = {mark}
    for entry in string.gmatch(string.sub(current, bar + 1), '[^,]+') do
      if #kept >= marks_kept then break end
      kept[#kept + 1] = entry
    end
    value = string.sub(current, 1, bar - 1) .. '|' .. table.concat(kept, ',')
  end
  redis.call('HSET', KEYS[9], field, value)
end
if tonumber(ARGV[8]) ~= 0 then redis.call('HINCRBY', KEYS[4], 'interactions', ARGV[8]) end
redis.call('DEL', KEYS[5])
local generation = redis.call('INCR', KEYS[6])
local commit = ARGV[#ARGV]
local previous = redis.call('GET', KEYS[8]) or ''
redis.call('XADD', KEYS[7], generation .. '-1',
           'users', ARGV[5], 'items', ARGV[6], 'all', ARGV[7], 'id', commit, 'prev', previous)
-- The log is bounded in bytes, not entries: a batch lists its rows, a slice its block.
local total = redis.call('INCRBY', KEYS[10], string.len(ARGV[5]) + string.len(ARGV[6]) + 64)
while total > tonumber(ARGV[4]) do
  local oldest = redis.call('XRANGE', KEYS[7], '-', '+', 'COUNT', 1)
  if #oldest == 0 then
    redis.call('SET', KEYS[10], 0)
    break
  end
  local size, entry = 64, oldest[1][2]
  for j = 1, #entry, 2 do
    if entry[j] == 'users' or entry[j] == 'items' then size = size + string.len(entry[j + 1]) end
  end
  redis.call('XDEL', KEYS[7], oldest[1][1])
  total = redis.call('DECRBY', KEYS[10], size)
end
redis.call('SET', KEYS[8], commit)
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return generation
"""


# A partition's life (KEYS[1] :epochs, ARGV[1] "topic:partition"). ARGV[2] = 'advance':
# move it to epoch ARGV[3] + 1 with topic id ARGV[4], beginning at offset ARGV[5], if it is
# still at epoch ARGV[3];
# 'identify': record topic id ARGV[4] for epoch ARGV[3] if none is recorded. Several
# instances may notice at once: one changes it, the others get the result. Returns it.
_EPOCH = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
local record = {epoch = 0, topic_id = cjson.null}
if current then record = cjson.decode(current) end
local seen = tonumber(ARGV[3])
if ARGV[2] == 'advance' and record['epoch'] == seen then
  record = {epoch = seen + 1, topic_id = ARGV[4], start = tonumber(ARGV[5])}
  if ARGV[4] == '' then record['topic_id'] = cjson.null end
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
elseif ARGV[2] == 'identify' and record['epoch'] == seen and record['topic_id'] == cjson.null then
  record['topic_id'] = ARGV[4]
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
end
return cjson.encode(record)
"""


class StateError(RuntimeError):
    """The namespace is missing, or holds something this version cannot read."""


@dataclass(frozen=True)
class Meta:
    params: Hyperparameters
    shards: int
    users: int
    items: int

    def count(self, side: str) -> int:
        return self.users if side == "user" else self.items


@dataclass
class ShardWrite:
    """Everything one batch changes in one shard, written in one transaction."""

    factors: dict[str, dict[int, np.ndarray]] = field(
        default_factory=lambda: {side: {} for side in SIDES}
    )
    rows: dict[str, dict[int, np.ndarray]] = field(
        default_factory=lambda: {side: {} for side in SIDES}
    )
    gramians: dict[str, np.ndarray] = field(default_factory=dict)
    tombstones: dict[str, float] = field(default_factory=dict)
    receipts: dict[str, str] = field(default_factory=dict)  # "topic:partition:offset" -> JSON


Observer = Callable[[str, float, bool], None]  # operation, seconds, failed


def _timed(operation: str) -> Callable:
    """Report each call's duration and failure to the state's observer (metrics)."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def timed(self: ModelState, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = method(self, *args, **kwargs)
            except redis.RedisError:
                if self.observer is not None:
                    self.observer(operation, time.perf_counter() - started, True)
                raise
            if self.observer is not None:
                self.observer(operation, time.perf_counter() - started, False)
            return result

        return timed

    return wrap


_META_KEYS = ("kind", "factors", "regularization", "alpha", "shards", "users", "items")


class ModelState:
    """One model namespace in Redis (a single server or a cluster)."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        namespace: str,
        observer: Observer | None = None,
        holder: str | None = None,
        lease_ttl_ms: int = 10_000,
        lease_wait_s: float = 60.0,
    ) -> None:
        self.client = client
        self.layout = Layout(namespace)
        self.observer = observer
        self.lease = WriteLease(
            client, self.layout, holder or socket.gethostname(), lease_ttl_ms, lease_wait_s
        )
        self._allocate = client.register_script(_ALLOCATE)
        self._write_intent = client.register_script(_WRITE_INTENT)
        self._finish = client.register_script(_FINISH)
        self._epoch = client.register_script(_EPOCH)

    # ----- metadata and ids -------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.client.exists(self.layout.meta))

    def meta(self) -> Meta:
        raw = {k.decode(): v.decode() for k, v in self.client.hgetall(self.layout.meta).items()}
        if not raw:
            raise StateError(
                f"no model in namespace {self.layout.namespace!r} (run `unlearn load`)"
            )
        if int(raw.get("format", 0)) > FORMAT_VERSION:
            raise StateError(f"namespace format {raw['format']} is newer than this version reads")
        incomplete = [k for k in _META_KEYS if k not in raw]
        if incomplete:  # a load that did not finish, or a Redis that lost part of it
            raise StateError(
                f"namespace {self.layout.namespace!r} is incomplete (no {', '.join(incomplete)}"
                "): load the model again with `unlearn load --replace`"
            )
        params = Hyperparameters(
            kind=raw["kind"],  # type: ignore[arg-type]
            factors=int(raw["factors"]),
            regularization=float(raw["regularization"]),
            alpha=float(raw["alpha"]),
        )
        return Meta(params, int(raw["shards"]), int(raw["users"]), int(raw["items"]))

    def log_salt(self) -> bytes:
        """The namespace's key for naming subjects in logs (redaction.py), made once."""
        return bytes.fromhex(self._meta_once("salt", 16))

    def load_id(self) -> str:
        """A name for this load of a model into the namespace, made once per load. Offset
        commits carry it (positions.CommitNote): a commit made for this load, of a
        partition the state has no record of, means the state lost what it had read."""
        return self._meta_once("load", 8)

    def _meta_once(self, name: str, size: int) -> str:
        """A random value kept in the metadata, written by `write_meta` (or, in a namespace
        loaded by an older version, by the first reader: one wins, all read the same)."""
        value = self.client.hget(self.layout.meta, name)
        if value is None:
            self.client.hsetnx(self.layout.meta, name, os.urandom(size).hex())
            value = self.client.hget(self.layout.meta, name)
        return value.decode()

    @_timed("allocate")
    def allocate(self, side: str, ids: list[str]) -> np.ndarray:
        """Indices of the ids, creating the ones not seen before."""
        out = np.empty(len(ids), dtype=np.int64)
        keys = [self.layout.id_map(side), self.layout.index_map(side), self.layout.meta]
        counter = "users" if side == "user" else "items"
        for start in range(0, len(ids), _PIPELINE_CHUNK):
            chunk = ids[start : start + _PIPELINE_CHUNK]
            out[start : start + len(chunk)] = self._allocate(keys=keys, args=[counter, *chunk])
        return out

    def lookup(self, side: str, ids: list[str]) -> np.ndarray:
        """Indices of the ids, -1 for ids never seen."""
        if not ids:
            return np.empty(0, dtype=np.int64)
        values = self.client.hmget(self.layout.id_map(side), ids)
        return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)

    def ids_of(self, side: str, indices: Iterable[int]) -> list[str]:
        indices = [int(n) for n in indices]
        if not indices:
            return []
        values = self.client.hmget(self.layout.index_map(side), indices)
        return [
            v.decode() if v is not None else f"#{n}" for v, n in zip(values, indices, strict=True)
        ]

    # ----- reading ----------------------------------------------------------------------

    @_timed("read_rows")
    def read_rows(self, side: str, indices: np.ndarray, shards: int) -> list[np.ndarray]:
        """The stored interactions of each row (empty where it has none)."""
        values = self._hmget_by_shard(side, indices, shards, ShardKeys.rows)
        return [np.frombuffer(v, dtype=ROW_DTYPE) if v else _EMPTY_ROW for v in values]

    def read_factors(self, side: str, indices: np.ndarray, shards: int, k: int) -> np.ndarray:
        values = self._hmget_by_shard(side, indices, shards, ShardKeys.factors)
        out = np.zeros((len(indices), k), dtype=np.float32)
        for n, value in enumerate(values):
            if value:
                out[n] = np.frombuffer(value, dtype=FACTOR_DTYPE)
        return out

    def read_all_factors(self, side: str, meta: Meta) -> np.ndarray:
        out = np.zeros((meta.count(side), meta.params.factors), dtype=np.float32)
        for shard in range(meta.shards):
            for index, value in self.client.hgetall(self.layout.shard(shard).factors(side)).items():
                row = int(index)
                if row >= len(out):
                    out = _grow(out, row + 1)
                out[row] = np.frombuffer(value, dtype=FACTOR_DTYPE)
        return out

    @_timed("read_all_rows")
    def read_all_rows(self, side: str, meta: Meta) -> dict[int, np.ndarray]:
        rows: dict[int, np.ndarray] = {}
        for shard in range(meta.shards):
            for index, value in self.client.hgetall(self.layout.shard(shard).rows(side)).items():
                rows[int(index)] = np.frombuffer(value, dtype=ROW_DTYPE)
        return rows

    @_timed("read_applied")
    def read_applied(self) -> dict[str, int]:
        """ "topic:partition" -> the last offset whose effect is in the state."""
        return {k.decode(): int(v) for k, v in self.client.hgetall(self.layout.applied).items()}

    def read_marks(self, keys: list[str]) -> dict[str, Marks]:
        """The recorded fingerprints of these partition keys (absent: none yet)."""
        if not keys:
            return {}
        values = self.client.hmget(self.layout.marks, keys)
        return {k: Marks.decode(v.decode()) for k, v in zip(keys, values, strict=True) if v}

    def read_epochs(self, partitions: list[str]) -> dict[str, dict[str, Any]]:
        """ "topic:partition" -> {"epoch": n, "topic_id": id or None, "start": offset}: the
        partition's life, and the offset it was found to begin at."""
        if not partitions:
            return {}
        values = self.client.hmget(self.layout.epochs, partitions)
        return {
            p: json.loads(v) if v else {"epoch": 0, "topic_id": None}
            for p, v in zip(partitions, values, strict=True)
        }

    def advance_epoch(
        self, partition: str, seen: int, topic_id: str | None, start: int
    ) -> dict[str, Any]:
        """Start the partition's next life, read from offset `start`, if it is still at
        epoch `seen`; the record as it is now (another instance may have moved it)."""
        args = [partition, "advance", seen, topic_id or "", start]
        return json.loads(self._epoch(keys=[self.layout.epochs], args=args))

    def identify_epoch(self, partition: str, epoch: int, topic_id: str) -> dict[str, Any]:
        """Record the topic id the partition's life `epoch` has, if none is recorded."""
        args = [partition, "identify", epoch, topic_id]
        return json.loads(self._epoch(keys=[self.layout.epochs], args=args))

    @_timed("read_tombstones")
    def read_tombstones(self, fields_by_shard: dict[int, list[str]]) -> dict[str, float]:
        pipe = self.client.pipeline(transaction=False)
        order = []
        for shard, names in fields_by_shard.items():
            if names:
                pipe.hmget(self.layout.shard(shard).tombstones, names)
                order.append(names)
        found: dict[str, float] = {}
        for names, values in zip(order, pipe.execute(), strict=True):
            found.update({n: float(v) for n, v in zip(names, values, strict=True) if v is not None})
        return found

    def read_receipt(self, shard: int, key: str) -> str | None:
        value = self.client.hget(self.layout.shard(shard).receipts, key)
        return value.decode() if value is not None else None

    def read_receipts(self, shards: int) -> list[dict[str, Any]]:
        """Every receipt ever recorded, oldest first: the audit trail."""
        receipts = []
        for shard in range(shards):
            for value in self.client.hgetall(self.layout.shard(shard).receipts).values():
                receipts.append(json.loads(value))
        return sorted(receipts, key=lambda r: (r.get("applied_at", 0.0), r.get("source", "")))

    # ----- writing ----------------------------------------------------------------------

    def write_meta(self, params: Hyperparameters, shards: int, replace: bool) -> None:
        if self.exists() and not replace:
            raise StateError(
                f"namespace {self.layout.namespace!r} already holds a model "
                "(pass --replace to overwrite it)"
            )
        self.delete_namespace()
        self.client.hset(
            self.layout.meta,
            mapping={
                "kind": params.kind,
                "factors": params.factors,
                "regularization": repr(params.regularization),
                "alpha": repr(params.alpha),
                "shards": shards,
                "users": 0,
                "items": 0,
                "format": FORMAT_VERSION,
                "salt": os.urandom(16).hex(),
                "load": os.urandom(8).hex(),
            },
        )

    def delete_namespace(self) -> None:
        for key in self.client.scan_iter(match=self.layout.scan_pattern(), count=1000):
            self.client.delete(key)

    def write_shards(self, writes: dict[int, ShardWrite], token: int) -> None:
        """Each shard's writes in one script, all shards in one round trip.

        A shard a newer token has written is left alone: its rows are newer than these.
        """
        pipe = self.client.pipeline(transaction=False)
        for shard, write in sorted(writes.items()):
            keys, args = _shard_commands(self.layout.shard(shard), write)
            # EVAL by name: Redis Cluster's pipeline routes it by its keys (one slot).
            pipe.execute_command("EVAL", _SHARD_WRITE, len(keys), *keys, token, *args)
        pipe.execute()

    @_timed("commit")
    def commit_batch(
        self,
        writes: dict[int, ShardWrite],
        applied: dict[str, int],
        status: dict[str, str] | None = None,
        interactions_delta: int = 0,
        all_rows: bool = False,
        marks: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """Make a batch durable: intent, shards, then offsets with the intent's removal.

        Needs the write lease. `status` and `interactions_delta` are recorded with the
        offsets (same transaction), so `unlearn status` always describes the state as
        committed. `all_rows`: every factor changed (a sweep). `marks`: partition key ->
        the fingerprint mark ("offset:digest") of the batch's last message there. Returns
        the new generation and the commit's id; LeaseLost when another instance took the
        lease first (nothing was written then).
        """
        token = self.lease.token
        blob = intent.encode(writes, applied, token)
        keys = [self.layout.fence, self.layout.intent, self.layout.lease]
        args = [token, blob, self.lease.holder, self.lease.ttl_ms]
        if not self._write_intent(keys=keys, args=args):
            raise LeaseLost("the write lease was taken over before the batch was written")
        return self._apply(
            writes, applied, token, status or {}, interactions_delta, all_rows, marks or {}
        )

    def recover(self) -> bool:
        """Finish a batch a crash interrupted (needs the write lease). True when there was one."""
        blob = self.client.get(self.layout.intent)
        if blob is None:
            return False
        writes, applied, token = intent.decode(blob, ShardWrite)
        # The interrupted batch's status line is lost, and so is its interaction count
        # delta; `unlearn status` recounts from the rows after a recovery.
        self._apply(writes, applied, token, {"recovered_at": repr(time.time())}, 0, False, {})
        self.client.hset(self.layout.status, "interactions", self.count_interactions())
        return True

    def read_changes(self, after: int, head: str | None = None) -> tuple[set[int], set[int]] | None:
        """Users and items whose factors changed in the generations after `after`, whose
        commit was `head`.

        None when the log no longer reaches back that far, when a sweep changed every row,
        or when the commit after `after` does not follow `head` (Redis went back to an
        older state and moved on from there): the caller reloads everything then.
        """
        entries = self.client.xrange(self.layout.changes, min=f"{after + 1}-1")
        if not entries or entries[0][0].decode() != f"{after + 1}-1":
            return None
        previous = entries[0][1].get(b"prev", b"").decode() or None
        if previous != head:
            return None
        users: set[int] = set()
        items: set[int] = set()
        for _, body in entries:
            if body[b"all"] == b"1":
                return None
            users.update(np.frombuffer(body[b"users"], dtype="<u4").tolist())
            items.update(np.frombuffer(body[b"items"], dtype="<u4").tolist())
        return users, items

    def _apply(
        self,
        writes: dict[int, ShardWrite],
        applied: dict[str, int],
        token: int,
        status: dict[str, str],
        interactions_delta: int,
        all_rows: bool,
        marks: dict[str, str],
    ) -> tuple[int, str]:
        self.write_shards(writes, token)
        changed = {
            side: sorted({n for w in writes.values() for n in w.factors[side]}) for side in SIDES
        }
        keys = [
            self.layout.fence,
            self.layout.lease,
            self.layout.applied,
            self.layout.status,
            self.layout.intent,
            self.layout.generation,
            self.layout.changes,
            self.layout.head,
            self.layout.marks,
            self.layout.changes_bytes,
        ]
        commit = os.urandom(8).hex()
        args: list[Any] = [
            self.lease.token,
            self.lease.holder,
            self.lease.ttl_ms,
            CHANGES_BYTES,
            np.asarray(changed["user"], dtype="<u4").tobytes(),
            np.asarray(changed["item"], dtype="<u4").tobytes(),
            int(all_rows),
            interactions_delta,
            len(applied),
            *[x for pair in applied.items() for x in pair],
            len(status),
            *[x for pair in status.items() for x in pair],
            len(marks),
            *[x for pair in marks.items() for x in pair],
            MARKS_KEPT,
            commit,
        ]
        generation = int(self._finish(keys=keys, args=args))
        if generation < 0:
            raise LeaseLost("the write lease was taken over before the batch was finished")
        return generation, commit

    def server_memory(self) -> int:
        """Bytes the Redis server uses; on a cluster, summed over the primaries."""
        if isinstance(self.client, redis.RedisCluster):
            per_node = self.client.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
            return sum(int(info["used_memory"]) for info in per_node.values())
        return int(self.client.info("memory")["used_memory"])

    def memory_usage(self) -> int:
        """Bytes of all the namespace's keys (MEMORY USAGE, Redis's default sampling)."""
        total = 0
        for key in self.client.scan_iter(match=self.layout.scan_pattern(), count=1000):
            total += int(self.client.memory_usage(key) or 0)
        return total

    def count_interactions(self) -> int:
        """Stored interactions, counted from the user rows (12 bytes per record)."""
        meta = self.meta()
        total = 0
        for shard in range(meta.shards):
            key = self.layout.shard(shard).rows("user")
            for field_ in self.client.hkeys(key):
                total += int(self.client.hstrlen(key, field_)) // ROW_DTYPE.itemsize
        return total

    def generation(self) -> int:
        """Committed batches and sweeps so far (see the change log)."""
        return int(self.client.get(self.layout.generation) or 0)

    def head(self) -> tuple[int, str | None]:
        """The generation and the id of the newest commit (None before the first)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.layout.generation)
        pipe.get(self.layout.head)
        generation, head = pipe.execute()
        return int(generation or 0), head.decode() if head is not None else None

    def read_status(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.layout.status).items()}

    def consolidation_settled(self) -> bool:
        """Whether the namespace's consolidation last met its stopping rule (and no
        instance began a sweep since)."""
        return self.client.hget(self.layout.status, "consolidation") == b"settled"

    def set_consolidation(self, settled: bool) -> None:
        self.client.hset(self.layout.status, "consolidation", "settled" if settled else "sweeping")

    def set_interactions(self, count: int) -> None:
        self.client.hset(self.layout.status, "interactions", count)

    def set_counts(self, users: int, items: int) -> None:
        self.client.hset(self.layout.meta, mapping={"users": users, "items": items})

    def _hmget_by_shard(
        self,
        side: str,
        indices: np.ndarray,
        shards: int,
        key: Callable[[ShardKeys, str], str],
    ) -> list[bytes | None]:
        """HMGET of many rows, one command per shard, all in one round trip."""
        indices = np.asarray(indices, dtype=np.int64)
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, index in enumerate(indices.tolist()):
            by_shard[shard_of(index, shards)].append(position)
        pipe = self.client.pipeline(transaction=False)
        order = list(by_shard.items())
        for shard, positions in order:
            pipe.hmget(key(self.layout.shard(shard), side), [int(indices[p]) for p in positions])
        out: list[bytes | None] = [None] * len(indices)
        for (_, positions), values in zip(order, pipe.execute(), strict=True):
            for position, value in zip(positions, values, strict=True):
                out[position] = value
        return out


_EMPTY_ROW = np.empty(0, dtype=ROW_DTYPE)


def _shard_commands(keys: ShardKeys, write: ShardWrite) -> tuple[list[str], list[Any]]:
    """The shard's keys (its epoch first) and the commands for the _SHARD_WRITE script."""
    names = [keys.epoch]
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
        pairs = [x for n, v in factors.items() for x in (n, _f32(v))]
        command("HSET", keys.factors(side), pairs, 2)
        rows = write.rows[side]
        full = [x for n, r in rows.items() if len(r) for x in (n, r.tobytes())]
        command("HSET", keys.rows(side), full, 2)
        command("HDEL", keys.rows(side), [n for n, r in rows.items() if not len(r)], 1)
    for side, gramian in write.gramians.items():
        command("SET", keys.gramian(side), [np.asarray(gramian, dtype=GRAMIAN_DTYPE).tobytes()], 1)
    tombstones = [x for k, v in write.tombstones.items() for x in (k, repr(v))]
    command("HSET", keys.tombstones, tombstones, 2)
    command("HSET", keys.receipts, [x for pair in write.receipts.items() for x in pair], 2)
    return names, args


def _f32(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=FACTOR_DTYPE).tobytes()


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    grown = np.zeros((rows, array.shape[1]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
