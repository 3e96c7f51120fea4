"""Where a partition resumes, and whether the broker's log is still the recorded one."""

from __future__ import annotations

import pytest

from consumer.pipeline.positions import (
    MARKS_KEPT,
    CommitNote,
    Mark,
    Marks,
    Resume,
    decide,
    fingerprint,
    read_before_it_showed,
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


@pytest.mark.parametrize(
    ("committed", "answered", "low", "expected"),
    [
        (None, -1, 0, Resume(40, -1, None)),  # began at 40, nothing done since
        (40, -1, 0, Resume(40, -1, None)),
        (55, -1, 0, Resume(40, 54, None)),  # 40..54 acknowledged, the state lost them all
        (55, 60, 0, Resume(40, 60, None)),  # ... and 55..60 answered, never committed
        (None, 47, 0, Resume(40, 47, None)),  # a group that never committed
        (30, -1, 0, Resume(40, -1, None)),  # commits from before it began prove nothing
        (55, -1, 45, Resume(45, 54, (40, 45))),  # and the broker no longer holds 40..44
    ],
)
def test_a_state_that_lost_all_it_read_of_a_partition_reapplies_it(
    committed, answered, low, expected
):
    """Restored from a snapshot taken before its first batch of a partition: the state has
    no offset of it, but where it began reading (kept with the group's commits, or a new
    life's start) says that everything answered since is lost."""
    assert decide(None, committed, low, 100, answered, began=40) == expected


def test_without_where_it_began_a_partition_the_state_never_saw_continues_from_the_group():
    assert decide(None, 55, 0, 100, answered=60) == Resume(55, -1, None)


@pytest.mark.parametrize(
    "note",
    [CommitNote(0), CommitNote(3, "ab12"), CommitNote(0, "ab12", 0), CommitNote(2, "x", 917)],
)
def test_commit_notes_read_back_as_written(note):
    assert CommitNote.decode(note.encode()) == note


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unlearn-epoch=4", CommitNote(4)),  # the notes of earlier versions
        (None, None),
        ("", None),
        ("written by another tool", None),
        ("unlearn-epoch=x;load=ab", None),
        ("unlearn-epoch=1;load=ab;began=soon", CommitNote(1, "ab")),
    ],
)
def test_commit_notes_of_other_forms(text, expected):
    assert CommitNote.decode(text) == expected


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


def test_a_new_log_read_under_the_old_name_is_told_by_its_first_message():
    """The new life outgrew the old position and was read before it showed: its newest
    marks match the new log, its first one does not."""
    found = {0: "other", 9: "f9", 7: "f7", 5: "x"}
    assert same_log(marks(0, 5, 7, 9), found, low=0) == (False, None)
    assert read_before_it_showed(marks(0, 5, 7, 9), found, low=0) == (6, 9)


def test_nothing_read_before_it_showed_in_an_unchanged_or_unread_new_log():
    assert read_before_it_showed(marks(0, 5, 9), {0: "f0", 9: "f9"}, low=0) is None
    assert read_before_it_showed(marks(0, 5, 9), {0: "x", 5: "y", 9: None}, low=0) is None
    assert read_before_it_showed(marks(0, 5, 9), {9: "f9"}, low=0) is None  # first not probed
    # Every batch since the first one read the new log: from just after the first.
    assert read_before_it_showed(marks(0, 5, 9), {0: "x", 5: "f5", 9: "f9"}, low=0) == (1, 9)


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
