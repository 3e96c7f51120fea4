"""What goes into a shard's inbox, and its encoding.

- `Routed`: an input event whose subject lives in the shard (an interaction or a pair or
  user deletion: the user's shard; an item's deletion: the item's), with the message it
  came in (to dead-letter it, should it fail in processing) and whether the state had
  lost it once (its receipt then says `reapplied`).
- `Solve`: re-solve these items of the shard exactly; tell `waiter` once durable.
- `Purge`: an item forgotten whole: remove its interactions with the shard's users up to
  `ts`, keep its tombstone, re-solve those users; tell `waiter` what it removed.
- `Done`: a part of a request coordinated in the shard is durable.

Every message but `Routed` is idempotent: sent twice, it changes the state once (a second
solve solves again, a second purge finds nothing). `Routed` events are applied once per
source offset (the shard's `:seen`). One inbox entry holds a batch's messages for a shard.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from consumer.events import Deletion, Interaction, Source

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Raw:
    """A Kafka message as it arrived."""

    key: bytes | None
    value: bytes | None  # None: a Kafka tombstone (a null value), kept as it came
    headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class Waiter:
    """The part of a request a message does: the request's shard, its source, the part."""

    shard: int
    request: str
    part: str


@dataclass(frozen=True, slots=True)
class Routed:
    event: Interaction | Deletion
    user: int  # the user's index, -1 for an item's deletion or a user never seen
    item: int  # the item's index, -1 for a user's deletion or an item never seen
    raw: Raw | None = None
    reapplied: bool = False
    # An interaction: the latest time of the tombstones by id that reach its pair (left by
    # deletions that named an id before the model had seen it); -inf for none.
    unseen_limit: float = float("-inf")

    @property
    def names_unseen(self) -> bool:
        """A deletion whose subject the model had never seen (names_unseen)."""
        event = self.event
        return isinstance(event, Deletion) and names_unseen(event.scope, self.user, self.item)


def names_unseen(scope: str, user: int, item: int) -> bool:
    """Whether a deletion of this scope, with these indices (-1: never seen), names an id
    the model has never seen: its tombstone is kept by id, and it changes no row."""
    if scope == "user":
        return user < 0
    if scope == "item":
        return item < 0
    return user < 0 or item < 0


@dataclass(frozen=True, slots=True)
class Solve:
    items: tuple[int, ...]
    waiter: Waiter | None = None


@dataclass(frozen=True, slots=True)
class Purge:
    item: int
    ts: float
    waiter: Waiter


@dataclass(frozen=True, slots=True)
class Done:
    request: str
    part: str
    at: float  # when the part became durable
    removed: int = 0  # pairs it removed (a purge)
    kept: int = 0  # pairs of the scope it kept, each newer than the request
    generation: int = 0  # the part's shard's commit that made it durable


Message = Routed | Solve | Purge | Done


def encode(messages: list[Message]) -> bytes:
    return json.dumps([_encode(m) for m in messages], separators=(",", ":")).encode()


def decode(payload: bytes) -> list[Message]:
    return [_decode(m) for m in json.loads(payload)]


def _encode(message: Message) -> dict[str, Any]:
    if isinstance(message, Routed):
        e = message.event
        s = e.source
        out: dict[str, Any] = {
            "k": "i" if isinstance(e, Interaction) else "d",
            "u": e.user, "i": e.item, "ui": message.user, "ii": message.item,
            "ts": e.ts, "s": [s.topic, s.partition, s.offset, s.epoch, s.fingerprint, s.stamp],
            "r": e.received, "a": e.ts_adjusted,
        }  # fmt: skip
        if isinstance(e, Interaction):
            out["w"] = e.weight
        else:
            out.update(q=e.request_id, t0=e.requested_at)
        if message.reapplied:
            out["ra"] = 1
        if message.unseen_limit > float("-inf"):
            out["ul"] = message.unseen_limit
        if message.raw is not None:
            out["x"] = [
                _b64(message.raw.key), _b64(message.raw.value),
                [[k, _b64(v)] for k, v in message.raw.headers or ()],
            ]  # fmt: skip
        return out
    if isinstance(message, Solve):
        return {"k": "s", "items": list(message.items), "w": _waiter(message.waiter)}
    if isinstance(message, Purge):
        return {"k": "p", "item": message.item, "ts": message.ts, "w": _waiter(message.waiter)}
    return {
        "k": "ok", "q": message.request, "p": message.part, "at": message.at,
        "rm": message.removed, "kp": message.kept, "g": message.generation,
    }  # fmt: skip


def _decode(raw: dict[str, Any]) -> Message:
    kind = raw["k"]
    if kind in ("i", "d"):
        stamp = raw["s"][5] if len(raw["s"]) > 5 else -1
        source = Source(*raw["s"][:4], fingerprint=raw["s"][4], stamp=stamp)
        event: Interaction | Deletion
        if kind == "i":
            event = Interaction(raw["u"], raw["i"], raw["w"], raw["ts"], source, raw["r"], raw["a"])
        else:
            event = Deletion(
                raw["u"], raw["i"], raw["ts"], raw["q"], source, raw["r"], raw["a"], raw["t0"]
            )
        message = None
        if "x" in raw:
            key, value, headers = raw["x"]
            message = Raw(_bytes(key), _bytes(value), [(k, _bytes(v) or b"") for k, v in headers])
        limit = float(raw.get("ul", float("-inf")))
        return Routed(event, raw["ui"], raw["ii"], message, bool(raw.get("ra")), limit)
    if kind == "s":
        return Solve(tuple(raw["items"]), _unwaiter(raw["w"]))
    if kind == "p":
        waiter = _unwaiter(raw["w"])
        assert waiter is not None
        return Purge(raw["item"], raw["ts"], waiter)
    return Done(raw["q"], raw["p"], raw["at"], raw["rm"], raw["kp"], raw.get("g", 0))


def _waiter(waiter: Waiter | None) -> list[Any] | None:
    return None if waiter is None else [waiter.shard, waiter.request, waiter.part]


def _unwaiter(raw: list[Any] | None) -> Waiter | None:
    return None if raw is None else Waiter(int(raw[0]), raw[1], raw[2])


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)
