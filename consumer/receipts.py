"""The receipt: what the service tells the requester (and the audit trail keeps) about one
deletion request, sent only once the effect it describes is durable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from consumer.events import Scope


@dataclass(frozen=True, slots=True)
class Receipt:
    request_id: str | None
    scope: Scope
    user: str | None
    item: str | None
    # Distinct (user, item) pairs the request removed: stored ones, and ones that arrived
    # in the same batch and were suppressed.
    removed: int
    # Pairs of the scope still stored after the request, every one newer than `event_ts`.
    kept_newer: int
    event_ts: float  # the effective time T: interactions of the scope at or before T are gone
    ts_adjusted: str | None  # what the time rule did to the request's time ("missing": now)
    received_at: float  # when the service read the request
    applied_at: float  # when its effect was computed (durable before the receipt is sent)
    latency_seconds: float  # applied_at minus the request's own time, never clamped
    residual: float
    source: str  # "topic:partition:offset" ("topic#N:..." for a re-created topic's Nth life)
    resent: bool = False  # sent again after a crash: the effect happened once, before
    # Applied again because the state had lost it (restored from an older snapshot);
    # an earlier receipt for the same request may exist, its effect was undone by the loss.
    reapplied: bool = False
    # Where the effect lives, each part with the time it became durable: the user's rows
    # ("user@S": shard S), the items re-solved in a shard ("items@S"), a whole item's
    # interactions with a shard's users ("purge@S") and the item itself ("item@S"). The
    # receipt is sent once every part is durable; `applied_at` is the last one's time.
    parts: tuple[tuple[str, float], ...] = ()
    # Each part's shard commit (generation) that made it durable: a serving layer that has
    # read the factors topic up to these generations of those shards shows the effect.
    # The receipt is published only after those factors are.
    generations: tuple[tuple[str, int], ...] = ()
    # The audit trail's key of this record when it is not `source`: a request applied
    # again is recorded beside its first receipt ("source@applied_ms"), never over it.
    record: str | None = None

    @property
    def key_in_trail(self) -> str:
        return self.record or self.source

    def to_json(self) -> str:
        # Every field is a plain value or a tuple rebuilt below: a shallow dict, not
        # dataclasses.asdict's deep copy (three quarters of encoding a receipt).
        body = {name: getattr(self, name) for name in _FIELDS}
        generations = dict(self.generations)
        body["parts"] = [
            {"part": name, "durable_at": at, "generation": generations.get(name, 0)}
            for name, at in self.parts
        ]
        del body["generations"]
        if body["record"] is None:
            del body["record"]
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str | bytes) -> Receipt:
        """A stored receipt; fields this version added are filled for older ones."""
        raw: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        defaults = {"kept_newer": 0, "ts_adjusted": None, "received_at": raw.get("applied_at")}
        fields = {**defaults, **{k: v for k, v in raw.items() if k in names}}
        fields["parts"] = tuple((p["part"], p["durable_at"]) for p in raw.get("parts", ()))
        fields["generations"] = tuple(
            (p["part"], p.get("generation", 0)) for p in raw.get("parts", ())
        )
        return cls(**fields)

    def again(self) -> Receipt:
        """This receipt, re-sent for a replayed request."""
        return dataclasses.replace(self, resent=True)

    def shard_generations(self) -> dict[int, int]:
        """shard -> the commit of it this receipt's effect needs (the highest of its parts)."""
        out: dict[int, int] = {}
        for part, generation in self.generations:
            shard = int(part.rsplit("@", 1)[1])
            out[shard] = max(out.get(shard, 0), generation)
        return out

    @property
    def key(self) -> str:
        """The Kafka key it is published under."""
        return self.request_id or self.source


_FIELDS = tuple(f.name for f in dataclasses.fields(Receipt))
