"""When the deletions' effect has settled: the stopping rule of every forgetting run.

After the rows a deletion touched are re-solved exactly, further ALS steps carry the
change to their neighbours. The deleted pairs' scores fall quickly at first, then along
ALS's slow modes, which every pair shares. Two measures decide when further steps stop
paying for themselves, both on a fixed sample of the deleted pairs (`changed`) against a
fixed sample of observed pairs (`observed`), taken before and after each step:

- the **ratio**: how much the step moved the deleted pairs' scores (mean |change|) over
  how much it moved observed pairs'. At most `ratio` (1.3), what is left of the deleted
  pairs' movement is ALS's own churn; a ratio that stopped falling says the same.
- the **tail**: the deleted pairs' mean score falls faster than the observed pairs' by an
  *excess* e_n per step, shrinking by a factor q_n = e_n / e_(n-1) (capped at 0.95). The
  excess still to come is at most about e_n q / (1 - q) if it keeps shrinking that fast.
  A ratio alone stops a large deletion (5 % of the pairs) while that tail is still several
  times what separates the model from a retrain; so the rule also waits until the tail is
  below `tail` (0.4 %) of the observed pairs' mean |score|. An excess within `noise` (2)
  standard errors of its own measurement is indistinguishable from zero: a few deleted
  pairs cannot hold a run open on noise.

Settled: from step `min_steps` (2) on, the ratio is met (or stopped falling) and the tail
is met. Measured on MovieLens-100K and -1M (docs/benchmarks.md, offline forget): 3 to 9
steps for 0.1 % to 1 % of the pairs, about 40 for 5 % of them at k = 64 with little
regularisation, every retraining check met. The run's own cap (`max_sweeps`, a cycle's
`max_rounds`) bounds it whatever the scores do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RATIO = 1.3
DEFAULT_TAIL = 0.004
DEFAULT_NOISE = 2.0
MIN_STEPS = 2
_MAX_SHRINK = 0.95


@dataclass(frozen=True)
class SettleRule:
    ratio: float = DEFAULT_RATIO  # deleted pairs move at most this many times observed ones
    tail: float = DEFAULT_TAIL  # the projected excess still to come, of the mean |score|
    noise: float = DEFAULT_NOISE  # an excess within this many standard errors is noise
    min_steps: int = MIN_STEPS

    def __post_init__(self) -> None:
        if not self.ratio >= 1:
            raise ValueError(f"the settle ratio must be >= 1, got {self.ratio!r}")
        if not (self.tail >= 0 and self.noise >= 0):
            raise ValueError("the settle tail and noise must be >= 0")


@dataclass(frozen=True)
class SettleStep:
    """What one step did to the two samples, and whether the rule is met after it."""

    index: int
    ratio: float  # deleted pairs' movement over observed pairs' (0: neither moved)
    excess: float  # how much faster the deleted pairs' mean score fell
    tail: float  # the excess still to come, projected (0 when the excess is noise)
    settled: bool


@dataclass
class Settling:
    """The rule applied step after step to one run (or one service cycle)."""

    rule: SettleRule = field(default_factory=SettleRule)
    steps: list[SettleStep] = field(default_factory=list)

    def step(
        self,
        changed: tuple[np.ndarray, np.ndarray],
        observed: tuple[np.ndarray, np.ndarray],
    ) -> SettleStep:
        """Record a step from the samples' scores (before, after); is the rule met?"""
        (cb, ca), (ob, oa) = changed, observed
        ratio = movement_ratio((cb, ca), (ob, oa))
        excess = _mean_fall(cb, ca) - _mean_fall(ob, oa)
        previous = self.steps[-1] if self.steps else None
        tail = 0.0
        if len(cb) and excess > self.rule.noise * _standard_error(ca - cb):
            if previous is None or previous.excess <= 0:
                tail = math.inf  # still falling, and no earlier step to project from
            else:
                shrink = min(max(excess / previous.excess, 0.0), _MAX_SHRINK)
                tail = excess * shrink / (1.0 - shrink)
        index = len(self.steps) + 1
        falling = previous is None or index <= self.rule.min_steps or ratio < previous.ratio
        scale = float(np.mean(np.abs(oa))) if len(oa) else 0.0
        settled = (
            index >= self.rule.min_steps
            and (ratio <= self.rule.ratio or not falling)
            and tail <= self.rule.tail * scale
        )
        record = SettleStep(index, ratio, excess, tail, settled)
        self.steps.append(record)
        return record


def movement_ratio(
    changed: tuple[np.ndarray, np.ndarray], observed: tuple[np.ndarray, np.ndarray]
) -> float:
    """How much a step moved the changed pairs' scores against how much it moved observed
    pairs': mean |after - before| of each, divided (0 when neither moved, inf when only
    the changed ones did)."""
    moved = float(np.mean(np.abs(changed[1] - changed[0]))) if len(changed[0]) else 0.0
    churn = float(np.mean(np.abs(observed[1] - observed[0]))) if len(observed[0]) else 0.0
    if moved == 0.0:
        return 0.0
    return moved / churn if churn > 0 else math.inf


def _mean_fall(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.mean(before) - np.mean(after)) if len(before) else 0.0


def _standard_error(differences: np.ndarray) -> float:
    if len(differences) < 2:
        return math.inf  # one pair: nothing to tell its movement from noise
    return float(np.std(differences, ddof=1) / math.sqrt(len(differences)))
