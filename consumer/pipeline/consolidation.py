"""Consolidation as a background citizen: sweeps in small slices, between batches.

The touched rows of every batch are re-solved exactly before its receipts go out; the
rest of the model converges by sweeps. A sweep runs as slices: blocks of rows of one side
re-solved exactly against the other side's current factors (block coordinate descent: the
objective never increases). A slice runs only when no input is waiting (a deletion waits
at most one slice), not within `idle_ms` of the last event, and its size adapts so that
it takes about `slice_ms`.

The stopping rule: a full sweep (every user block, then every item block) whose slices
lower the objective by less than `tolerance` of it, relatively, ends consolidation until
new events arrive. The measure is the objective itself, which exact slices can only lower
and which is bounded below, so the decreases sum to a finite amount and the rule is met
after finitely many sweeps, for good (no oscillation around the tolerance); a score-change
residual (the receipts' `residual`) does not stop anything.

One instance of a group consolidates at a time: the owner of the deletions topic's
partition 0 (the application decides; `owned` here). Sweeps by several instances would
each rewrite every row, and each would make the others re-read every row they changed.
Whether the namespace's consolidation had settled is kept in the state, so a new owner (a
restart, a rebalance) does not sweep a settled model again.

Once settled, a trickle of events does not restart a sweep each: every batch already
re-solved the rows it touched exactly, so what is left is their neighbours' drift. A new
cycle starts after `resume_events` events, or once the input has been quiet for
`resume_idle_ms` after some.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SIDES = ("user", "item")


@dataclass(frozen=True)
class ConsolidationPolicy:
    tolerance: float = 1e-4  # relative decrease of the objective per sweep
    idle_ms: float = 0.0  # no slice this soon after the last event
    slice_ms: float = 10.0  # the time one slice should take
    resume_events: int = 1000  # once settled: events that start a new cycle
    resume_idle_ms: float = 1000.0  # once settled: quiet input after events starts one
    min_rows: int = 16
    max_rows: int = 8192
    first_rows: int = 256


@dataclass
class SweepSummary:
    sweeps: int  # full sweeps completed since the start
    improvement: float  # this sweep's relative decrease of the objective
    loss: float
    converged: bool


@dataclass
class Consolidation:
    """Where the sweep cycle is, and whether it is due."""

    policy: ConsolidationPolicy
    converged: bool = False  # a freshly loaded model may not be
    owned: bool = True  # this instance is the one that consolidates
    sweeps: int = 0
    rows_per_slice: int = 0
    _side: int = 0
    _start: int = 0
    _cycle_loss: float | None = None  # the objective when this sweep began
    _cycle_gain: float = 0.0  # what its slices took off it
    _history: list[float] = field(default_factory=list)  # improvements of past sweeps
    _since_settled: int = 0  # events that arrived after the stopping rule was met

    def __post_init__(self) -> None:
        self.rows_per_slice = self.policy.first_rows

    def events_arrived(self, count: int = 1) -> None:
        """New data: the model may no longer be at its minimum."""
        if not self.converged:
            return
        self._since_settled += count
        if self._since_settled >= self.policy.resume_events:
            self._resume()

    def due(self, since_last_event_ms: float, input_waiting: bool) -> bool:
        if (
            self.converged
            and self._since_settled
            and since_last_event_ms >= self.policy.resume_idle_ms
        ):
            self._resume()
        return (
            self.owned
            and not self.converged
            and not input_waiting
            and since_last_event_ms >= self.policy.idle_ms
        )

    def take_over(self, settled: bool) -> None:
        """This instance consolidates from now on; `settled`: as the state recorded it
        (an unfinished sweep of the previous owner is begun again from its start)."""
        self.owned, self.converged, self._since_settled = True, settled, 0
        self._side, self._start = 0, 0
        self._cycle_loss, self._cycle_gain = None, 0.0

    def _resume(self) -> None:
        self.converged, self._since_settled = False, 0

    def next_slice(self, sizes: dict[str, int]) -> tuple[str, int, int]:
        """(side, first row, rows) of the slice to run; wraps to the next side. Nothing to
        sweep (no rows on either side): a slice of no rows."""
        if not any(sizes.values()):
            return SIDES[self._side], 0, 0
        while self._start >= sizes[SIDES[self._side]]:
            self._side, self._start = (self._side + 1) % 2, 0
        return SIDES[self._side], self._start, self.rows_per_slice

    def record(
        self, rows: int, loss_before: float, loss: float, seconds: float, sizes: dict[str, int]
    ) -> SweepSummary | None:
        """Note a slice's effect; the summary when it completed a sweep."""
        if self._cycle_loss is None:
            self._cycle_loss = loss_before
        self._cycle_gain += loss_before - loss
        self._start += rows
        target = self.policy.slice_ms / 1000
        if seconds > 0:
            scaled = int(self.rows_per_slice * min(max(target / seconds, 0.5), 2.0))
            self.rows_per_slice = min(max(scaled, self.policy.min_rows), self.policy.max_rows)
        if not (self._side == 1 and self._start >= sizes["item"]):
            return None
        improvement = self._cycle_gain / max(abs(self._cycle_loss), 1e-300)
        self.sweeps += 1
        self._history.append(improvement)
        self._side, self._start = 0, 0
        self._cycle_loss, self._cycle_gain = None, 0.0
        if improvement < self.policy.tolerance:
            self.converged = True
        return SweepSummary(self.sweeps, improvement, loss, self.converged)
