"""Consolidating: the step that runs between batches, when no input waits.

It feeds the owner's forgetting cycle (consumer/consolidation/worker.py) with what each
batch forgot and with what other owners' commits forgot (their change logs), runs the
cycle a slice at a time, and runs ALS sweeps when someone asked for them (`unlearn
consolidate`, or `consolidate_sweeps` at start; consumer/consolidation/sweeps.py). With
no deletion and no request it does nothing at all: an idle service rests.

A slice that meets a Redis error is dropped (the cycle's uncommitted rounds with it: the
replica may hold values Redis does not), and the next batch rebuilds the engine.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from consumer.consolidation.cycle import CyclePolicy
from consumer.consolidation.sweeps import SliceOutcome, SweepRequest, Sweeps
from consumer.consolidation.worker import Consolidator, Step
from consumer.engine import BatchOutcome, StateRolledBack
from consumer.pipeline.applying import TRANSIENT, Applier
from consumer.pipeline.observation import Observer

log = logging.getLogger("unlearn.consolidating")

REQUEST_CHECK_S = 5.0  # how often an instance looks for `unlearn consolidate`'s request


class Consolidating:
    def __init__(
        self,
        applier: Applier,
        observer: Observer,
        policy: CyclePolicy,
        sweeps_at_start: int = 0,
        sweep_tolerance: float = 1e-4,
    ) -> None:
        self.applier = applier
        self.observer = observer
        self.consolidator = Consolidator(policy)
        self.sweep_tolerance = sweep_tolerance
        self.request: SweepRequest | None = (
            SweepRequest(sweeps_at_start, sweep_tolerance) if sweeps_at_start else None
        )
        self._request_seen: str | None = None
        self._request_checked = float("-inf")
        self.slices = 0
        self.sweeps = 0
        self.sweeps_of_request = 0
        self.cycles = 0

    @property
    def resting(self) -> bool:
        return self.consolidator.resting and self.request is None

    def _attach(self) -> None:
        self.consolidator.attach(self.applier.engine)

    # ----- what feeds the cycle ----------------------------------------------------------

    def batch(self, outcome: BatchOutcome) -> None:
        """A batch is durable: its rows are Redis's again, what it forgot starts a cycle."""
        self._attach()
        solved = {side: _joined(rows) for side, rows in outcome.solved.items()}
        self.consolidator.committed(solved)
        for forgetting in outcome.forgetting:
            self._seed(forgetting)
        self._foreign()

    def _foreign(self) -> None:
        """What other owners' commits forgot, as this engine's replica read it."""
        try:
            forgetting = self.applier.engine.take_foreign()
            if forgetting:
                self._seed(forgetting)
        except TRANSIENT as exc:
            log.info("other owners' forgetting not read: %s", type(exc).__name__)

    def _seed(self, forgetting) -> None:
        was_resting = self.consolidator.resting
        self.consolidator.seed(forgetting)
        if was_resting and not self.consolidator.resting:
            self.observer.cycle_started()

    # ----- running it ---------------------------------------------------------------------

    def due(self, since_last_event_ms: float, input_waiting: bool) -> bool:
        if self.applier.engine.owned:
            self._attach()
            self._foreign()
        if not self.consolidator.resting:
            return self.consolidator.due(since_last_event_ms, input_waiting)
        return self.request is not None and not input_waiting

    def run(self, on_rolled_back: Callable[[StateRolledBack], None]) -> bool:
        """One slice (of the cycle first, of requested sweeps else). True when it wrote
        something the factors topic should carry."""
        if not self.applier.engine.owned:
            return False
        self._attach()
        try:
            if not self.consolidator.resting:
                return self._cycle_slice()
            if self.request is not None:
                return self._sweep_slice()
        except StateRolledBack as exc:  # found before the slice wrote anything
            on_rolled_back(exc)
        except TRANSIENT as exc:
            log.warning("consolidation slice failed (%s): its uncommitted work is dropped",
                        type(exc).__name__)  # fmt: skip
            self.applier.stale = True
        return False

    def _cycle_slice(self) -> bool:
        step: Step = self.consolidator.step()
        self.slices += 1
        self.observer.cycle_slice(step)
        if step.ended:
            self.cycles += 1
            self.observer.cycle_ended(self.consolidator.last or {}, self.consolidator.resting)
        return step.written > 0

    def _sweep_slice(self) -> bool:
        assert self.request is not None
        outcome: SliceOutcome
        outcome, finished = Sweeps(self.applier.engine).step(self.request)
        self.slices += 1
        self.observer.slice(outcome)
        if self.request.done > self.sweeps_of_request:  # a sweep completed
            self.sweeps_of_request = self.request.done
            self.sweeps += 1
            self.observer.sweep(self.request.done, outcome.loss)
        if finished:
            log.info("requested consolidation done: %d sweeps", self.request.done)
            self.request = None
            self.observer.requested_sweeps_done()
        return outcome.rows > 0

    def flush(self) -> int:
        """Write what the cycle moved so far (before the shards go, or the service stops)."""
        if self.consolidator.engine is None:
            return 0
        try:
            return self.consolidator.flush()
        except TRANSIENT as exc:
            log.warning("consolidation's rounds not written (%s): dropped", type(exc).__name__)
            self.applier.stale = True
            return 0

    def lost(self, shards: set[int]) -> None:
        if self.consolidator.engine is not None:
            self.consolidator.abandon(shards)

    # ----- requests -------------------------------------------------------------------------

    def check_request(self) -> None:
        """Now and then: did `unlearn consolidate` ask for sweeps?"""
        now = time.monotonic()
        if now - self._request_checked < REQUEST_CHECK_S:
            return
        self._request_checked = now
        try:
            raw = self.applier.engine.state.read_consolidation_request()
        except TRANSIENT as exc:
            log.info("consolidation request not read: %s", type(exc).__name__)
            return
        if raw is None:
            return
        request = json.loads(raw)
        if self._request_seen is None:
            self._request_seen = request["id"]  # asked before this instance started
            if time.time() - request.get("at", 0) > 3600:
                return
        elif request["id"] == self._request_seen:
            return
        self._request_seen = request["id"]
        log.info("consolidation requested: %s sweeps", request["sweeps"] or "until settled")
        self.request = SweepRequest(int(request["sweeps"]), self.sweep_tolerance)
        self.sweeps_of_request = 0


def _joined(rows: list):
    import numpy as np

    return np.concatenate(rows) if rows else np.empty(0, np.int64)
