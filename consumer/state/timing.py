"""Each Redis operation of the state timed, its failures counted: reported to an
observer (the service's metrics) when one is set on the state."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import redis

Observer = Callable[[str, float, bool], None]  # operation, seconds, failed


def timed(operation: str) -> Callable:
    """Report each call's duration and failure to its object's `observer` (if any)."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def timed_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = method(self, *args, **kwargs)
            except redis.RedisError:
                if self.observer is not None:
                    self.observer(operation, time.perf_counter() - started, True)
                raise
            if self.observer is not None:
                self.observer(operation, time.perf_counter() - started, False)
            return result

        return timed_call

    return wrap
