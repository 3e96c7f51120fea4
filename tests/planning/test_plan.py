"""The capacity plan's arithmetic, on coefficients chosen here."""

from __future__ import annotations

import math

import pytest

from consumer.planning.coefficients import Coefficients
from consumer.planning.plan import DAY_S, Demand, plan
from consumer.planning.shape import Shape

SHAPE = Shape(1_000, 100, 10_000, 64, 30.0, 170.0)  # 200 neighbours: work 200


def coefficients(**changes) -> Coefficients:
    base = dict(
        core_s_per_event=0.001, core_s_per_work=0.000005, efficiency={2: 0.9, 4: 0.8},
        runtime_bytes=100e6, rss_per_factor_byte=1.5, redis_bytes_per_interaction=40.0,
        redis_bytes_per_row=160.0, redis_bytes_per_factor_byte=1.25,
        redis_trail_bytes_per_deletion=300.0, redis_calls_per_event=3.0,
        redis_core_s_per_event=0.0001, source={},
    )  # fmt: skip
    return Coefficients(**{**base, **changes})


def test_instances_are_the_fewest_that_drain_the_rate_at_the_utilisation():
    c = coefficients()  # an event: 1 ms + 200 x 5 us = 2 ms; one core drains 500/s
    assert plan(SHAPE, Demand(100, 100), c, utilisation=0.7).instances == 1  # 200 <= 350
    two = plan(SHAPE, Demand(200, 200), c, utilisation=0.7)  # 400 > 350; 2 x 0.9 x 500 x 0.7
    assert two.instances == 2
    assert two.events_per_s_capacity == pytest.approx(900)
    three = plan(SHAPE, Demand(450, 450), c, utilisation=0.7)  # 3 x 0.9 x 500 x .7 = 945
    assert three.instances == 3
    assert plan(SHAPE, Demand(500, 500), c, utilisation=0.7).instances == 4  # 4 x .8: 1120
    assert plan(SHAPE, Demand(800, 800), c, utilisation=0.7).instances == 6  # 5: 1400
    assert plan(SHAPE, Demand(300, 300), c, cpu_per_instance=2.0).instances == 1  # 700


def test_memory_redis_and_partitions_follow_the_shape():
    c = coefficients()
    p = plan(SHAPE, Demand(10, 30), c)
    assert p.memory_per_instance_bytes == pytest.approx(100e6 + 1.5 * 1_100 * 64 * 4)
    assert p.redis_memory_bytes == pytest.approx(40 * 10_000 + 160 * 1_100 + 1.25 * 1_100 * 256)
    assert p.redis_trail_bytes_per_day == pytest.approx(300 * 10 * DAY_S)
    assert p.redis_calls_per_s == pytest.approx(3 * 40)
    assert p.redis_cores == pytest.approx(0.004)
    assert (p.redis_primaries, p.partitions, p.shards) == (1, 2, 16)
    many = plan(SHAPE, Demand(10_000, 10_000), c)
    assert many.partitions >= 2 * many.instances
    assert many.partitions & (many.partitions - 1) == 0  # a power of two
    assert many.shards >= many.partitions
    assert many.redis_primaries == math.ceil(many.redis_cores / 0.7)


def test_a_larger_catalogue_costs_more_per_event():
    c = coefficients()
    small = plan(Shape.typical(10_000, 1_000, 100_000), Demand(100, 100), c)
    large = plan(Shape.typical(10_000, 1_000, 2_000_000), Demand(100, 100), c)
    assert large.core_s_per_event > 5 * small.core_s_per_event


def test_more_instances_than_were_measured_keep_the_worst_measured_efficiency():
    c = coefficients()
    assert [c.efficiency_of(n) for n in (1, 2, 3, 4, 16)] == [1.0, 0.9, 0.9, 0.8, 0.8]


def test_a_rate_beyond_any_deployment_is_refused_clearly():
    with pytest.raises(ValueError, match="give each instance more CPU"):
        plan(SHAPE, Demand(1e9, 0), coefficients())


@pytest.mark.parametrize(
    "changes, named",
    [({"core_s_per_event": -1.0}, "core_s_per_event"),
     ({"runtime_bytes": math.nan}, "runtime_bytes"),
     ({"efficiency": {1: 0.5}}, "efficiency"), ({"efficiency": {}}, "efficiency")],
)  # fmt: skip
def test_coefficients_out_of_range_are_refused_by_name(changes, named):
    with pytest.raises(ValueError, match=named):
        coefficients(**changes)


def test_coefficients_round_trip_through_their_file():
    c = coefficients(source={"command": "python -m benchmarks.capacity"})
    assert Coefficients.from_json(c.to_json()) == c


@pytest.mark.parametrize("bad", [-1.0, math.inf])
def test_a_negative_or_infinite_rate_is_refused(bad):
    with pytest.raises(ValueError, match="deletions_per_s"):
        Demand(bad, 0)
