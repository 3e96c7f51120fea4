"""Where each input partition resumes: decided by the state, checked against the broker.

The offsets whose effect is in Redis are recorded with the state (`:applied`), so the
state, not the consumer group, says where a partition resumes. The group's committed
offset only tells what was acknowledged (receipts published) before:

- committed behind the state: the tail between them is read again; its effect is already
  in the state, so only its receipts are re-sent (a crash between the two);
- committed ahead of the state: the state lost acknowledged work (Redis restored from an
  older snapshot, a failover that lost writes); reading from the state's offset applies
  it again ("reapplied" in those receipts), and the loss is counted and alerted. Receipts
  published but not yet committed (a kill between the two) are found in the receipts
  topic itself (answered.py), so a rollback behind them is seen too;
- the broker no longer holds what the state needs (retention passed it): the partition is
  not read, readiness fails naming the partition and the offsets, and an alert pages.

Offsets only mean something within one life of a topic. A topic deleted and created again
(or a broker that lost its log and hands out the same offsets again) would make every new
message look like one already applied. Each batch records a fingerprint of its last
message per partition (and the first one of the topic's life); on assignment, and whenever
offsets run backwards, the broker's messages at those offsets are compared with the
fingerprints (and the topic id, where the broker has one). A mismatch starts a new epoch:
new source keys, so nothing new is mistaken for a replay and no receipt is overwritten.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MARKS_KEPT = 16  # batch-end fingerprints kept per partition


def fingerprint(key: bytes | None, value: bytes | None) -> str:
    """A short digest naming one message by its key and bytes. Not its timestamp: a
    producer's retry of a message the broker lost is the same message, not a new one."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (key or b"", value or b""):
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Mark:
    offset: int
    fingerprint: str

    def encode(self) -> str:
        return f"{self.offset}:{self.fingerprint}"

    @classmethod
    def decode(cls, text: str) -> Mark:
        offset, fp = text.split(":", 1)
        return cls(int(offset), fp)


@dataclass(frozen=True, slots=True)
class Marks:
    """A partition's fingerprints: the first message of its epoch, and the last message
    of each recent batch (newest first)."""

    first: Mark
    recent: tuple[Mark, ...]

    def encode(self) -> str:
        return "|".join([self.first.encode(), ",".join(m.encode() for m in self.recent)])

    @classmethod
    def decode(cls, text: str) -> Marks:
        first, _, recent = text.partition("|")
        return cls(Mark.decode(first), tuple(Mark.decode(m) for m in recent.split(",") if m))

    def after(self, mark: Mark) -> Marks:
        return Marks(self.first, (mark, *self.recent)[:MARKS_KEPT])


@dataclass(frozen=True, slots=True)
class Found:
    """What the broker holds at a probed offset (None: nothing there any more)."""

    offset: int
    fingerprint: str | None


def same_log(
    marks: Marks | None, found: dict[int, str | None], low: int
) -> tuple[bool, int | None]:
    """Do the broker's messages still match the recorded ones?

    `found`: the broker's fingerprints at the recorded offsets it still holds (`low` is
    its log start: retention may have removed older ones, which proves nothing). Returns
    (same, resume_after): same is False when the log is another one (re-created, or its
    offsets reused); resume_after is then the newest recorded offset whose message is
    unchanged, after which reading continues (None: read the whole log, it is new).

    The epoch's first message decides first, where it was probed: a new life read under
    the old one's name before it showed (no offset ran backwards) left marks that match
    the new log, the newest among them."""
    if marks is None:
        return True, None
    first_held = marks.first.offset >= low
    if first_held and _differs(marks.first, found):
        return False, None  # the epoch's first message is another: a new log
    newest = marks.recent[0] if marks.recent else marks.first
    if newest.offset < low or found.get(newest.offset) == newest.fingerprint:
        return True, None  # unchanged, or retention passed all that was recorded
    if first_held and found.get(marks.first.offset) != marks.first.fingerprint:
        return False, None
    for mark in marks.recent:
        if mark.offset >= low and found.get(mark.offset) == mark.fingerprint:
            return False, mark.offset
    return False, marks.first.offset if first_held else low - 1


def read_before_it_showed(
    marks: Marks | None, found: dict[int, str | None], low: int
) -> tuple[int, int] | None:
    """In a new log (its first message another than the recorded one): the offsets of it
    that were read, and answered, as if it were the old log, [first, last] (None: none).
    Those messages are read again in the new life, and their receipts must say
    `reapplied`. The batches read from the new log are the newest marks that match it;
    the one before them ended the old life's reading."""
    if marks is None or marks.first.offset < low or not _differs(marks.first, found):
        return None
    last, first = -1, marks.first.offset + 1
    for mark in marks.recent:  # newest first
        if mark.offset >= low and found.get(mark.offset) == mark.fingerprint:
            last = max(last, mark.offset)
            continue
        first = mark.offset + 1
        break
    return (max(first, low), last) if last >= 0 else None


def _differs(mark: Mark, found: dict[int, str | None]) -> bool:
    """Was the mark's offset probed, and does the broker hold another message there?"""
    return mark.offset in found and found[mark.offset] != mark.fingerprint


def offsets_to_probe(marks: Marks | None, low: int = 0) -> list[int]:
    if marks is None:
        return []
    return sorted({o for o in (marks.first.offset, *(m.offset for m in marks.recent)) if o >= low})


@dataclass(frozen=True, slots=True)
class Resume:
    offset: int  # where to start reading
    reapply_through: int  # last offset acknowledged before the state lost it (-1: none)
    missing: tuple[int, int] | None  # [from, to) needed by the state, gone from the broker


def decide(
    applied: int | None,
    committed: int | None,
    low: int,
    high: int,
    answered: int = -1,
    began: int | None = None,
) -> Resume:
    """Where a partition resumes, from the state's last applied offset, the group's
    committed offset (the next to read; None when the group has none, or its commit
    belongs to another life of the topic), the broker's log start and end, the last
    offset a published receipt names (-1: none known; receipts are acknowledged before
    offsets are committed, so it may be ahead), and where this state began reading the
    partition (None: it never has, as far as anyone recorded).

    `began` is what tells "the state never saw this partition" from "the state lost all
    it did with it" (restored from a snapshot taken before its first batch of it): in the
    second case everything answered since `began` is applied again."""
    if applied is None:
        if began is None:  # never read into this state: go on from the group's position
            start = committed if committed is not None else low
            return Resume(max(start, low), -1, None)
        lost = answered
        if committed is not None and committed > began:
            lost = max(lost, committed - 1)  # acknowledged, and not in the state any more
        reapply_through = lost if lost >= began else -1
        if began < low:
            return Resume(low, reapply_through, (began, low))
        return Resume(began, reapply_through, None)
    wanted = applied + 1
    reapply_through = -1
    start = wanted
    if committed is not None and committed < wanted:
        start = committed  # re-send the receipts of what was applied, not acknowledged
    elif committed is not None and committed > wanted:
        reapply_through = committed - 1  # acknowledged once, lost by the state since
    if answered >= wanted:
        reapply_through = max(reapply_through, answered)  # answered, never committed
    if wanted < low:
        return Resume(low, reapply_through, (wanted, low))
    return Resume(max(start, low), reapply_through, None)


_NOTE_PREFIX = "unlearn-"


@dataclass(frozen=True, slots=True)
class CommitNote:
    """What an offset commit carries besides the offset (its metadata): the life of the
    topic it belongs to, the model load it was made for, and where that load began
    reading the partition. It lives with the group, outside Redis, so it survives what
    the state loses: a snapshot from before a partition's first batch leaves no trace in
    the state, but the note still says the state had read it since `began`."""

    epoch: int
    load: str | None = None
    began: int | None = None

    def encode(self) -> str:
        parts = [f"{_NOTE_PREFIX}epoch={self.epoch}"]
        if self.load is not None:
            parts.append(f"load={self.load}")
        if self.began is not None:
            parts.append(f"began={self.began}")
        return ";".join(parts)

    @classmethod
    def decode(cls, text: str | None) -> CommitNote | None:
        """None for a commit without a note of ours (older versions, other tools, a
        broker that drops commit metadata); unreadable parts are left out."""
        if not text or not text.startswith(_NOTE_PREFIX):
            return None
        fields = dict(
            part.split("=", 1) for part in text[len(_NOTE_PREFIX) :].split(";") if "=" in part
        )
        try:
            epoch = int(fields["epoch"])
        except (KeyError, ValueError):
            return None
        began = fields.get("began")
        return cls(epoch, fields.get("load") or None,
                   int(began) if began and began.lstrip("-").isdigit() else None)  # fmt: skip
