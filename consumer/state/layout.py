"""Redis key names. Every key lives under a model namespace and carries a hash tag.

Rows are spread over `shards` by index (row n lives in shard n % shards). A shard is also
the unit of ownership: one instance at a time applies its work (docs/scaling.md), so
everything one owner writes for its rows shares the shard's hash tag {unlearn:NS:S} and is
written by one script on one Redis Cluster slot. An interaction lives in its user's shard
twice, in the user's row and in the item's slice of that shard: the pair has one owner,
and an item's row is the union of its slices over the shards. The id maps, metadata and
the input offsets share {unlearn:NS}. The same code runs on one Redis and on a Cluster.

per shard S ({unlearn:NS:S}):
  :uf  HASH  user index -> user factor, k float32
  :if  HASH  item index -> item factor, k float32
  :ur  HASH  user index -> the user's interactions, ROW_DTYPE records sorted by item
  :ir  HASH  item index -> the item's interactions with this shard's users (its slice),
             ROW_DTYPE records sorted by user
  :tomb     HASH  "p:USER:ITEM" / "u:USER" (this shard's users) and "i:ITEM" (every item
                  forgotten whole, copied to every shard) -> deletion time T, the latest;
                  an interaction of that scope with ts <= T is never learned
  :receipts HASH  "topic:partition:offset" -> receipt JSON, for the requests coordinated
                  here (a pair's or a user's: the user's shard; an item's: the item's)
  :pending  HASH  the same keys -> a request whose parts are not all durable (JSON)
  :unsent   SET   receipts stored but not yet acknowledged by the broker
  :inbox    STREAM  work for this shard's owner: events routed here, parts of requests
                    coordinated elsewhere, and the news that parts are done
  :fence    STRING  counter: each owner draws the next token; writes carry it
  :owner    STRING  the instance that drew the current token
  :cursor   STRING  the last inbox entry whose effect is in the shard
  :seen     HASH  input partition key -> the last offset of it applied here
  :gen      STRING  counter: the shard's commits
  :head     STRING  the id of the shard's newest commit
  :changes  STREAM  per commit, the rows whose factors it wrote (other instances refresh
                    their replica from it), the commit's id and the one before it;
                    bounded in bytes (:changes-bytes counts them)
  :status   HASH  interactions (this shard's users' pairs), loss (the objective's share
                  committed here), consolidation (settled | sweeping)
  :next:*   the same keys for a model `unlearn load --swap` builds beside the live one
             (one slot with them): its promotion renames :next:uf, :next:if, :next:ur,
             :next:ir and :next:status over the live ones in one fenced script
             (state/swap.py); tombstones, receipts and positions are never swapped
global ({unlearn:NS}):
  :meta    HASH  kind, factors, regularization, alpha, shards, users, items, format
  :uid / :iid  HASH  id -> index;   :uix / :iix  HASH  index -> id
  :applied HASH  "topic:partition" -> last offset taken into the state (routed to its
                 shard's inbox, or dead-lettered)
  :status  HASH  last_batch (JSON), residual, updated_at
  :marks   HASH  partition key -> fingerprints of the epoch's first message and of recent
                 batches' last ones ("first|newest,...": positions.Marks)
  :epochs  HASH  "topic:partition" -> {"epoch", "topic_id", "start"}: the partition's current life
                 (a re-created topic starts a new one; its keys read "topic#N:partition")
  :redriven HASH  dead letter "topic:partition:offset" -> when `unlearn redrive` sent it back
  :consolidate STRING  the last `unlearn consolidate` request (JSON: id, sweeps, at)
  :instances HASH  instance -> heartbeat (JSON: host, pid, load, beat_at): the services alive
                   on the namespace; `unlearn load` refuses to rewrite it while any is
  :bell    STRING  counter rung by every write to the namespace; an idle instance reads it
                   alone, and its inboxes and other shards only when it moved
  :unseen  HASH  the tombstones of deletions that named an id the model had never seen, by
                 id: "u:USER", "i:ITEM", "p:LEN:USERITEM" (LEN: the user id's length in
                 bytes) -> deletion time T. Such a deletion adds no row; an interaction's
                 ids are allocated and its `:unseen` tombstones read in one script, so a
                 late copy is never learned (state/store.py, _ALLOCATE_PAIRS)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

# One interaction as stored: the other side's index, the weight, the event time (seconds
# since the epoch, to the millisecond: the time rule compares it with deletions' times).
ROW_DTYPE = np.dtype([("other", "<u4"), ("weight", "<f4"), ("ts", "<f8")])
FACTOR_DTYPE = np.dtype("<f4")
# 3: times to the millisecond (16-byte records; 2 kept whole seconds in 12 bytes).
FORMAT_VERSION = 3
# The prefix of a shard's keys while `unlearn load --swap` builds a new model beside the
# live one (same hash tag, same slot): promotion renames the model's keys in one script.
STAGED = "next:"


@dataclass(frozen=True)
class Layout:
    namespace: str
    stage: str = ""  # "" the live shard keys; STAGED: a model being built beside them

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
    def status(self) -> str:
        return f"{self._global}:status"

    @property
    def marks(self) -> str:
        return f"{self._global}:marks"

    @property
    def epochs(self) -> str:
        return f"{self._global}:epochs"

    @property
    def redriven(self) -> str:
        return f"{self._global}:redriven"

    @property
    def consolidate(self) -> str:
        """The last `unlearn consolidate` request: JSON {id, sweeps, at}."""
        return f"{self._global}:consolidate"

    @property
    def instances(self) -> str:
        """instance -> its heartbeat (JSON): the services alive on the namespace."""
        return f"{self._global}:instances"

    @property
    def bell(self) -> str:
        """A counter every write to the namespace rings: idle instances read it alone."""
        return f"{self._global}:bell"

    @property
    def unseen(self) -> str:
        return f"{self._global}:unseen"

    def id_map(self, side: str) -> str:
        return f"{self._global}:{side[0]}id"

    def index_map(self, side: str) -> str:
        return f"{self._global}:{side[0]}ix"

    def shard(self, shard: int) -> ShardKeys:
        return ShardKeys(f"{{unlearn:{self.namespace}:{shard}}}", self.stage)

    def scan_pattern(self) -> str:
        return f"{{unlearn:{self.namespace}*"


@dataclass(frozen=True)
class ShardKeys:
    tag: str
    stage: str = ""

    def named(self, name: str) -> str:
        """The shard's key of this name (under the stage prefix, if any)."""
        return f"{self.tag}:{self.stage}{name}"

    def factors(self, side: str) -> str:
        return self.named(f"{side[0]}f")

    def rows(self, side: str) -> str:
        """A user's row (`user`), or an item's slice of this shard (`item`)."""
        return self.named(f"{side[0]}r")

    @property
    def tombstones(self) -> str:
        return self.named("tomb")

    @property
    def receipts(self) -> str:
        return self.named("receipts")

    @property
    def pending(self) -> str:
        return self.named("pending")

    @property
    def unsent(self) -> str:
        return self.named("unsent")

    @property
    def inbox(self) -> str:
        return self.named("inbox")

    @property
    def fence(self) -> str:
        return self.named("fence")

    @property
    def owner(self) -> str:
        return self.named("owner")

    @property
    def cursor(self) -> str:
        return self.named("cursor")

    @property
    def seen(self) -> str:
        return self.named("seen")

    @property
    def gen(self) -> str:
        return self.named("gen")

    @property
    def head(self) -> str:
        return self.named("head")

    @property
    def changes(self) -> str:
        return self.named("changes")

    @property
    def changes_bytes(self) -> str:
        return self.named("changes-bytes")

    @property
    def status(self) -> str:
        return self.named("status")

    @property
    def retention(self) -> str:
        """The shard's retention counters: deletions made (offset), passes finished."""
        return self.named("retention")

    def every_key(self) -> list[str]:
        """Every key of the shard, as named here (under the stage prefix, if any)."""
        return _shard_keys(self)

    @property
    def published(self) -> str:
        """The shard's commit (generation and id) whose factors the factors topic has."""
        return self.named("published")


def _shard_keys(keys: ShardKeys) -> list[str]:
    return [
        *(keys.factors(side) for side in ("user", "item")),
        *(keys.rows(side) for side in ("user", "item")),
        keys.tombstones, keys.receipts, keys.pending, keys.unsent, keys.inbox, keys.fence,
        keys.owner, keys.cursor, keys.seen, keys.gen, keys.head, keys.changes,
        keys.changes_bytes, keys.status, keys.retention, keys.published,
    ]  # fmt: skip


def shard_of(index: int | np.ndarray, shards: int) -> int | np.ndarray:
    """The shard of a user or item row: its index modulo the number of shards."""
    return index % shards


def rows_of_shard(shard: int, shards: int, rows: int) -> np.ndarray:
    """The indices of the rows (of `rows`) that live in `shard`."""
    return np.arange(shard, rows, shards)


def owned_shards(shards: int, partitions: int, assigned: set[int]) -> set[int]:
    """The shards an instance owns when it holds these partitions of the deletions topic
    (of `partitions`): shard S goes with partition S % partitions."""
    return {s for s in range(shards) if s % max(partitions, 1) in assigned}


def coordinator_shard(
    scope: str, user: int, item: int, user_id: str | None, item_id: str | None, shards: int
) -> int:
    """The shard that coordinates a deletion: its subject's (a pair's and a user's: the
    user's; an item's: the item's), or, for a subject the model has never seen (index -1),
    the shard its id hashes to."""
    index, name = (item, item_id) if scope == "item" else (user, user_id)
    if index >= 0:
        return index % shards
    return unseen_shard(name or "", shards)


def unseen_shard(subject_id: str, shards: int) -> int:
    """Where the request of a deletion naming an unseen subject is coordinated."""
    return zlib.crc32(subject_id.encode()) % shards


def receipt_shard(source_key: str, shards: int) -> int:
    """Where a format-1 namespace kept the receipt of the request at `source_key`."""
    return zlib.crc32(source_key.encode()) % shards


def pair_tombstone(user: int, item: int) -> str:
    return f"p:{user}:{item}"


def user_tombstone(user: int) -> str:
    return f"u:{user}"


def item_tombstone(item: int) -> str:
    return f"i:{item}"


# Tombstones by id, for ids the model has never seen (`:unseen`). A pair's field carries
# the user id's length in bytes: ids may hold any character, so no separator is safe.
# _ALLOCATE_PAIRS builds the same names in Lua (`#user` is the length in bytes).


def unseen_user(user: str) -> str:
    return f"u:{user}"


def unseen_item(item: str) -> str:
    return f"i:{item}"


def unseen_pair(user: str, item: str) -> str:
    return f"p:{len(user.encode())}:{user}{item}"


def unseen_name(scope: str, user: str | None, item: str | None) -> str:
    """The `:unseen` field of a deletion of this scope."""
    if scope == "user":
        return unseen_user(user or "")
    if scope == "item":
        return unseen_item(item or "")
    return unseen_pair(user or "", item or "")


def parse_unseen(name: bytes) -> tuple[str, str | None, str | None]:
    """(scope, user id, item id) of an `:unseen` field."""
    kind, _, rest = name.partition(b":")
    if kind == b"u":
        return "user", rest.decode(), None
    if kind == b"i":
        return "item", None, rest.decode()
    size, _, both = rest.partition(b":")
    cut = int(size)
    return "pair", both[:cut].decode(), both[cut:].decode()
