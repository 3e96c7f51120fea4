"""Parts of an owner's requests asked of other shards: where each went, and when to ask
again.

A deletion coordinated in one shard may need work in others (re-solve its items there,
purge an item's interactions with their users): the coordinator sends each such part to
its shard's inbox and waits for a `Done`. Asking is idempotent, so the rule for asking
again is simple: a part whose inbox entry its shard's owner has taken (the shard's cursor
is at or past it) and that is still not done after `retry_s` (the owner crashed between
its write and its answer), or a request this owner took over (never asked by it), is
asked again. A part whose entry still waits in the inbox is left alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from consumer.shards.messages import Message, Purge, Solve, Waiter, encode
from consumer.shards.requests import Request, part_shard
from consumer.state.store import ModelState

CHECK_EVERY_S = 1.0  # pending requests are looked at this often at most

# request source -> (when its parts were last asked, part -> (shard, inbox entry id))
Asked = dict[str, tuple[float, dict[str, tuple[int, str]]]]


class PartsAsked:
    def __init__(self, state: ModelState, clock: Callable[[], float], retry_s: float) -> None:
        self.state = state
        self.clock = clock
        self.retry_s = retry_s
        self._asked: Asked = {}
        self._checked = float("-inf")

    @property
    def waiting(self) -> bool:
        """Does any request of this owner wait on parts asked of other shards?"""
        return bool(self._asked)

    def taken_over(self, sources: Iterable[str]) -> None:
        """Requests this owner took over: their parts are asked at the next step."""
        for source in sources:
            self._asked[source] = (0.0, {})
        self._checked = float("-inf")

    def answered(self, source: str) -> None:
        """The request is complete: nothing of it to ask again."""
        self._asked.pop(source, None)

    def sent(
        self,
        messages: Mapping[int, list[Message]],
        ids: Mapping[int, list[str]],
        requests: Iterable[Request],
        now: float,
    ) -> None:
        """A commit sent these messages to other shards' inboxes (one entry per shard,
        `ids`): remember where each part went; the commit's requests are being asked."""
        for shard, batch in messages.items():
            entry = (ids.get(shard) or [""])[0]
            for message in batch:
                waiter = getattr(message, "waiter", None)
                if waiter is None:
                    continue
                asked = self._asked.setdefault(waiter.request, (now, {}))
                asked[1][waiter.part] = (shard, entry)
        for request in requests:
            self._asked.setdefault(request.source, (now, {}))

    def ask_again(self, pending: Iterable[Request]) -> int:
        """Of these pending requests, the parts due (see the module's docstring): sent
        again. Returns how many messages were sent."""
        now = self.clock()
        if now - self._checked < CHECK_EVERY_S:
            return 0
        self._checked = now
        due = [r for r in pending if self._due(r.source, now)]
        if not due:
            return 0
        cursors = self.state.log.read_cursors({part_shard(p) for r in due for p in r.waiting()})
        messages: dict[int, list[Message]] = defaultdict(list)
        for request in due:
            asked_at, where = self._asked.get(request.source, (0.0, {}))
            again = {}
            for part in request.waiting():
                target = part_shard(part)
                sent = where.get(part)
                if asked_at and sent is not None and not taken(sent[1], cursors.get(target)):
                    again[part] = sent  # still queued there: wait
                    continue
                message = part_message(request, part)
                if message is not None:
                    messages[target].append(message)
            self._asked[request.source] = (now, again)
        if not messages:
            return 0
        ids = self.state.log.send({s: [encode(m)] for s, m in messages.items()})
        for target, batch in messages.items():
            for message in batch:
                waiter = getattr(message, "waiter", None)
                if waiter is not None:
                    self._asked[waiter.request][1][waiter.part] = (target, ids[target][0])
        return sum(len(m) for m in messages.values())

    def _due(self, source: str, now: float) -> bool:
        asked_at, _ = self._asked.get(source, (0.0, {}))
        return not asked_at or now - asked_at >= self.retry_s


def part_message(request: Request, part: str) -> Message | None:
    """The message that asks a shard for one part of a request (None: nothing to ask yet,
    as an item's own re-solve waits for its purges)."""
    waiter = Waiter(request.coordinator, request.source, part)
    target = part_shard(part)
    if part.startswith("items@"):
        return Solve(tuple(request.items.get(target, [])), waiter)
    if part.startswith("purge@"):
        return Purge(request.item, request.deletion.ts, waiter)
    if part.startswith("item@") and request.purges_done():
        return Solve((request.item,), waiter)
    return None


def taken(entry: str, cursor: str | None) -> bool:
    """Has the shard's owner taken the inbox entry `entry` (its cursor at or past it)?"""
    if not entry or cursor is None:
        return cursor is not None
    a, b = (tuple(int(x) for x in e.split("-")) for e in (entry, cursor))
    return b >= a
