"""Bounded exponential backoff with jitter."""

from __future__ import annotations

import pytest
import redis

from consumer.retry import TRANSIENT_REDIS, RetriesExhausted, retry


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def flaky(failures: int, error: Exception):
    calls = {"n": 0}

    def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise error
        return "done"

    return attempt, calls


def test_transient_errors_are_retried_with_growing_capped_jittered_delays():
    fake = FakeTime()
    attempt, calls = flaky(8, redis.ConnectionError("down"))
    result = retry(
        attempt,
        TRANSIENT_REDIS,
        budget_s=600,
        sleep=fake.sleep,
        clock=fake.clock,
        first_delay_s=0.1,
        max_delay_s=1.0,
    )
    assert result == "done" and calls["n"] == 9
    caps = [min(0.1 * 2**n, 1.0) for n in range(8)]
    assert all(0 <= s <= cap for s, cap in zip(fake.sleeps, caps, strict=True))
    assert len(set(fake.sleeps)) > 1  # jittered, not a fixed schedule


def test_the_budget_bounds_the_wait():
    fake = FakeTime()
    attempt, _ = flaky(10**6, redis.TimeoutError("slow"))
    with pytest.raises(RetriesExhausted):
        retry(attempt, TRANSIENT_REDIS, budget_s=30, sleep=fake.sleep, clock=fake.clock)
    assert fake.now <= 30 + 5  # never sleeps past the deadline by more than one step


def test_other_errors_propagate_at_once():
    fake = FakeTime()
    attempt, calls = flaky(1, redis.ResponseError("WRONGTYPE"))
    with pytest.raises(redis.ResponseError):
        retry(attempt, TRANSIENT_REDIS, budget_s=30, sleep=fake.sleep, clock=fake.clock)
    assert calls["n"] == 1 and not fake.sleeps


def test_each_retry_names_the_server_and_the_budget_left(caplog):
    fake = FakeTime()
    attempt, _ = flaky(2, redis.ConnectionError("Connection refused"))
    with caplog.at_level("WARNING", logger="unlearn.retry"):
        retry(attempt, TRANSIENT_REDIS, budget_s=300, sleep=fake.sleep, clock=fake.clock,
              what="Redis cache:6379/0, batch")  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("Redis cache:6379/0, batch: transient failure (ConnectionError")
    assert "giving up in 300 s of the 300 s budget" in lines[0]
