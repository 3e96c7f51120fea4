"""Where a partition resumes, and whether the broker's log is still the recorded one."""

from __future__ import annotations

import pytest

from consumer.pipeline.positions import (
    MARKS_KEPT,
    Mark,
    Marks,
    Resume,
    decide,
    fingerprint,
    same_log,
)


@pytest.mark.parametrize(
    ("applied", "committed", "low", "expected"),
    [
        (None, None, 0, Resume(0, -1, None)),  # a partition the state never saw
        (None, 7, 0, Resume(7, -1, None)),
        (9, 10, 0, Resume(10, -1, None)),  # in step
        (9, 6, 0, Resume(6, -1, None)),  # receipts of 6..9 not acknowledged: re-sent
        (9, None, 0, Resume(10, -1, None)),
        (9, 15, 0, Resume(10, 14, None)),  # the state lost 10..14: applied again
        (9, 15, 12, Resume(12, 14, (10, 12))),  # ... and the broker no longer has 10, 11
        (9, 6, 8, Resume(8, -1, None)),  # only receipts' re-sends lost: nothing missing
    ],
)
def test_the_state_decides_where_a_partition_resumes(applied, committed, low, expected):
    assert decide(applied, committed, low, high=100) == expected


@pytest.mark.parametrize(
    ("applied", "committed", "answered", "expected"),
    [
        (9, 8, 9, Resume(8, -1, None)),  # receipts of what the state holds: re-sent only
        (9, 8, 13, Resume(8, 13, None)),  # 10..13 answered, never committed, then lost
        (9, None, 13, Resume(10, 13, None)),  # a group that never committed
        (9, 15, 12, Resume(10, 14, None)),  # the committed offsets reach further
        (9, 12, 20, Resume(10, 20, None)),
        (None, 5, 20, Resume(5, -1, None)),  # nothing applied yet: nothing to re-apply
    ],
)
def test_receipts_published_but_never_committed_count_as_answered(
    applied, committed, answered, expected
):
    assert decide(applied, committed, 0, 100, answered) == expected


def marks(*offsets: int) -> Marks:
    first, *recent = offsets
    return Marks(Mark(first, f"f{first}"), tuple(Mark(o, f"f{o}") for o in reversed(recent)))


def test_the_same_log_matches_its_newest_mark():
    assert same_log(marks(0, 5, 9), {9: "f9"}, low=0) == (True, None)


def test_a_new_log_has_another_first_message():
    assert same_log(marks(0, 5, 9), {0: "other", 5: None, 9: None}, low=0) == (False, None)


def test_reused_offsets_resume_after_the_last_message_still_the_same():
    assert same_log(marks(0, 5, 9), {0: "f0", 5: "f5", 9: "new"}, low=0) == (False, 5)
    assert same_log(marks(0, 5, 9), {0: "f0", 5: "x", 9: "y"}, low=0) == (False, 0)


def test_retention_past_the_marks_proves_nothing():
    assert same_log(marks(0, 5, 9), {}, low=20) == (True, None)
    # The first mark aged out, the newest differs: reused, from what is still held.
    assert same_log(marks(0, 5, 9), {5: "x", 9: "y"}, low=3) == (False, 2)


def test_marks_keep_the_first_and_the_newest():
    kept = marks(0)
    for offset in range(1, 40):
        kept = kept.after(Mark(offset, f"f{offset}"))
    assert kept.first == Mark(0, "f0") and len(kept.recent) == MARKS_KEPT
    assert kept.recent[0] == Mark(39, "f39")
    assert Marks.decode(kept.encode()) == kept


def test_fingerprints_tell_messages_apart():
    assert fingerprint(b"k", b"v") == fingerprint(b"k", b"v")  # a producer's retry: the same
    assert len({fingerprint(b"k", b"v"), fingerprint(b"k", b"w"), fingerprint(b"kv", b""),
                fingerprint(None, b"kv")}) == 4  # fmt: skip
