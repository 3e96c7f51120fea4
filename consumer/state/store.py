"""The model's state in Redis (layout.py names every key): its metadata and ids, rows and
factors, the ingest marks, audit trail and bookkeeping, read and written here.

What an owner changes in its shards goes through the fenced shard log (shard_log.py,
`ModelState.log`): ownership by token, one script per shard and commit, inboxes and change
logs. Everything in this module either reads, or writes what no shard owns (metadata,
id allocation, the ingest offsets, heartbeats, the bell).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from consumer.errors import StateError
from consumer.pipeline.positions import MARKS_KEPT, Marks
from consumer.state.layout import (
    FACTOR_DTYPE,
    FORMAT_VERSION,
    ROW_DTYPE,
    Layout,
    ShardKeys,
    parse_unseen,
    shard_of,
    unseen_name,
)
from consumer.state.shard_log import SIDES as SIDES  # every reader of the state names the sides
from consumer.state.shard_log import ShardLog
from consumer.state.timing import Observer
from consumer.state.timing import timed as _timed
from unlearn_core.params import Hyperparameters

_PIPELINE_CHUNK = 2000
_SCRIPT_ARGS = 4000  # field/value arguments per command in a script (Lua's unpack limit)
SCAN_ROWS = 4096  # factor rows read per HSCAN when a whole shard is read


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

# Interactions' ids, as ALLOCATE, a pair at a time, with the latest time of the tombstones
# a deletion of an unseen id left for the pair (layout: `:unseen`; '' for none). One script:
# a deletion naming the id either ran before (its tombstone is read here) or finds the id.
# KEYS: uid, uix, iid, iix, meta, unseen. ARGV: user, item, user, item...
# Returns user index, item index, latest tombstone time (as stored, or ''), per pair.
_ALLOCATE_PAIRS = """
local function index(map, back, counter, id)
  local n = redis.call('HGET', map, id)
  if not n then
    n = redis.call('HINCRBY', KEYS[5], counter, 1) - 1
    redis.call('HSET', map, id, n)
    redis.call('HSET', back, n, id)
  end
  return tonumber(n)
end
local unseen = redis.call('EXISTS', KEYS[6]) == 1
local out = {}
for n = 1, #ARGV, 2 do
  local user, item = ARGV[n], ARGV[n + 1]
  out[#out + 1] = index(KEYS[1], KEYS[2], 'users', user)
  out[#out + 1] = index(KEYS[3], KEYS[4], 'items', item)
  local latest = ''
  if unseen then
    local found = redis.call('HMGET', KEYS[6], 'u:' .. user, 'i:' .. item,
                             'p:' .. #user .. ':' .. user .. item)
    for k = 1, 3 do
      local at = found[k]
      if at and (latest == '' or tonumber(at) > tonumber(latest)) then latest = at end
    end
  end
  out[#out + 1] = latest
end
return out
"""

# Deletions' ids as indices, never creating one: a deletion whose subject the model has
# never seen (its user, its item, or either of a pair) keeps its tombstone by id in
# `:unseen` (the latest time), atomic with _ALLOCATE_PAIRS.
# KEYS: uid, iid, unseen. ARGV per deletion: scope, user ('' none), item ('' none), ts,
# the `:unseen` field. Returns user index, item index (-1: never seen), per deletion.
_RESOLVE = """
local out = {}
for n = 1, #ARGV, 5 do
  local scope, user, item, ts, field = ARGV[n], ARGV[n + 1], ARGV[n + 2], ARGV[n + 3], ARGV[n + 4]
  local u, i = -1, -1
  if user ~= '' then u = tonumber(redis.call('HGET', KEYS[1], user) or -1) end
  if item ~= '' then i = tonumber(redis.call('HGET', KEYS[2], item) or -1) end
  if (scope == 'user' and u < 0) or (scope == 'item' and i < 0)
      or (scope == 'pair' and (u < 0 or i < 0)) then
    local at = redis.call('HGET', KEYS[3], field)
    if not at or tonumber(at) < tonumber(ts) then redis.call('HSET', KEYS[3], field, ts) end
  end
  out[#out + 1] = u
  out[#out + 1] = i
end
return out
"""

# What a batch took into the state from its input partitions: offsets (never back: two
# instances may record the same partition around a rebalance, and both recorded what is
# in the inboxes), fingerprint marks, status. Each partition's marks get the batch's last
# message in front, capped; a partition's first batch records it as the epoch's first too.
# KEYS: applied, status, marks. ARGV: n, applied..., m, status..., j, marks..., kept.
_INGESTED = """
local n = 2
local count = tonumber(ARGV[1])
for m = 0, count - 1 do
  local field, offset = ARGV[n + 2 * m], tonumber(ARGV[n + 2 * m + 1])
  local current = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
  if offset > current then redis.call('HSET', KEYS[1], field, offset) end
end
n = n + 2 * count
count = tonumber(ARGV[n])
n = n + 1
if count > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, n, n + 2 * count - 1)) end
n = n + 2 * count
count = tonumber(ARGV[n])
local marks_kept = tonumber(ARGV[n + 2 * count + 1])
n = n + 1
for m = 0, count - 1 do
  local field, mark = ARGV[n + 2 * m], ARGV[n + 2 * m + 1]
  local current = redis.call('HGET', KEYS[3], field)
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
  redis.call('HSET', KEYS[3], field, value)
end
return 1
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


class NamespaceReplaced(StateError):
    """The namespace holds another model than the one this engine was started on (a
    `load --replace --force` under a running service): it stops rather than apply input
    to a model it never read."""


@dataclass(frozen=True)
class Meta:
    params: Hyperparameters
    shards: int
    users: int
    items: int
    load: str | None = None  # the load's id (a new one with every `unlearn load`)

    def count(self, side: str) -> int:
        return self.users if side == "user" else self.items


_META_KEYS = ("kind", "factors", "regularization", "alpha", "shards", "users", "items")


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob (SCAN's MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class ModelState:
    """One model namespace in Redis (a single server or a cluster)."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        namespace: str,
        observer: Observer | None = None,
        stage: str = "",
    ) -> None:
        self.client = client
        self.layout = Layout(namespace, stage)
        self.observer = observer
        # The fenced side: ownership, commits, inboxes, change logs (shard_log.py).
        self.log = ShardLog(self)
        self._allocate = client.register_script(_ALLOCATE)
        self._allocate_pairs = client.register_script(_ALLOCATE_PAIRS)
        self._resolve = client.register_script(_RESOLVE)
        self._ingested = client.register_script(_INGESTED)
        self._epoch = client.register_script(_EPOCH)
        # The namespace's bell as last seen, once this instance's own rings are counted:
        # a value beyond it means another writer wrote (layout.bell).
        self.bell_seen: int | None = None
        self.bell_heard = False  # someone else rang since `bell_rang` last said so
        self._had_model = False  # meta() found a whole model once
        # A running service's handle (Engine): a model gone from under it is a replacement
        # (NamespaceReplaced), never "no model yet".
        self.watch_replacement = False

    @property
    def server(self) -> str:
        """Which Redis this is, for log lines (host and port, never a password)."""
        if isinstance(self.client, redis.RedisCluster):
            nodes = self.client.get_nodes()[:3]
            return "cluster " + ",".join(f"{n.host}:{n.port}" for n in nodes)
        kwargs = self.client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        return f"{where}/{kwargs.get('db', 0)}"

    # ----- metadata and ids -------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self.client.exists(self.layout.meta))

    def meta(self) -> Meta:
        raw = {k.decode(): v.decode() for k, v in self.client.hgetall(self.layout.meta).items()}
        incomplete = [k for k in _META_KEYS if k not in raw]
        if incomplete and self._had_model and self.watch_replacement:
            # It held a model when this handle first read it: a load is replacing it (or
            # someone removed it) under a running reader.
            raise NamespaceReplaced(
                f"namespace {self.layout.namespace!r} was removed or is being replaced "
                "under this service: it stopped without applying anything more; start it "
                "again once the load is done"
            )
        if not raw:
            raise StateError(
                f"no model in namespace {self.layout.namespace!r} (run `unlearn load`)"
            )
        if int(raw.get("format", 0)) > FORMAT_VERSION:
            raise StateError(f"namespace format {raw['format']} is newer than this version reads")
        if incomplete:  # a load that did not finish, or a Redis that lost part of it
            raise StateError(
                f"namespace {self.layout.namespace!r} is incomplete (no {', '.join(incomplete)}"
                "): load the model again with `unlearn load --replace`"
            )
        if int(raw.get("format", 0)) < FORMAT_VERSION:
            raise StateError(
                f"namespace {self.layout.namespace!r} was written by an earlier version "
                f"(format {raw.get('format', 0)}): export it with that version and load it "
                "again (docs/deploy.md, upgrading)"
            )
        self._had_model = True
        params = Hyperparameters(
            kind=raw["kind"],  # type: ignore[arg-type]
            factors=int(raw["factors"]),
            regularization=float(raw["regularization"]),
            alpha=float(raw["alpha"]),
        )
        return Meta(
            params, int(raw["shards"]), int(raw["users"]), int(raw["items"]), raw.get("load")
        )

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

    @_timed("allocate")
    def allocate_pairs(
        self, users: list[str], items: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices of each interaction's user and item (created if new), and the latest
        time of the tombstones by id that reach the pair (-inf: none; layout `:unseen`)."""
        n = len(users)
        out = np.empty((n, 2), dtype=np.int64)
        limits = np.full(n, -np.inf)
        layout = self.layout
        keys = [layout.id_map("user"), layout.index_map("user"), layout.id_map("item"),
                layout.index_map("item"), layout.meta, layout.unseen]  # fmt: skip
        step = _PIPELINE_CHUNK // 2
        for start in range(0, n, step):
            args = [v for pair in zip(users[start : start + step], items[start : start + step],
                                      strict=True) for v in pair]  # fmt: skip
            found = self._allocate_pairs(keys=keys, args=args)
            count = len(found) // 3
            out[start : start + count] = np.array(
                [found[3 * k : 3 * k + 2] for k in range(count)], dtype=np.int64
            ).reshape(count, 2)
            for k in range(count):
                if found[3 * k + 2]:
                    limits[start + k] = float(found[3 * k + 2])
        return out[:, 0], out[:, 1], limits

    def resolve_deletions(
        self, deletions: Sequence[tuple[str, str | None, str | None, float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices of each deletion's user and item, -1 where the id was never seen, never
        creating one: a deletion naming an unseen id keeps its tombstone by id instead
        (layout `:unseen`). `deletions`: (scope, user, item, ts)."""
        users = np.full(len(deletions), -1, dtype=np.int64)
        items = np.full(len(deletions), -1, dtype=np.int64)
        layout = self.layout
        keys = [layout.id_map("user"), layout.id_map("item"), layout.unseen]
        step = _PIPELINE_CHUNK // 5
        for start in range(0, len(deletions), step):
            args: list[str] = []
            for scope, user, item, ts in deletions[start : start + step]:
                field = unseen_name(scope, user, item)
                args += [scope, user or "", item or "", repr(float(ts)), field]
            found = self._resolve(keys=keys, args=args)
            count = len(found) // 2
            users[start : start + count] = found[0::2]
            items[start : start + count] = found[1::2]
        return users, items

    def read_unseen(self) -> dict[tuple[str, str | None, str | None], float]:
        """Every tombstone by id: (scope, user, item) -> its deletion time."""
        return {
            parse_unseen(name): float(at)
            for name, at in self.client.hgetall(self.layout.unseen).items()
        }

    def unseen_of(self, side: str, subject: str) -> list[dict[str, Any]]:
        """The tombstones by id of one subject's scope: its whole history's and its pairs'
        (as inspection lists tombstones)."""
        key = self.layout.unseen
        out: list[dict[str, Any]] = []
        whole = self.client.hget(key, unseen_name(side, subject, subject))
        if whole is not None:
            out.append({"scope": side, "ts": float(whole)})
        escaped = _glob_escape(subject)
        pattern = (f"p:{len(subject.encode())}:{escaped}*" if side == "user"
                   else f"p:*{escaped}")  # fmt: skip
        for name, at in self.client.hscan_iter(key, match=pattern, count=1000):
            _, user, item = parse_unseen(name)
            if (user if side == "user" else item) == subject:
                other = ("item", item) if side == "user" else ("user", user)
                out.append({"scope": "pair", other[0]: other[1], "ts": float(at)})
        return out

    def write_unseen(self, tombstones: Mapping[tuple[str, str | None, str | None], float]) -> None:
        """Tombstones by id, each kept at its latest time (a load's deletion history)."""
        fields = {unseen_name(*key): float(at) for key, at in tombstones.items()}
        if not fields:
            return
        stored = self.client.hmget(self.layout.unseen, list(fields))
        newer = {
            name: repr(at)
            for (name, at), was in zip(fields.items(), stored, strict=True)
            if was is None or float(was) < at
        }
        if newer:
            self.client.hset(self.layout.unseen, mapping=newer)

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

    # ----- reading rows and factors -----------------------------------------------------

    @_timed("read_rows")
    def read_rows(self, side: str, indices: np.ndarray, shards: int) -> list[np.ndarray]:
        """Each row's stored interactions (empty where it has none). An item's row is its
        slices of every shard, merged (sorted by user)."""
        indices = np.asarray(indices, dtype=np.int64)
        if side == "user":
            values = self._hmget_by_shard(indices, shards, lambda k: k.rows("user"))
            return [_records(v) for v in values]
        slices = self.read_slices({s: indices.tolist() for s in range(shards)})
        return [merge_slices([slices.get((s, int(i))) for s in range(shards)]) for i in indices]

    @_timed("read_rows")
    def read_row_bytes(self, side: str, indices: np.ndarray, shards: int) -> list[bytes]:
        """Each row's stored interactions as bytes (ROW_DTYPE records; b"" where it has
        none). An item's row is its slices joined, in shard order, not sorted: what a
        solve reads, at a fraction of `read_rows`' cost."""
        indices = np.asarray(indices, dtype=np.int64)
        if side == "user":
            values = self._hmget_by_shard(indices, shards, lambda k: k.rows("user"))
            return [v or b"" for v in values]
        found = self.read_slice_bytes({s: indices.tolist() for s in range(shards)})
        return [b"".join(found.get((s, i), b"") for s in range(shards)) for i in indices.tolist()]

    def read_slices(self, wanted: Mapping[int, list[int]]) -> dict[tuple[int, int], np.ndarray]:
        """(shard, item) -> the item's slice in that shard, for the listed items of each
        shard (absent: the item has no interaction with the shard's users)."""
        return {
            key: np.frombuffer(value, dtype=ROW_DTYPE)
            for key, value in self.read_slice_bytes(wanted).items()
        }

    @_timed("read_slices")
    def read_slice_bytes(self, wanted: Mapping[int, list[int]]) -> dict[tuple[int, int], bytes]:
        """The same, as stored (ROW_DTYPE records): slices are joined as bytes, cheaper
        than concatenating record arrays."""
        pipe = self.client.pipeline(transaction=False)
        order = [(s, items) for s, items in wanted.items() if items]
        for shard, items in order:
            pipe.hmget(self.layout.shard(shard).rows("item"), items)
        out: dict[tuple[int, int], bytes] = {}
        for (shard, items), values in zip(order, pipe.execute(), strict=True):
            for item, value in zip(items, values, strict=True):
                if value:
                    out[(shard, int(item))] = value
        return out

    def read_factors(self, side: str, indices: np.ndarray, shards: int, k: int) -> np.ndarray:
        values = self._hmget_by_shard(indices, shards, lambda keys: keys.factors(side))
        out = np.zeros((len(indices), k), dtype=np.float32)
        for n, value in enumerate(values):
            if value:
                if len(value) != k * FACTOR_DTYPE.itemsize:
                    raise NamespaceReplaced(
                        f"namespace {self.layout.namespace!r} holds factors of rank "
                        f"{len(value) // FACTOR_DTYPE.itemsize} where this reader expects {k}: "
                        "it was replaced by another model; start again"
                    )
                out[n] = np.frombuffer(value, dtype=FACTOR_DTYPE)
        return out

    def scan_shard_factors(
        self, side: str, shard: int, k: int, count: int = SCAN_ROWS
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A shard's stored factors a few thousand rows at a time, as (rows, factors):
        what a reader holds meanwhile is one chunk, not the shard (HSCAN may give a row
        twice, never twice in one chunk)."""
        key = self.layout.shard(shard).factors(side)
        cursor = 0
        while True:
            cursor, found = self.client.hscan(key, cursor, count=count)
            if found:
                rows = np.fromiter((int(n) for n in found), dtype=np.int64, count=len(found))
                data = b"".join(found.values())
                if len(data) != len(found) * k * FACTOR_DTYPE.itemsize:
                    raise NamespaceReplaced(
                        f"namespace {self.layout.namespace!r} holds factors of another rank "
                        f"than {k}: it was replaced by another model; start again"
                    )
                yield rows, np.frombuffer(data, dtype=FACTOR_DTYPE).reshape(len(found), k)
            if cursor == 0:
                return

    def read_all_factors(self, side: str, meta: Meta) -> np.ndarray:
        out = np.zeros((meta.count(side), meta.params.factors), dtype=np.float32)
        for shard in range(meta.shards):
            for rows, values in self.scan_shard_factors(side, shard, meta.params.factors):
                if rows.max() >= len(out):
                    out = _grow(out, int(rows.max()) + 1)
                out[rows] = values
        return out

    def read_shard_rows(self, side: str, shard: int) -> dict[int, np.ndarray]:
        """A shard's user rows (`user`) or its item slices (`item`)."""
        key = self.layout.shard(shard).rows(side)
        return {int(i): _records(v) for i, v in self.client.hgetall(key).items()}

    @_timed("read_all_rows")
    def read_all_rows(self, side: str, meta: Meta) -> dict[int, np.ndarray]:
        """Every row of one side (an item's: its slices merged)."""
        if side == "user":
            rows: dict[int, np.ndarray] = {}
            for shard in range(meta.shards):
                rows.update(self.read_shard_rows("user", shard))
            return rows
        parts: dict[int, list[np.ndarray]] = defaultdict(list)
        for shard in range(meta.shards):
            for item, records in self.read_shard_rows("item", shard).items():
                parts[item].append(records)
        return {item: merge_slices(p) for item, p in parts.items()}

    # ----- reading the bookkeeping ------------------------------------------------------

    @_timed("read_applied")
    def read_applied(self) -> dict[str, int]:
        """ "topic:partition" -> the last offset taken into the state."""
        return self.read_applied_and_load()[0]

    def read_applied_and_load(self) -> tuple[dict[str, int], str | None]:
        """The applied offsets, and the id of the load they belong to (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.layout.applied)
        pipe.hget(self.layout.meta, "load")
        applied, load = pipe.execute()
        return {k.decode(): int(v) for k, v in applied.items()}, _text(load)

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
    def read_tombstones(
        self, fields_by_shard: Mapping[int, list[str]]
    ) -> dict[int, dict[str, float]]:
        """shard -> the listed tombstones it holds (field -> T)."""
        pipe = self.client.pipeline(transaction=False)
        order = [(s, names) for s, names in fields_by_shard.items() if names]
        for shard, names in order:
            pipe.hmget(self.layout.shard(shard).tombstones, names)
        found: dict[int, dict[str, float]] = defaultdict(dict)
        for (shard, names), values in zip(order, pipe.execute(), strict=True):
            found[shard].update(
                {n: float(v) for n, v in zip(names, values, strict=True) if v is not None}
            )
        return found

    def stored_receipts(self, wanted: Mapping[int, list[str]]) -> dict[int, dict[str, bytes]]:
        """shard -> those of these sources whose receipt its audit trail holds, with it:
        one HMGET per shard, one round trip."""
        order = [(s, keys) for s, keys in wanted.items() if keys]
        if not order:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for shard, keys in order:
            pipe.hmget(self.layout.shard(shard).receipts, keys)
        return {
            shard: {k: v for k, v in zip(keys, values, strict=True) if v is not None}
            for (shard, keys), values in zip(order, pipe.execute(), strict=True)
        }

    def deleted_items_of(self, user: int) -> np.ndarray:
        """The items of this user's pair deletions (their tombstones, in the user's shard)."""
        key = self.layout.shard(shard_of(user, self.meta().shards)).tombstones
        prefix = f"p:{user}:"
        found = [
            int(field.decode()[len(prefix) :])
            for field, _ in self.client.hscan_iter(key, match=f"{prefix}*", count=1000)
        ]
        return np.array(sorted(found), dtype=np.int64)

    def user_erased_at(self, user: int) -> float | None:
        """The time of this user's whole-history deletion, if any."""
        key = self.layout.shard(shard_of(user, self.meta().shards)).tombstones
        value = self.client.hget(key, f"u:{user}")
        return float(value) if value is not None else None

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

    def expire_receipts(self, shards: int, before: float) -> int:
        """Delete the audit trail's records applied before `before` (epoch seconds), save
        those still waiting for the broker's acknowledgement. How many went."""
        expired = 0
        for shard in range(shards):
            keys = self.layout.shard(shard)
            unsent = {m.decode() for m in self.client.smembers(keys.unsent)}
            old = [
                source for source, text in self.client.hgetall(keys.receipts).items()
                if source.decode() not in unsent
                and float(json.loads(text).get("applied_at", before)) < before
            ]  # fmt: skip
            for start in range(0, len(old), _PIPELINE_CHUNK):
                expired += int(
                    self.client.hdel(keys.receipts, *old[start : start + _PIPELINE_CHUNK])
                )
        return expired

    def read_pending(self, shard: int) -> dict[str, str]:
        """Requests coordinated in the shard whose parts are not all durable yet."""
        raw = self.client.hgetall(self.layout.shard(shard).pending)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def read_unsent(self, shard: int) -> list[str]:
        """Receipts stored in the shard that the broker may never have acknowledged."""
        keys = self.layout.shard(shard)
        sources = sorted(s.decode() for s in self.client.smembers(keys.unsent))
        if not sources:
            return []
        values = self.client.hmget(keys.receipts, sources)
        return [v.decode() for v in values if v is not None]

    def read_seen(self, shard: int) -> dict[str, int]:
        raw = self.client.hgetall(self.layout.shard(shard).seen)
        return {k.decode(): int(v) for k, v in raw.items()}

    def read_shard_status(self, shards: Iterable[int]) -> dict[int, dict[str, str]]:
        shards = list(shards)
        pipe = self.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hgetall(self.layout.shard(shard).status)
        return {
            s: {k.decode(): v.decode() for k, v in raw.items()}
            for s, raw in zip(shards, pipe.execute(), strict=True)
        }

    # ----- who writes: the instances alive on the namespace -----------------------------------

    def beat(self, instance: str, info: Mapping[str, Any]) -> None:
        """This instance is alive and serving the namespace (every few seconds)."""
        self.client.hset(
            self.layout.instances, instance, json.dumps({**info, "beat_at": time.time()})
        )

    def leave(self, instance: str) -> None:
        self.client.hdel(self.layout.instances, instance)

    def live_instances(self, within_s: float) -> dict[str, dict[str, Any]]:
        """Instances whose heartbeat is at most `within_s` old: who is writing now."""
        now = time.time()
        out = {}
        for name, value in self.client.hgetall(self.layout.instances).items():
            info = json.loads(value)
            if now - float(info.get("beat_at", 0.0)) <= within_s:
                out[name.decode()] = info
        return out

    def read_consolidation_request(self) -> str | None:
        return _text(self.client.get(self.layout.consolidate))

    def request_consolidation(self, sweeps: int) -> str:
        """Ask the namespace's owners for ALS sweeps (0: until they settle); its id."""
        request = {"id": os.urandom(6).hex(), "sweeps": sweeps, "at": time.time()}
        self.client.set(self.layout.consolidate, json.dumps(request))
        return request["id"]

    def read_status(self) -> dict[str, str]:
        """The namespace's status: the last batch's figures, and the interactions and the
        objective summed over the shards."""
        out = {k.decode(): v.decode() for k, v in self.client.hgetall(self.layout.status).items()}
        shards = self.read_shard_status(range(int(self.meta().shards)))
        out["interactions"] = str(sum(int(s.get("interactions", 0)) for s in shards.values()))
        if all("loss" in s for s in shards.values()):
            out["loss"] = repr(sum(float(s["loss"]) for s in shards.values()))
        return out

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

    # ----- the bell: has anyone else written? ---------------------------------------------

    def heard_own_ring(self, value: Any) -> None:
        """This instance rang the bell, which now reads `value`: if that is more than one
        past what it had seen, someone else rang too."""
        value = int(value)
        if self.bell_seen is not None and value != self.bell_seen + 1:
            self.bell_heard = True
        self.bell_seen = value

    def ring(self) -> None:
        """Tell the namespace's other instances that something changed (a write that went
        another way than commit, send or acquire: a swap's promotion)."""
        self.heard_own_ring(self.client.incr(self.layout.bell))

    def bell_rang(self) -> bool:
        """Did another writer touch the namespace since this instance last asked (or since
        it last heard it ring)? One GET: what an idle instance reads instead of its inboxes
        and every shard's counters. Also true the first time, and when the bell went back
        (Redis restored from an older snapshot)."""
        value = int(self.client.get(self.layout.bell) or 0)
        heard = self.bell_heard or value != self.bell_seen
        self.bell_seen, self.bell_heard = value, False
        return heard

    @_timed("ingested")
    def record_ingested(
        self,
        applied: Mapping[str, int],
        marks: Mapping[str, str] | None = None,
        status: Mapping[str, str] | None = None,
    ) -> None:
        """What a batch took into the state (its events are in their shards' inboxes):
        per partition the last offset (never back), its fingerprint mark, the status."""
        marks, status = marks or {}, status or {}
        args: list[Any] = [
            len(applied), *[x for pair in applied.items() for x in pair],
            len(status), *[x for pair in status.items() for x in pair],
            len(marks), *[x for pair in marks.items() for x in pair],
            MARKS_KEPT,
        ]  # fmt: skip
        self._ingested(keys=[self.layout.applied, self.layout.status, self.layout.marks], args=args)

    def sent(self, by_shard: Mapping[int, list[str]]) -> None:
        """Receipts the broker acknowledged: no longer to be published again."""
        pipe = self.client.pipeline(transaction=False)
        for shard, sources in by_shard.items():
            if sources:
                pipe.srem(self.layout.shard(shard).unsent, *sources)
        pipe.execute()

    def server_memory(self) -> int:
        """Bytes the Redis server uses; on a cluster, summed over the primaries."""
        if isinstance(self.client, redis.RedisCluster):
            per_node = self.client.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
            return sum(int(info["used_memory"]) for info in per_node.values())
        return int(self.client.info("memory")["used_memory"])

    def memory_usage(self) -> int:
        """Bytes of all the namespace's keys (MEMORY USAGE, Redis's default sampling)."""
        keys = list(self.client.scan_iter(match=self.layout.scan_pattern(), count=1000))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key)
        return sum(int(v or 0) for v in pipe.execute()) if keys else 0

    def count_interactions(self) -> int:
        """Stored interactions, counted from the user rows (ROW_DTYPE records)."""
        meta = self.meta()
        total = 0
        for shard in range(meta.shards):
            key = self.layout.shard(shard).rows("user")
            for field_ in self.client.hkeys(key):
                total += int(self.client.hstrlen(key, field_)) // ROW_DTYPE.itemsize
        return total

    def generation(self) -> int:
        """Commits so far, summed over the shards."""
        gens = self.log.read_generations(range(self.meta().shards))
        return sum(g for g, _ in gens.values())

    def set_counts(self, users: int, items: int) -> None:
        self.client.hset(self.layout.meta, mapping={"users": users, "items": items})

    def _hmget_by_shard(
        self,
        indices: np.ndarray,
        shards: int,
        key: Callable[[ShardKeys], str],
    ) -> list[bytes | None]:
        """HMGET of many rows, one command per shard, all in one round trip."""
        indices = np.asarray(indices, dtype=np.int64)
        by_shard: dict[int, list[int]] = defaultdict(list)
        for position, index in enumerate(indices.tolist()):
            by_shard[shard_of(index, shards)].append(position)
        pipe = self.client.pipeline(transaction=False)
        order = list(by_shard.items())
        for shard, positions in order:
            pipe.hmget(key(self.layout.shard(shard)), [int(indices[p]) for p in positions])
        out: list[bytes | None] = [None] * len(indices)
        for (_, positions), values in zip(order, pipe.execute(), strict=True):
            for position, value in zip(positions, values, strict=True):
                out[position] = value
        return out


EMPTY_ROW = np.empty(0, dtype=ROW_DTYPE)


def merge_slices(slices: Iterable[np.ndarray | None]) -> np.ndarray:
    """An item's row from its slices (each sorted by user, the users disjoint)."""
    parts = [s for s in slices if s is not None and len(s)]
    if not parts:
        return EMPTY_ROW
    if len(parts) == 1:
        return parts[0]
    row = np.concatenate(parts)
    return row[np.argsort(row["other"], kind="stable")]


def _records(value: bytes | None) -> np.ndarray:
    return np.frombuffer(value, dtype=ROW_DTYPE) if value else EMPTY_ROW


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text or None


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    grown = np.zeros((rows, array.shape[1]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
