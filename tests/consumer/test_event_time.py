"""The time rule on its own: no raw value puts an event after its arrival."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.event_time import (
    ADJUSTMENTS,
    EventTime,
    UnreadableTime,
    event_time,
    parse_time_value,
)

ARRIVAL = 1_796_157_800.0
SKEW = 300.0

raw_times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30).map(float),
    st.none(),
)


@settings(max_examples=500, derandomize=True)
@given(raw=raw_times, received=st.floats(0, 4e9), fallback=st.none() | st.floats(-1e13, 1e13))
def test_no_raw_time_lands_after_its_arrival(raw, received, fallback):
    time = event_time(raw, received, SKEW, fallback)
    assert time.seconds <= received
    assert time.adjustment is None or time.adjustment in ADJUSTMENTS


@settings(max_examples=300, derandomize=True)
@given(true=st.floats(1e8, ARRIVAL))
def test_a_plausible_time_in_any_unit_is_read_back(true):
    for scale, unit in ((1, None), (1e3, "milliseconds"), (1e6, "microseconds")):
        time = event_time(true * scale, ARRIVAL, SKEW)
        assert time.adjustment == unit
        # Kept to the millisecond, down: never later than the time given.
        assert true - 1e-3 - 1e-6 <= time.seconds <= true + 1e-6


def test_what_cannot_be_a_time_counts_at_arrival():
    for raw, adjustment in ((1e300, "future"), (ARRIVAL + 2 * SKEW, "future"), (-1.0, "negative"),
                            (float("nan"), "unreadable"), (None, "missing")):  # fmt: skip
        assert event_time(raw, ARRIVAL, SKEW) == EventTime(ARRIVAL, adjustment)


def test_a_clock_slightly_ahead_is_capped_silently():
    assert event_time(ARRIVAL + SKEW / 2, ARRIVAL, SKEW) == EventTime(ARRIVAL, None)


def test_a_missing_time_falls_back_to_the_message_time_under_the_same_rule():
    assert event_time(None, ARRIVAL, SKEW, fallback=ARRIVAL - 9) == EventTime(ARRIVAL - 9, None)
    assert event_time(None, ARRIVAL, SKEW, fallback=ARRIVAL + 10**8) == EventTime(ARRIVAL, "future")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (17, 17.0),
        ("1796157731", 1796157731.0),
        ("2026-12-01T20:43:20Z", ARRIVAL),
        ("2026-12-01T21:43:20+01:00", ARRIVAL),
        ("2026-12-01 20:43:20", ARRIVAL),  # no offset: UTC
        (10**400, float("inf")),
    ],
)
def test_values_a_producer_may_write(value, seconds):
    assert parse_time_value(value) == seconds


@pytest.mark.parametrize("value", [True, "yesterday", {"at": 5}, [1], ""])
def test_values_that_are_no_time(value):
    with pytest.raises(UnreadableTime):
        parse_time_value(value)
