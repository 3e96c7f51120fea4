"""Redis key names. Every key lives under a model namespace and carries a hash tag.

Rows are spread over `shards` by index (row n lives in shard n % shards). All keys of one
shard share the hash tag {unlearn:NS:S}, so a shard's update is one MULTI/EXEC on one
Redis Cluster slot; the id maps and metadata share {unlearn:NS}, so id allocation is one
Lua script. The same code runs on a single Redis and on Redis Cluster.

per shard S ({unlearn:NS:S}):
  :uf  HASH  user index -> user factor, k float32
  :if  HASH  item index -> item factor, k float32
  :ur  HASH  user index -> the user's interactions, ROW_DTYPE records sorted by item
  :ir  HASH  item index -> the item's interactions, ROW_DTYPE records sorted by user
  :ug  STRING  sum of x x' over the shard's users, k x k float64 (partial Gramian)
  :ig  STRING  sum of y y' over the shard's items
  :tomb     HASH  "p:USER:ITEM" / "u:USER" / "i:ITEM" (indices) -> deletion time T, the
                  latest; an interaction of that scope with ts <= T is never learned
  :receipts HASH  "topic:partition:offset" -> receipt JSON: the audit trail, and what a
                  replayed deletion re-sends (marked "resent")
  :epoch    STRING  the highest lease token that wrote the shard (fencing, see lease.py)
global ({unlearn:NS}):
  :meta    HASH  kind, factors, regularization, alpha, shards, users, items, format
  :uid / :iid  HASH  id -> index;   :uix / :iix  HASH  index -> id
  :applied HASH  "topic:partition" -> last offset whose effect is in the state
  :intent  STRING  the batch being written (redo log), deleted with the offsets update
  :status  HASH  interactions (count), last_batch (JSON), residual, updated_at
  :lease   STRING  the instance holding the write lease (expires)
  :fence   STRING  counter: each acquisition of the lease draws the next token
  :generation  STRING  counter: committed batches and sweeps
  :changes STREAM  per generation, the rows whose factors it wrote (instances refresh
                   their in-memory replica from it), the commit's id and the one before
                   it; bounded in bytes (:changes-bytes counts them)
  :head    STRING  the id of the newest commit: a replica whose last commit is not the
                   one the next names was left behind by a restore, and reloads
  :marks   HASH  partition key -> fingerprints of the epoch's first message and of recent
                 batches' last ones ("first|newest,...": positions.Marks)
  :epochs  HASH  "topic:partition" -> {"epoch", "topic_id", "start"}: the partition's current life
                 (a re-created topic starts a new one; its keys read "topic#N:partition")
  :redriven HASH  dead letter "topic:partition:offset" -> when `unlearn redrive` sent it back
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# One interaction as stored: the other side's index, the weight, the event time (seconds).
ROW_DTYPE = np.dtype([("other", "<u4"), ("weight", "<f4"), ("ts", "<u4")])
FACTOR_DTYPE = np.dtype("<f4")
GRAMIAN_DTYPE = np.dtype("<f8")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Layout:
    namespace: str

    @property
    def _global(self) -> str:
        return f"{{unlearn:{self.namespace}}}"

    @property
    def meta(self) -> str:
        return f"{self._global}:meta"

    @property
    def applied(self) -> str:
        return f"{self._global}:applied"

    @property
    def intent(self) -> str:
        return f"{self._global}:intent"

    @property
    def status(self) -> str:
        return f"{self._global}:status"

    @property
    def lease(self) -> str:
        return f"{self._global}:lease"

    @property
    def fence(self) -> str:
        return f"{self._global}:fence"

    @property
    def generation(self) -> str:
        return f"{self._global}:generation"

    @property
    def changes(self) -> str:
        return f"{self._global}:changes"

    @property
    def changes_bytes(self) -> str:
        return f"{self._global}:changes-bytes"

    @property
    def head(self) -> str:
        return f"{self._global}:head"

    @property
    def marks(self) -> str:
        return f"{self._global}:marks"

    @property
    def epochs(self) -> str:
        return f"{self._global}:epochs"

    @property
    def redriven(self) -> str:
        return f"{self._global}:redriven"

    def id_map(self, side: str) -> str:
        return f"{self._global}:{side[0]}id"

    def index_map(self, side: str) -> str:
        return f"{self._global}:{side[0]}ix"

    def shard(self, shard: int) -> ShardKeys:
        return ShardKeys(f"{{unlearn:{self.namespace}:{shard}}}")

    def scan_pattern(self) -> str:
        return f"{{unlearn:{self.namespace}*"


@dataclass(frozen=True)
class ShardKeys:
    tag: str

    def factors(self, side: str) -> str:
        return f"{self.tag}:{side[0]}f"

    def rows(self, side: str) -> str:
        return f"{self.tag}:{side[0]}r"

    def gramian(self, side: str) -> str:
        return f"{self.tag}:{side[0]}g"

    @property
    def tombstones(self) -> str:
        return f"{self.tag}:tomb"

    @property
    def receipts(self) -> str:
        return f"{self.tag}:receipts"

    @property
    def epoch(self) -> str:
        return f"{self.tag}:epoch"


def shard_of(index: int | np.ndarray, shards: int) -> int | np.ndarray:
    """The shard of a user or item row: its index modulo the number of shards."""
    return index % shards


def rows_of_shard(shard: int, shards: int, rows: int) -> np.ndarray:
    """The indices of the rows (of `rows`) that live in `shard`."""
    return np.arange(shard, rows, shards)


def shard_major(shards: int, rows: int) -> np.ndarray:
    """All row indices, shard by shard: a consolidation slice is a run of this order, so
    it writes the Gramians of one shard (or two), not of every shard."""
    return np.concatenate([rows_of_shard(s, shards, rows) for s in range(shards)])


def receipt_shard(source_key: str, shards: int) -> int:
    """The shard whose :receipts hash holds the receipt of the request at `source_key`."""
    return zlib.crc32(source_key.encode()) % shards


def tombstone(user: int, item: int, shards: int) -> tuple[str, int]:
    """A deletion scope's tombstone field and its shard (-1: the scope has no such side).

    A pair's and a user's tombstones live with the user's row, an item's with its row.
    """
    if user >= 0 and item >= 0:
        return pair_tombstone(user, item), user % shards
    if user >= 0:
        return user_tombstone(user), user % shards
    return item_tombstone(item), item % shards


def pair_tombstone(user: int, item: int) -> str:
    return f"p:{user}:{item}"


def user_tombstone(user: int) -> str:
    return f"u:{user}"


def item_tombstone(item: int) -> str:
    return f"i:{item}"
