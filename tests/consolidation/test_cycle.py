"""A forgetting cycle's schedule on its own: rounds, slices, the end of the rounds."""

from __future__ import annotations

import numpy as np

from consumer.consolidation.cycle import REST, ROUNDS, Cycle, CyclePolicy, Sample


def test_a_cycle_opens_on_forgetting_and_runs_only_when_no_input_waits():
    cycle = Cycle(CyclePolicy(idle_ms=50))
    assert cycle.resting and not cycle.due(1e9, False)
    cycle.open()
    assert cycle.phase == ROUNDS
    assert cycle.due(100, False)
    assert not cycle.due(100, True)  # a batch first
    assert not cycle.due(10, False)  # too soon after the last event


def test_a_round_is_cut_into_slices_that_adapt_to_their_time():
    cycle = Cycle(CyclePolicy(first_rows=4, min_rows=2, max_rows=64, slice_ms=10))
    cycle.open()
    cycle.start_round("user", np.arange(10))
    assert cycle.next_rows().tolist() == [0, 1, 2, 3]
    cycle.sliced(0.040)  # four times too slow: halved (at most)
    assert cycle.next_rows().tolist() == [4, 5]
    cycle.sliced(0.001)  # ten times too fast: doubled (at most)
    assert cycle.next_rows().tolist() == [6, 7, 8, 9]
    assert cycle.next_rows() is None


def test_the_rounds_end_when_the_deleted_pairs_settle():
    cycle = Cycle(CyclePolicy())
    cycle.open()
    observed = np.linspace(0.5, 1.0, 100)
    deleted = np.full(100, 0.6)
    ended = False
    churn = 0.01 * np.where(np.arange(100) % 2, 1.0, -1.0)  # ALS's own back and forth
    for n in range(50):
        fall = 0.1 * 0.5**n
        moved = observed + churn * (-1) ** n
        ended = cycle.pair_done((deleted, deleted - fall), (observed, moved))
        deleted, observed = deleted - fall, moved
        if ended:
            break
    assert ended and cycle.figures.ended_by == "settled"
    assert 2 <= cycle.figures.rounds < 50
    figures = cycle.end()
    assert cycle.phase == REST and figures.rounds == cycle.figures.rounds


def test_the_rounds_end_at_their_cap_whatever_the_scores_do():
    cycle = Cycle(CyclePolicy(max_rounds=3))
    cycle.open()
    ends = []
    for n in range(5):
        moving = np.full(10, float(n))
        ends.append(cycle.pair_done((moving, moving - 1.0), (np.ones(10), np.ones(10) * 1.001)))
        if ends[-1]:
            break
    assert ends == [False, False, True] and cycle.figures.ended_by == "max_rounds"


def test_with_nothing_deleted_to_watch_the_rounds_end_after_the_rules_minimum():
    cycle = Cycle(CyclePolicy())
    cycle.open()
    empty = (np.empty(0), np.empty(0))
    assert not cycle.pair_done(empty, (np.ones(3), np.ones(3)))
    assert cycle.pair_done(empty, (np.ones(3), np.ones(3)))


def test_rounds_that_find_nothing_over_the_tolerance_end_the_cycle_on_their_own():
    cycle = Cycle(CyclePolicy())
    cycle.open()
    cycle.round_done(False)
    assert not cycle.at_rest_early()
    cycle.round_done(False)
    assert cycle.at_rest_early() and cycle.figures.ended_by == "rest"


def test_the_sample_keeps_at_most_its_size_uniformly():
    sample = Sample(100, seed=0)
    pairs = np.stack([np.arange(10_000), np.arange(10_000)], axis=1)
    for start in range(0, 10_000, 1000):
        sample.add(pairs[start : start + 1000])
    assert len(sample.pairs) == 100 and sample.seen == 10_000
    # Uniform over what was seen: about as many from the first half as from the second.
    assert 30 <= int((sample.pairs[:, 0] < 5000).sum()) <= 70


def test_every_pair_seen_has_the_same_chance_whatever_the_chunks():
    # 1,000 pairs in chunks of uneven size (one crosses the point where the sample fills):
    # over 2,000 samples of 100, each pair is kept about a tenth of the time, never twice.
    kept = np.zeros(1000)
    pairs = np.stack([np.arange(1000), np.arange(1000)], axis=1)
    for seed in range(2000):
        sample = Sample(100, seed=seed)
        for chunk in np.split(pairs, [30, 160, 161, 700]):
            sample.add(chunk)
        assert len(np.unique(sample.pairs[:, 0])) == 100
        kept[sample.pairs[:, 0]] += 1
    share = kept / 2000
    # binomial(2000, 0.1): sd 0.0067; 5 sd either side
    assert share.min() > 0.066 and share.max() < 0.134
    assert abs(share[:100].mean() - 0.1) < 0.01 and abs(share[-100:].mean() - 0.1) < 0.01


def test_with_the_input_quiet_the_settle_rule_ends_nothing_and_a_taken_up_cycle_counts_on():
    cycle = Cycle(CyclePolicy(max_rounds=4))
    cycle.open()
    empty, still = (np.empty(0), np.empty(0)), (np.ones(3), np.ones(3))
    assert not cycle.pair_done(empty, still, quiet=True) and not cycle.overtime
    assert not cycle.pair_done(empty, still, quiet=True)  # settled, but the input is quiet
    assert cycle.overtime
    assert cycle.pair_done(empty, still) and cycle.figures.ended_by == "settled"
    cycle.end()
    # Taken up: in overtime, and its three round pairs count, so one more reaches the cap.
    cycle.take_up()
    assert cycle.phase == ROUNDS and cycle.figures.rounds == 3 and not cycle.figures.ended_by
    assert cycle.overtime
    assert cycle.pair_done(empty, still, quiet=True) and cycle.figures.ended_by == "max_rounds"
    # New deletions: the settle rule judges again.
    cycle.end()
    cycle.take_up()
    cycle.open()
    assert not cycle.overtime
