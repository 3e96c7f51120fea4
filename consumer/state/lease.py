"""The namespace's write lease: one writer at a time, and a fencing token per holding.

Several `unlearn run` instances may share a namespace (one consumer group, partitions
split between them). Every batch is a read-modify-write of rows that other instances'
batches touch too (a popular item), so batches take the lease, and each acquisition
draws a new token from a counter. Every write carries the token:

- the intent (redo log) and the final step (offsets, status, change log) are written by
  scripts that check the counter still equals the token: a holder whose lease lapsed and
  was taken over can write neither;
- each shard keeps the highest token that wrote it, and a shard write with a lower token
  is refused, so a paused writer that wakes up late cannot overwrite newer rows.

The lease key only keeps other instances waiting; correctness comes from the tokens. A
holder whose lease expired without anyone else taking it still commits (the counter is
unchanged), so long consolidation sweeps need no renewal thread.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import redis

from consumer.state.layout import Layout

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {-1, redis.call('PTTL', KEYS[1])}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {token, tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('EXISTS', KEYS[4]),
        redis.call('GET', KEYS[5]) or ''}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(RuntimeError):
    """Another instance took the lease since this one acquired it: the batch is dropped
    (nothing of it was written) and is retried from what Redis holds."""


class LeaseBusy(RuntimeError):
    """Another instance held the lease for longer than this one was willing to wait."""


class WriteLease:
    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        layout: Layout,
        holder: str,
        ttl_ms: int = 10_000,
        wait_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.layout = layout
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.wait_s = wait_s
        self.token = 0  # 0: not held (tokens start at 1)
        self._sleep = sleep
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> tuple[int, str | None, bool]:
        """Take the lease (waiting for another holder). Returns the namespace's generation,
        the id of its newest commit, and whether a batch another holder left half-written
        (its intent) is pending."""
        keys = [self.layout.lease, self.layout.fence, self.layout.generation, self.layout.intent,
                self.layout.head]  # fmt: skip
        deadline = time.monotonic() + self.wait_s
        pause = 0.001
        while True:
            token, value, *rest = self._acquire(keys=keys, args=[self.holder, self.ttl_ms])
            if int(token) > 0:
                self.token = int(token)
                pending, head = rest
                return (
                    int(value),
                    (head.decode() if isinstance(head, bytes) else head) or None,
                    bool(pending),
                )
            if time.monotonic() >= deadline:
                raise LeaseBusy(f"lease held by another instance for over {self.wait_s:.0f} s")
            # Jittered, growing, never past the holder's expiry.
            pause = min(pause * 2, 0.05)
            self._sleep(min(random.uniform(pause / 2, pause), max(int(value), 1) / 1000))

    def holder_now(self) -> str | None:
        """The instance holding the lease at this moment (None: free)."""
        value = self._client.get(self.layout.lease)
        return value.decode() if value is not None else None

    def release(self) -> None:
        if self.token:
            token, self.token = self.token, 0
            self._release(keys=[self.layout.lease, self.layout.fence], args=[self.holder, token])
