"""The consolidation schedule on its own: slices, the stopping rule, resuming."""

from __future__ import annotations

from consumer.pipeline.consolidation import Consolidation, ConsolidationPolicy

SIZES = {"user": 100, "item": 40}


def run_sweep(cycle: Consolidation, loss: float, gain: float, seconds: float = 0.01):
    """Slices until a sweep completes; the first lowers the objective by `gain`. Returns
    the sweep's summary, the slices it took and the objective after it."""
    slices = []
    while True:
        side, start, rows = cycle.next_slice(SIZES)
        slices.append((side, start, rows))
        share = gain if len(slices) == 1 else 0.0
        summary = cycle.record(rows, loss, loss - share, seconds, SIZES)
        loss -= share
        if summary is not None:
            return summary, slices, loss


def test_a_sweep_covers_every_user_block_then_every_item_block_once():
    cycle = Consolidation(ConsolidationPolicy(first_rows=16, min_rows=16, max_rows=16))
    summary, slices, _ = run_sweep(cycle, loss=100.0, gain=1.0)
    assert summary.sweeps == 1
    users = [(s, r) for side, s, r in slices if side == "user"]
    items = [(s, r) for side, s, r in slices if side == "item"]
    assert [s for s, _ in users] == list(range(0, 100, 16))
    assert [s for s, _ in items] == list(range(0, 40, 16))
    assert slices.index(("item", 0, 16)) == len(users)  # users first, then items


def test_the_slice_size_adapts_to_the_time_a_slice_should_take():
    policy = ConsolidationPolicy(slice_ms=10, first_rows=64, min_rows=4, max_rows=1024)
    cycle = Consolidation(policy)
    cycle.record(64, 1.0, 1.0, seconds=0.040, sizes={"user": 10_000, "item": 10})
    assert cycle.rows_per_slice == 32  # four times too slow: halved (at most) per slice
    cycle.record(32, 1.0, 1.0, seconds=0.001, sizes={"user": 10_000, "item": 10})
    assert cycle.rows_per_slice == 64  # ten times too fast: doubled (at most)
    for _ in range(20):
        cycle.record(cycle.rows_per_slice, 1.0, 1.0, seconds=1.0, sizes={"user": 10**6, "item": 1})
    assert cycle.rows_per_slice == 4  # never below min_rows


def test_the_stopping_rule_is_met_once_and_for_good_on_a_converging_objective():
    """Decreases that shrink (as exact block descent's do) meet the rule after finitely
    many sweeps, and the cycle then stays settled: no oscillation around the tolerance."""
    cycle = Consolidation(ConsolidationPolicy(tolerance=1e-4))
    loss, sweeps = 1000.0, []
    for n in range(1, 200):
        if not cycle.due(since_last_event_ms=1e9, input_waiting=False):
            break
        gain = loss * 0.01 / n**2  # the relative decrease falls like 1/n^2
        summary, _, loss = run_sweep(cycle, loss, gain)
        sweeps.append(summary)
    assert sweeps[-1].converged and not any(s.converged for s in sweeps[:-1])
    assert sweeps[-1].improvement < 1e-4 <= sweeps[-2].improvement
    assert len(sweeps) == 11  # 0.01 / n^2 < 1e-4 first at n = 11
    for _ in range(100):
        assert not cycle.due(since_last_event_ms=1e9, input_waiting=False)


def test_no_slice_while_input_waits_or_right_after_an_event():
    cycle = Consolidation(ConsolidationPolicy(idle_ms=50))
    assert not cycle.due(since_last_event_ms=1e9, input_waiting=True)
    assert not cycle.due(since_last_event_ms=10, input_waiting=False)
    assert cycle.due(since_last_event_ms=50, input_waiting=False)


def settled() -> Consolidation:
    cycle = Consolidation(ConsolidationPolicy(resume_events=100, resume_idle_ms=1000))
    run_sweep(cycle, loss=1.0, gain=0.0)
    assert cycle.converged
    return cycle


def test_once_settled_a_trickle_of_events_does_not_restart_a_sweep_each():
    cycle = settled()
    for _ in range(99):
        cycle.events_arrived(1)
        assert not cycle.due(since_last_event_ms=100, input_waiting=False)
    cycle.events_arrived(1)  # the hundredth: a new cycle
    assert cycle.due(since_last_event_ms=100, input_waiting=False)


def test_once_settled_quiet_input_after_some_events_restarts_the_cycle():
    cycle = settled()
    assert not cycle.due(since_last_event_ms=10_000, input_waiting=False)  # no event at all
    cycle.events_arrived(3)
    assert not cycle.due(since_last_event_ms=999, input_waiting=False)
    assert cycle.due(since_last_event_ms=1000, input_waiting=False)


def test_an_instance_that_does_not_own_consolidation_never_sweeps():
    cycle = Consolidation(ConsolidationPolicy(), owned=False)
    assert not cycle.due(since_last_event_ms=1e9, input_waiting=False)
    cycle.take_over(settled=False)
    assert cycle.due(since_last_event_ms=1e9, input_waiting=False)


def test_a_new_owner_of_a_settled_namespace_waits_for_new_events():
    cycle = Consolidation(ConsolidationPolicy(resume_events=100), owned=False)
    cycle.take_over(settled=True)
    assert not cycle.due(since_last_event_ms=1e9, input_waiting=False)
    cycle.events_arrived(100)
    assert cycle.due(since_last_event_ms=1e9, input_waiting=False)


def test_taking_over_begins_an_unfinished_sweep_again():
    cycle = Consolidation(ConsolidationPolicy(first_rows=10))
    sizes = {"user": 100, "item": 50}
    rows = cycle.next_slice(sizes)[2]
    cycle.record(rows, 1.0, 0.9, 0.01, sizes)
    assert cycle.next_slice(sizes)[1] == rows
    cycle.owned = False
    cycle.take_over(settled=False)
    assert cycle.next_slice(sizes)[:2] == ("user", 0)


def test_nothing_to_sweep_is_a_slice_of_no_rows():
    """An instance that owns no rows (its shards went in a rebalance) gets an empty slice
    at once, not a search for a row that is not there."""
    consolidation = Consolidation(ConsolidationPolicy())
    assert consolidation.next_slice({"user": 0, "item": 0})[2] == 0
