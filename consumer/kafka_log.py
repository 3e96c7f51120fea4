"""librdkafka's own log lines, through the service's logger, without the flood.

A client that cannot reach its broker logs a line per attempt per broker (about 23 a
second for a wrong address). Every Kafka client of the service hands its lines to the
`unlearn.kafka` logger (the `logger` property), where the same line is let through once
per `REPEAT_S` with a count of what was held back; the service's own message says what
to change."""

from __future__ import annotations

import logging
import re
import threading
import time

REPEAT_S = 30.0
_NUMBERS = re.compile(r"\d+")


class Repeats(logging.Filter):
    """Lets a line through once per `every_s`; lines that differ only in their numbers
    (times, ports, counters) are the same line."""

    def __init__(self, every_s: float = REPEAT_S) -> None:
        super().__init__()
        self.every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        shape = _NUMBERS.sub("#", record.getMessage())[:300]
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(shape, (float("-inf"), 0))
            if now - last < self.every_s:
                self._seen[shape] = (last, held + 1)
                return False
            self._seen[shape] = (now, 0)
            if len(self._seen) > 1000:  # a bound: shapes are few, unless ids are in them
                self._seen = {shape: (now, 0)}
        if held:
            record.msg = f"{record.getMessage()} ({held} like it in the last {self.every_s:.0f} s)"
            record.args = ()
        return True


def kafka_logger() -> logging.Logger:
    logger = logging.getLogger("unlearn.kafka")
    if not any(isinstance(f, Repeats) for f in logger.filters):
        logger.addFilter(Repeats())
        # librdkafka's informational lines (a broker connection closed and reopened) are
        # routine; warnings and errors are what an operator needs to see.
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    return logger
