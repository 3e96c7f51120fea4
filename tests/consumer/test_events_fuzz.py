"""Hostile input, generated: whatever the bytes, the parser applies or rejects with a reason."""

from __future__ import annotations

import json
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.events import (
    REASONS,
    Deletion,
    Interaction,
    Rejected,
    Source,
    parse_deletion,
    parse_interaction,
)

SRC = Source("t", 0, 0)
FUZZ = settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "user": json_values | st.text(min_size=1, max_size=300),
        "item": json_values | st.text(min_size=1, max_size=300),
        "weight": json_values | st.floats(),
        "ts": json_values | st.floats(),
        "request_id": json_values,
        "extra": json_values,
    },
)


def check(value: bytes) -> None:
    for result in (parse_interaction(value, SRC, 0.0), parse_deletion(value, SRC, 0.0)):
        assert isinstance(result, Interaction | Deletion | Rejected)
        if isinstance(result, Rejected):
            assert result.reason in REASONS and result.detail
        elif isinstance(result, Interaction):
            assert result.weight >= 0 and result.user and result.item


@FUZZ
@given(st.binary(max_size=6000))
def test_arbitrary_bytes(value):
    check(value)


@FUZZ
@given(events)
def test_schema_drift_odd_types_and_unicode(obj):
    check(json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.integers(1, 5000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_and_huge_numbers(depth, opener):
    check((opener * depth).encode())
    check(b'{"user": "u", "item": "i", "weight": 1' + b"0" * depth + b"}")


def test_memory_is_bounded_by_the_size_limit():
    huge = b"[" * 10_000_000  # 10 MB of nesting: rejected by size before any parsing
    tracemalloc.start()
    check(huge)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000
