"""The factors topic's records: every committed factor change, for serving layers.

Key `user:<id>` or `item:<id>` (a compacted topic keeps each row's newest value); value a
JSON object: the namespace, side, id, the factor (float32 values, each written in the
shortest form that reads back to the same float32), the shard the row belongs to and the
shard's commit (`generation`) the value is from. A receipt names, per part, the shard
commit its effect took: a reader that has seen that generation of that shard (or a later
one) shows the effect. Records of one row arrive in commit order (one key, one partition).

A row with no data left (a subject erased whole) has a zero factor: it is published as a
tombstone, a null value, so compaction removes the key from the topic and every follower
deletes it; its headers carry the namespace, shard and generation the JSON would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

SIDES = ("user", "item")


@dataclass(frozen=True)
class FactorRecord:
    namespace: str
    side: str
    id: str
    factor: np.ndarray  # float32, length k
    shard: int
    generation: int

    @property
    def key(self) -> str:
        return record_key(self.side, self.id)

    def to_json(self) -> bytes:
        # orjson writes a float32 array's values in their shortest form that reads back to
        # the same float32, in C: formatting each value in Python was about half of what
        # publishing a row cost.
        return orjson.dumps(
            {
                "namespace": self.namespace, "side": self.side, "id": self.id,
                "shard": self.shard, "generation": self.generation,
                "factor": np.ascontiguousarray(self.factor, dtype=np.float32),
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )  # fmt: skip

    @property
    def erased(self) -> bool:
        """A row with nothing left to fit (its subject erased whole): a tombstone."""
        return not self.factor.any()

    def value(self) -> bytes | None:
        """What the topic carries: the JSON, or None (a tombstone) for an erased row."""
        return None if self.erased else self.to_json()

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (NAMESPACE_HEADER, self.namespace.encode()),
            (SHARD_HEADER, str(self.shard).encode()),
            (GENERATION_HEADER, str(self.generation).encode()),
        ]

    @classmethod
    def from_json(cls, value: bytes | str) -> FactorRecord:
        raw = orjson.loads(value)
        if raw.get("side") not in SIDES:
            raise ValueError(f"not a factor record: side {raw.get('side')!r}")
        return cls(
            raw["namespace"], raw["side"], str(raw["id"]),
            np.asarray(raw["factor"], dtype=np.float32), int(raw["shard"]),
            int(raw["generation"]),
        )  # fmt: skip


def record_key(side: str, id_: str) -> str:
    return f"{side}:{id_}"


def parse_key(key: bytes | str) -> tuple[str, str]:
    """(side, id) of a record key."""
    text = key.decode() if isinstance(key, bytes) else key
    side, _, id_ = text.partition(":")
    if side not in SIDES:
        raise ValueError(f"not a factor record key: {text!r}")
    return side, id_


NAMESPACE_HEADER = "unlearn.namespace"
SHARD_HEADER = "unlearn.shard"
GENERATION_HEADER = "unlearn.generation"


def tombstone_source(headers: list[tuple[str, bytes]] | None) -> tuple[str, int, int] | None:
    """A tombstone's (namespace, shard, generation), from its headers (None: not ours)."""
    found = {k: v for k, v in headers or ()}
    try:
        return (
            found[NAMESPACE_HEADER].decode(),
            int(found[SHARD_HEADER]),
            int(found[GENERATION_HEADER]),
        )
    except (KeyError, ValueError):
        return None
