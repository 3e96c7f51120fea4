"""The dead-letter policy on its own: per-partition surge windows, headers."""

from __future__ import annotations

from consumer.pipeline.dead_letters import SurgePolicy, dead_letter_headers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_surge_pauses_only_its_partition_and_resumes_after_the_pause():
    clock = Clock()
    policy = SurgePolicy(max_ratio=0.5, window=20, min_messages=10, pause_s=30, clock=clock)
    garbage, deletions = ("interactions", 0), ("deletions", 0)
    assert policy.record(garbage, 5, 5) is None  # too few to judge
    assert policy.record(deletions, 10, 1) is None
    assert policy.record(garbage, 10, 9) == 14 / 15
    assert policy.paused() == [garbage]
    assert policy.record(garbage, 10, 10) is None  # already paused
    clock.now = 29
    assert policy.due() == []
    clock.now = 30
    assert policy.due() == [garbage] and policy.paused() == []
    assert policy.record(garbage, 10, 1) is None  # a fresh window


def test_a_pause_of_zero_lasts_until_restart():
    clock = Clock()
    policy = SurgePolicy(max_ratio=0.1, window=10, min_messages=1, pause_s=0, clock=clock)
    policy.record(("t", 1), 1, 1)
    clock.now = 1e9
    assert policy.due() == [] and policy.paused() == [("t", 1)]


def test_a_moved_partition_is_judged_afresh():
    policy = SurgePolicy(max_ratio=0.5, window=10, min_messages=2, pause_s=5)
    policy.record(("t", 0), 4, 4)
    policy.forget(("t", 0))
    assert policy.paused() == []


def test_dead_letters_keep_the_original_headers_and_replace_old_reasons():
    original = [("trace-id", b"abc"), ("unlearn.reason", b"not_json"), ("empty", None)]
    headers = dead_letter_headers(original, "bad_ts", "x" * 2000, "t:0:5")
    assert headers[:2] == [("trace-id", b"abc"), ("empty", b"")]
    assert [k for k, _ in headers].count("unlearn.reason") == 1
    assert (
        dict(headers)["unlearn.reason"] == b"bad_ts"
        and len(dict(headers)["unlearn.detail"]) == 1024
    )
