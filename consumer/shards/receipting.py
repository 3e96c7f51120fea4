"""An owner's receipts: stored with their shard's commit, unsent until the broker has them.

A request complete in a commit gets its receipt in the same fenced write, in the shard's
audit trail and its `unsent` set. The receipt leaves once every part's factors are
published (pipeline/publishing.py); the broker's acknowledgement removes it from `unsent`
(`sent`). An owner that takes a shard over sends what the shard still holds unsent again
(`resent`: the effect happened once, before). A replayed request is answered from the
trail. A request the receipts topic shows answered, which the state had lost (a restore),
is answered again as `reapplied`; the audit trail is append-only, so a request whose
record the trail already holds is recorded beside it (`source@applied_ms`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from consumer.events import RETENTION_TOPIC, Deletion
from consumer.receipts import Receipt
from consumer.shards.requests import Request
from consumer.state.layout import coordinator_shard, unseen_shard
from consumer.state.shard_log import ShardWrite
from consumer.state.store import ModelState

ANSWERED_KEPT_S = 600.0  # how long a read-back answer may still mark a receipt reapplied

Stored = dict[str, tuple[int, Receipt]]  # request source -> (its shard, its receipt)


class Receipts:
    def __init__(self, state: ModelState, clock: Callable[[], float], shards: int) -> None:
        self.state = state
        self.clock = clock
        self.shards = shards
        self._unsent: dict[str, int] = {}  # receipt key in the trail -> the shard storing it
        self._resend: list[Receipt] = []  # found unsent in shards taken over: next step
        # Requests the receipts topic shows answered before the state lost their effect:
        # source -> when that was read back; kept ANSWERED_KEPT_S.
        self._answered: dict[str, float] = {}

    # ----- taking shards, reading back --------------------------------------------------

    def taken_over(self, shard: int) -> None:
        """A shard taken: the receipts it holds unsent are sent again with the next step."""
        for text in self.state.read_unsent(shard):
            receipt = Receipt.from_json(text)
            self._unsent[receipt.key_in_trail] = shard
            self._resend.append(receipt.again())

    def take_resend(self) -> list[Receipt]:
        resend, self._resend = self._resend, []
        return resend

    @property
    def resending(self) -> bool:
        return bool(self._resend)

    def holds_unsent(self, key: str, owned: Iterable[int]) -> bool:
        """Is this receipt stored, not yet acknowledged, in one of the `owned` shards?"""
        shard = self._unsent.get(key)
        return shard is not None and shard in set(owned)

    def answered(self, sources: Iterable[str]) -> None:
        """Requests the receipts topic shows answered (read back when shards are taken
        over): any of them answered now was answered before. What was read back long ago
        is forgotten: a lost request is answered again within minutes of the restore."""
        now = self.clock()
        self._answered = {s: t for s, t in self._answered.items() if now - t < ANSWERED_KEPT_S}
        self._answered.update(dict.fromkeys(sources, now))

    # ----- a commit's receipts -----------------------------------------------------------

    def store(
        self, requests: Mapping[int, Mapping[str, Request]], writes: dict[int, ShardWrite]
    ) -> tuple[Stored, dict[int, int]]:
        """Add each request to its shard's write: a receipt when every part is done, the
        request kept pending otherwise. Returns the receipts stored and, per shard, the
        pairs retention's own deletions removed (retention expires data nobody asked to
        forget: no receipt; its pass summary in the audit trail counts them)."""
        stored: Stored = {}
        expired: dict[int, int] = {}
        done = {
            shard: [s for s, r in mine.items()
                    if r.complete() and r.deletion.source.topic != RETENTION_TOPIC]
            for shard, mine in requests.items()
        }  # fmt: skip
        recorded = self.state.stored_receipts(done)
        for shard, mine in requests.items():
            write = writes.setdefault(shard, ShardWrite())
            for source, request in mine.items():
                if not request.complete():
                    write.pending[source] = request.to_json()
                    continue
                write.pending[source] = None
                if request.deletion.source.topic == RETENTION_TOPIC:
                    expired[shard] = expired.get(shard, 0) + request.removed
                    continue
                again = source in recorded.get(shard, ())
                receipt = self._receipt(request, again)
                write.receipts[receipt.key_in_trail] = receipt.to_json()
                write.unsent.append(receipt.key_in_trail)
                stored[source] = (shard, receipt)
        return stored, expired

    def durable(self, stored: Stored, written: Mapping[int, object]) -> list[Receipt]:
        """The stored receipts whose shard's write held: unsent until acknowledged."""
        out = []
        for shard, receipt in stored.values():
            if shard in written:
                self._unsent[receipt.key_in_trail] = shard
                out.append(receipt)
        return out

    def sent(self, receipts: Iterable[Receipt]) -> None:
        """The broker acknowledged these receipts: they need not be sent again."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for receipt in receipts:
            shard = self._unsent.pop(receipt.key_in_trail, None)
            if shard is not None:
                by_shard[shard].append(receipt.key_in_trail)
        if by_shard:
            self.state.sent(by_shard)

    def _receipt(self, request: Request, recorded: bool) -> Receipt:
        if self._answered.pop(request.source, None) is not None or recorded:
            request.reapplied = True
        receipt = request.receipt()
        if recorded:  # beside the first record, never over it
            receipt = dataclasses.replace(
                receipt, record=f"{request.source}@{int(receipt.applied_at * 1000)}"
            )
        return receipt

    # ----- replays ----------------------------------------------------------------------

    def of_replayed(self, deletions: Sequence[Deletion]) -> list[Receipt]:
        """The stored receipts of replayed requests (none yet: still in progress)."""
        if not deletions:
            return []
        users = self.state.lookup("user", [d.user or "" for d in deletions])
        items = self.state.lookup("item", [d.item or "" for d in deletions])
        wanted: dict[int, list[str]] = defaultdict(list)
        for d, u, i in zip(deletions, users.tolist(), items.tolist(), strict=True):
            # Its subject's shard, or, had the subject not been seen when it was applied,
            # the shard its id hashes to: the receipt is in one of them.
            subject = d.item if d.scope == "item" else d.user
            for shard in {coordinator_shard(d.scope, u, i, d.user, d.item, self.shards),
                          unseen_shard(subject or "", self.shards)}:  # fmt: skip
                wanted[shard].append(d.source.key)
        return self.again(wanted)

    def again(self, wanted: Mapping[int, list[str]]) -> list[Receipt]:
        """These stored receipts (shard -> sources), to send again."""
        found = self.state.stored_receipts(wanted)
        return [Receipt.from_json(t).again() for f in found.values() for t in f.values()]
