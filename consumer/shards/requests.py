"""A deletion request whose effect spans several owners, until every part is durable.

The shard that holds the request's subject coordinates it: a pair's or a user's request
the user's shard (which owns the pairs and the user's row), an item's the item's shard.
Its parts:

- `user@C`: the user's rows, removed and the user re-solved (the coordinator itself);
- `items@S`: the items whose slices changed, re-solved exactly by shard S's owner;
- `purge@S`: an item forgotten whole: its interactions with shard S's users removed and
  those users re-solved, by shard S's owner (every shard: any user may hold the item);
- `item@C`: then the item itself re-solved, by the coordinator (it owns the item).

The request is kept (`:pending`) until every part is durable, and only then stored as a
receipt and sent. Pure: no Redis, no Kafka.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from consumer.events import Deletion, Source
from consumer.receipts import Receipt
from consumer.shards.messages import names_unseen


def user_part(shard: int) -> str:
    return f"user@{shard}"


def items_part(shard: int) -> str:
    return f"items@{shard}"


def purge_part(shard: int) -> str:
    return f"purge@{shard}"


def item_part(shard: int) -> str:
    return f"item@{shard}"


def part_shard(part: str) -> int:
    return int(part.rsplit("@", 1)[1])


@dataclass
class Request:
    """One deletion request in progress, as its coordinator keeps it."""

    deletion: Deletion
    coordinator: int
    user: int  # index, -1 for an item's request
    item: int  # index, -1 for a user's request
    parts: dict[str, float | None]  # part -> when it became durable (None: not yet)
    removed: int = 0
    kept: int = 0
    residual: float = 0.0
    reapplied: bool = False
    items: dict[int, list[int]] = field(default_factory=dict)  # shard -> items to re-solve
    # part -> the commit of its shard that made it durable: what a serving layer must
    # have read from the factors topic to show the part's effect.
    generations: dict[str, int] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.deletion.source.key

    @property
    def scope(self) -> str:
        return self.deletion.scope

    @property
    def names_unseen(self) -> bool:
        """Its subject was never seen: nothing to remove, the coordinator's part only."""
        return names_unseen(self.scope, self.user, self.item)

    def waiting(self) -> list[str]:
        return [p for p, at in self.parts.items() if at is None]

    def complete(self) -> bool:
        return all(at is not None for at in self.parts.values())

    def done(
        self, part: str, at: float, removed: int = 0, kept: int = 0, generation: int = 0
    ) -> bool:
        """Note a part durable (once: a part told twice counts once) by its shard's commit
        `generation`. True if it was new."""
        if part not in self.parts or self.parts[part] is not None:
            return False
        self.parts[part] = at
        self.generations[part] = generation
        self.removed += removed
        self.kept += kept
        return True

    def purges_done(self) -> bool:
        """An item's request: every shard purged (the item itself may be solved now)."""
        return all(at is not None for p, at in self.parts.items() if p.startswith("purge@"))

    def receipt(self) -> Receipt:
        d = self.deletion
        applied_at = max((at for at in self.parts.values() if at is not None), default=d.received)
        started = d.requested_at if d.requested_at is not None else d.received
        return Receipt(
            request_id=d.request_id,
            scope=d.scope,
            user=d.user,
            item=d.item,
            removed=self.removed,
            kept_newer=self.kept,
            event_ts=d.ts,
            ts_adjusted=d.ts_adjusted,
            received_at=d.received,
            applied_at=applied_at,
            latency_seconds=applied_at - started,
            residual=self.residual,
            source=self.source,
            reapplied=self.reapplied,
            parts=tuple(sorted((p, at) for p, at in self.parts.items() if at is not None)),
            generations=tuple(sorted(self.generations.items())),
        )

    def to_json(self) -> str:
        d = self.deletion
        body: dict[str, Any] = {
            "deletion": {
                "user": d.user, "item": d.item, "ts": d.ts, "request_id": d.request_id,
                "source": [d.source.topic, d.source.partition, d.source.offset, d.source.epoch],
                "received": d.received, "ts_adjusted": d.ts_adjusted,
                "requested_at": d.requested_at,
            },
            "coordinator": self.coordinator, "user": self.user, "item": self.item,
            "parts": self.parts, "removed": self.removed, "kept": self.kept,
            "residual": self.residual, "reapplied": self.reapplied,
            "items": {str(s): i for s, i in self.items.items()},
            "generations": self.generations,
        }  # fmt: skip
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str | bytes) -> Request:
        raw = json.loads(text)
        d = raw["deletion"]
        deletion = Deletion(
            d["user"], d["item"], d["ts"], d["request_id"], Source(*d["source"]),
            d["received"], d["ts_adjusted"], d["requested_at"],
        )  # fmt: skip
        return cls(
            deletion, raw["coordinator"], raw["user"], raw["item"], dict(raw["parts"]),
            raw["removed"], raw["kept"], raw["residual"], raw["reapplied"],
            {int(s): list(i) for s, i in raw["items"].items()}, dict(raw.get("generations", {})),
        )  # fmt: skip

    def copy(self) -> Request:
        return dataclasses.replace(
            self, parts=dict(self.parts), items=dict(self.items),
            generations=dict(self.generations),
        )  # fmt: skip
