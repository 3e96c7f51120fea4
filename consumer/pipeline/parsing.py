"""Kafka messages to events: validation (events.py), the time rule's accounting, and the
names a message goes by (its source, epoch and fingerprint)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from consumer.events import (
    Deletion,
    Interaction,
    Rejected,
    Source,
    parse_deletion,
    parse_interaction,
)
from consumer.pipeline.dead_letters import REDRIVEN_HEADER
from consumer.pipeline.positions import fingerprint
from consumer.redaction import scope_name
from consumer.settings import Settings

log = logging.getLogger("unlearn.parsing")

ADJUSTMENT_LOG_S = 60.0  # at most one log line per kind of time adjustment this often

_ADJUSTED = {
    "milliseconds": "were read as milliseconds",
    "microseconds": "were read as microseconds",
    "nanoseconds": "were read as nanoseconds",
    "future": "lay beyond the clock skew and count at their message's timestamp",
    "negative": "were negative and count at their message's timestamp",
    "unreadable": "were unreadable and count at their message's timestamp",
    "missing": "were missing and count at their message's timestamp",
}


@dataclass
class Parsed:
    """One batch of messages, read."""

    interactions: list[Interaction] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    rejected: list[tuple[Message, Rejected]] = field(default_factory=list)
    messages: dict[Source, Message] = field(default_factory=dict)
    redriven: set[Source] = field(default_factory=set)  # sent back by `unlearn redrive`


class Parser:
    def __init__(
        self,
        settings: Settings,
        kind: str,
        epoch: Callable[[str, int], int],
        salt: bytes,
        on_adjusted: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self.kind = kind
        self.epoch = epoch  # (topic, partition) -> the partition's current life
        self.salt = salt
        self.on_adjusted = on_adjusted  # (topic kind, adjustment): counted
        self.kinds = {
            settings.topic_interactions: "interactions",
            settings.topic_deletions: "deletions",
        }
        self._unlogged: Counter[tuple[str, str]] = Counter()
        self._logged_at: dict[tuple[str, str], float] = {}

    def parse(self, pending: list[tuple[Message, float]]) -> Parsed:
        """(message, when it was read) pairs, in the order read."""
        s = self.settings
        out = Parsed()
        for message, received in pending:
            topic, number, offset = message.topic(), message.partition(), message.offset()
            kind, stamp = message.timestamp()
            has_stamp = kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0
            source = Source(
                topic, number, offset, self.epoch(topic, number),
                fingerprint(message.key(), message.value()), stamp if has_stamp else -1,
            )  # fmt: skip
            message_ts = stamp / 1000 if has_stamp else None
            if topic == s.topic_deletions:
                event = parse_deletion(
                    message.value(), source, message_ts, s.max_message_bytes, received,
                    s.max_clock_skew_s,
                )  # fmt: skip
            else:
                event = parse_interaction(
                    message.value(), source, message_ts, self.kind, s.max_message_bytes,
                    received, s.max_clock_skew_s,
                )  # fmt: skip
            out.messages[source] = message
            if any(k == REDRIVEN_HEADER for k, _ in message.headers() or ()):
                out.redriven.add(source)
            if isinstance(event, Rejected):
                out.rejected.append((message, event))
                continue
            if event.ts_adjusted is not None:
                self._adjusted(self.kinds.get(topic, "interactions"), event)
            if isinstance(event, Deletion):
                out.deletions.append(event)
            else:
                out.interactions.append(event)
        return out

    def _adjusted(self, kind: str, event: Interaction | Deletion) -> None:
        """Count what the time rule did; log it now and then, naming the scope by hash."""
        adjustment = str(event.ts_adjusted)
        self.on_adjusted(kind, adjustment)
        key = (kind, adjustment)
        self._unlogged[key] += 1
        now = time.monotonic()
        if now - self._logged_at.get(key, -ADJUSTMENT_LOG_S) < ADJUSTMENT_LOG_S:
            return
        self._logged_at[key] = now
        count = self._unlogged.pop(key)
        log.warning(
            "%s: %d event time(s) %s, e.g. %s on %s (counted at %.3f)",
            kind, count, _ADJUSTED[adjustment], scope_name(self.salt, event.user, event.item),
            event.source.key, event.ts,
        )  # fmt: skip
