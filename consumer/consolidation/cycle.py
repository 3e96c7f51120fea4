"""A forgetting cycle's schedule and its stopping rule, without Redis (the worker runs it).

A cycle opens when a batch forgot something (deletions, purges, retention) and is made of
*rounds*, users then items, as ALS alternates: a round re-solves, in slices, the rows of
its side whose pressure over mass exceeds the tolerance (unlearn_core/active_set.py).
After each pair of rounds the settle rule (unlearn_core/settle.py) is asked, on a sample
of the cycle's deleted pairs against a sample of observed pairs of the rows it reached.
The rounds end when it is met while events arrive, when no row is pressed over the
tolerance (rest reached on its own), or after `max_rounds` pairs; then the rows the
deletions touched are re-solved once more against what the rounds left (`touch-up`: at
rest they are the exact solve of their data), and what moved is committed at once
(`flush`).

Why it ends: each round re-solves only rows over the tolerance; the settle rule is met
once the deleted pairs' movement is ALS's own churn and its projected tail is small, and
`max_rounds` bounds the rounds whatever the scores do.

Why the settle rule only while events arrive: it bounds what a cycle costs beside the
input, but where it stops depends on how the stream was batched (the same deletions in
other batches stop at another round), and what it leaves is ALS's slow modes, which a
retrain has run through: on MovieLens-100K with 5 % of the pairs deleted in a stream, the
model it left ranked held-out pairs below the retraining check's bound about one run in
four. Once the input has been quiet for `quiet_ms`, the rule no longer ends the rounds
(the cycle is in overtime) and a cycle it ended is taken up again: overtime runs to rest,
to `max_rounds`, or until it re-solved `quiet_reach` rows per deleted pair, so the model
at rest depends much less on the round the rule happened to stop at, and overtime's cost
follows the deletions, not the model's size.
docs/state.md has the measured number of rounds on models trained here, with `implicit`
and with Spark, and what the take-up costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unlearn_core.settle import SettleRule, Settling

REST, ROUNDS, TOUCH_UP, FLUSH = "rest", "rounds", "touch-up", "flush"


@dataclass(frozen=True)
class CyclePolicy:
    tolerance: float = 1e-3  # re-solve a row once this share of its inputs moved
    # The cycle's end writes a row only if it moved more than this, relatively, since it
    # was last written (else it keeps its stored value): the factors topic carries changes.
    write_tolerance: float = 1e-4
    slice_ms: float = 10.0  # the time one slice should take
    idle_ms: float = 0.0  # no slice this soon after the last event
    # The input quiet this long: the settle rule no longer ends the rounds, and a cycle it
    # ended is taken up again (overtime: until rest, max_rounds or quiet_reach).
    quiet_ms: float = 2000.0
    # What a cycle may re-solve in overtime (past the settle rule because the input is
    # quiet), in rows per deleted pair since the model was last at rest: overtime's cost
    # follows the deletions, not the model's size.
    quiet_reach: float = 50.0
    max_rounds: int = 60  # pairs of rounds (users, then items) in one cycle
    settle: SettleRule = field(default_factory=SettleRule)
    sample: int = 4096  # deleted pairs, and observed pairs, the settle rule watches
    touch_ups: int = 50  # alternations of the touched rows' last re-solve, at most
    min_rows: int = 16
    max_rows: int = 8192
    first_rows: int = 256


@dataclass
class CycleFigures:
    """What one cycle did: for the metrics, the log and the benchmarks."""

    rounds: int = 0  # pairs of rounds
    solved: int = 0  # rows re-solved (a row re-solved twice counts twice)
    forgotten: int = 0  # deleted pairs it carried
    written: int = 0  # rows its flush wrote
    ended_by: str = ""  # settled (events arriving) | rest | max_rounds | reach (take-up)
    seconds: float = 0.0  # wall time from its first slice to its flush

    @property
    def reach(self) -> float:
        """Rows re-solved per deleted pair."""
        return self.solved / max(self.forgotten, 1)


class Sample:
    """A bounded, uniform sample of pairs (reservoir): what the settle rule watches."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.pairs = np.empty((0, 2), np.int64)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, pairs: np.ndarray) -> None:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        room = max(self.size - len(self.pairs), 0)
        if room:
            self.pairs = np.concatenate([self.pairs, pairs[:room]])
        rest = pairs[room:]
        if len(rest):
            # Algorithm R in bulk: the n-th pair seen (from 0) takes a uniform slot of n + 1
            # and stays if the slot is in the sample; where several land on one slot the last
            # one wins, as one by one. A deletion of a popular item adds its thousands of
            # neighbours here: a Python loop per pair cost half the write path's time.
            seen = self.seen + room + np.arange(len(rest))
            slots = (self._rng.random(len(rest)) * (seen + 1)).astype(np.int64)
            kept = np.flatnonzero(slots < self.size)[::-1]  # the last first
            slots, first = np.unique(slots[kept], return_index=True)
            self.pairs[slots] = rest[kept[first]]
        self.seen += len(pairs)

    def clear(self) -> None:
        self.pairs, self.seen = np.empty((0, 2), np.int64), 0


@dataclass
class Cycle:
    policy: CyclePolicy
    phase: str = REST
    side: str = "user"
    queue: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    position: int = 0
    rows_per_slice: int = 0
    empty_rounds: int = 0  # consecutive rounds that found no row over the tolerance
    overtime: bool = False  # past the settle rule (met with the input quiet, or taken up)
    settling: Settling | None = None
    pair_start: tuple[np.ndarray, np.ndarray] | None = None  # samples at the pair's start
    scores_start: tuple[np.ndarray, np.ndarray] | None = None
    figures: CycleFigures = field(default_factory=CycleFigures)
    cycles: int = 0  # cycles ended since the start

    def __post_init__(self) -> None:
        self.rows_per_slice = self.policy.first_rows
        self.deleted = Sample(self.policy.sample, 1)
        self.observed = Sample(self.policy.sample, 2)

    @property
    def resting(self) -> bool:
        return self.phase == REST

    def open(self) -> None:
        """New forgetting: a cycle starts, or the one under way goes on (its rounds pick up
        the new pressure; a cycle past its rounds returns to them)."""
        if self.phase == REST:
            self.figures = CycleFigures()
            self.settling = Settling(self.policy.settle)
            self.side, self.queue, self.position, self.empty_rounds = "user", _NONE, 0, 0
            self.pair_start = None
        self.phase, self.overtime = ROUNDS, False  # new deletions: the rule judges again

    def take_up(self) -> None:
        """The input is quiet: the rounds of a cycle the settle rule ended go on, to rest
        or to what is left of `max_rounds` (its rounds so far count: however often it is
        taken up and ended again, a cycle runs at most max_rounds pairs)."""
        rounds = self.figures.rounds
        self.open()
        self.figures.rounds, self.overtime = rounds, True

    def due(self, since_last_event_ms: float, input_waiting: bool) -> bool:
        return not self.resting and not input_waiting and since_last_event_ms >= self.policy.idle_ms

    def next_rows(self) -> np.ndarray | None:
        """The next slice of the round under way (None: the round is done)."""
        if self.position >= len(self.queue):
            return None
        rows = self.queue[self.position : self.position + self.rows_per_slice]
        self.position += len(rows)
        return rows

    def start_round(self, side: str, queue: np.ndarray) -> None:
        self.side, self.queue, self.position = side, queue, 0

    def sliced(self, seconds: float) -> None:
        """Adapt the slice to take about slice_ms."""
        target = self.policy.slice_ms / 1000
        if seconds > 0:
            scaled = int(self.rows_per_slice * min(max(target / seconds, 0.5), 2.0))
            self.rows_per_slice = min(max(scaled, self.policy.min_rows), self.policy.max_rows)

    def round_done(self, solved_any: bool) -> None:
        self.empty_rounds = 0 if solved_any else self.empty_rounds + 1

    def pair_done(
        self,
        changed: tuple[np.ndarray, np.ndarray],
        observed: tuple[np.ndarray, np.ndarray],
        quiet: bool = False,
    ) -> bool:
        """A pair of rounds ended (scores of the samples at its start and now): do the
        rounds end? Sets `figures.ended_by` when they do. With the input `quiet` the
        settle rule does not end them, it puts the cycle in overtime: rest, max_rounds or
        overtime's share of re-solves (the worker counts them) end them then."""
        self.figures.rounds += 1
        assert self.settling is not None
        if len(changed[0]):
            step = self.settling.step(changed, observed)
            settled = step.settled
        else:  # nothing deleted to watch (pressure another owner's commit brought)
            settled = self.figures.rounds >= self.policy.settle.min_steps
        if settled and quiet:
            self.overtime = True
        if settled and not quiet:
            self.figures.ended_by = "settled"
        elif self.empty_rounds >= 2:
            self.figures.ended_by = "rest"
        elif self.figures.rounds >= self.policy.max_rounds:
            self.figures.ended_by = "max_rounds"
        return bool(self.figures.ended_by)

    def at_rest_early(self) -> bool:
        """Both sides found nothing over the tolerance: the rounds end on their own."""
        if self.empty_rounds >= 2:
            self.figures.ended_by = self.figures.ended_by or "rest"
            return True
        return False

    def end(self) -> CycleFigures:
        figures = self.figures
        self.phase, self.cycles = REST, self.cycles + 1
        self.deleted.clear()
        self.observed.clear()
        self.settling, self.pair_start = None, None
        return figures


_NONE = np.empty(0, np.int64)
