"""The redo log's record: one batch's writes, encoded for the :intent key.

A small JSON header (offsets, token, tombstones, receipts, and where each array sits)
followed by the arrays' raw bytes: a batch carries megabytes of rows, which base64 inside
JSON would inflate by a third and cost milliseconds to encode on every batch.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from consumer.state.layout import FACTOR_DTYPE, GRAMIAN_DTYPE, ROW_DTYPE

MAGIC = b"UNLI\x01"
SIDES = ("user", "item")


def encode(writes: dict, applied: dict[str, int], token: int) -> bytes:
    """`writes`: shard -> ShardWrite (store.py)."""
    payload = bytearray()

    def put(array: np.ndarray, dtype: np.dtype) -> list[int]:
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        payload.extend(data)
        return [len(payload) - len(data), len(data)]

    shards = {}
    for shard, w in writes.items():
        shards[str(shard)] = {
            "factors": {
                s: [[n, *put(v, FACTOR_DTYPE)] for n, v in w.factors[s].items()] for s in SIDES
            },
            "rows": {s: [[n, *put(v, ROW_DTYPE)] for n, v in w.rows[s].items()] for s in SIDES},
            "gramians": {s: put(g, GRAMIAN_DTYPE) for s, g in w.gramians.items()},
            "tombstones": w.tombstones,
            "receipts": w.receipts,
        }
    header = json.dumps({"applied": applied, "token": token, "shards": shards}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + bytes(payload)


def decode(blob: bytes, make_write: type) -> tuple[dict, dict[str, int], int]:
    """The writes (shard -> make_write()), the offsets and the token of an encoded intent."""
    if not blob.startswith(MAGIC):
        raise ValueError("not an intent record of this version")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    raw = json.loads(blob[start : start + size])
    payload = memoryview(blob)[start + size :]

    def get(offset: int, length: int, dtype: np.dtype) -> np.ndarray:
        return np.frombuffer(payload[offset : offset + length], dtype=dtype).copy()

    writes = {}
    for shard, body in raw["shards"].items():
        write = make_write(tombstones=body["tombstones"], receipts=body["receipts"])
        for side in SIDES:
            write.factors[side] = {
                n: get(o, ln, FACTOR_DTYPE) for n, o, ln in body["factors"][side]
            }
            write.rows[side] = {n: get(o, ln, ROW_DTYPE) for n, o, ln in body["rows"][side]}
        write.gramians = {s: get(o, ln, GRAMIAN_DTYPE) for s, (o, ln) in body["gramians"].items()}
        writes[int(shard)] = write
    return writes, {k: int(v) for k, v in raw["applied"].items()}, int(raw["token"])
