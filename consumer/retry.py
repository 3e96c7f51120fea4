"""Bounded exponential backoff with jitter for transient failures."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")
log = logging.getLogger("unlearn.retry")

# Errors that pass: a restarting, failing-over or briefly unreachable Redis.
TRANSIENT_REDIS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


class RetriesExhausted(RuntimeError):
    """A transient failure lasted longer than the retry budget."""


def retry(
    attempt: Callable[[], T],
    transient: tuple[type[BaseException], ...],
    budget_s: float,
    on_retry: Callable[[BaseException, int], None] | None = None,
    first_delay_s: float = 0.05,
    max_delay_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    what: str = "",
) -> T:
    """Call `attempt` until it succeeds, backing off 0.05, 0.1, 0.2 ... 5 s with full jitter.

    Gives up with RetriesExhausted once `budget_s` has passed; errors that are not
    transient propagate at once. `what`: the server and the operation, for the log line
    (e.g. "Redis redis://cache:6379/0, batch").
    """
    deadline = clock() + budget_s
    delay = first_delay_s
    failures = 0
    while True:
        try:
            return attempt()
        except transient as exc:
            failures += 1
            if clock() >= deadline:
                raise RetriesExhausted(f"gave up after {failures} attempts: {exc}") from exc
            if on_retry is not None:
                on_retry(exc, failures)
            left = max(deadline - clock(), 0.0)
            log.warning(
                "%s: transient failure (%s: %s), retry %d; giving up in %.0f s of the %.0f s "
                "budget", what or "call", type(exc).__name__, exc, failures, left, budget_s,
            )  # fmt: skip
            sleep(min(random.uniform(0, delay), max(deadline - clock(), 0)))
            delay = min(delay * 2, max_delay_s)
