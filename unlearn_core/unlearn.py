"""Unlearn-ALS: forget (or learn) a change, then continue ALS from the current factors.

Removed pairs count as never observed, so the objective minimised afterwards is exactly
the objective of retraining on the remaining data; warm-starting from the trained factors
is what makes it fast. Learning new interactions is the same operation with the opposite
sign: the data changes, the touched rows are re-solved exactly, sweeps propagate the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from unlearn_core.convergence import (
    DEFAULT_RANK_SAMPLE,
    DEFAULT_SAMPLE_SIZE,
    DEFAULT_TOP_N,
    ScoreSample,
    TopNSample,
    relative_change,
    top_n_change,
)
from unlearn_core.interactions import Change, Interactions, apply_change
from unlearn_core.loss import loss
from unlearn_core.model import FactorModel, NonFiniteFactorsError
from unlearn_core.report import SweepRecord, UpdateReport
from unlearn_core.settle import (
    DEFAULT_RATIO,
    DEFAULT_TAIL,
    MIN_STEPS,
    SettleRule,
    SettleStep,
    Settling,
)
from unlearn_core.solve import gramian
from unlearn_core.sweep import TOUCHED_CG_STEPS, Solver, SweepContext, default_solver

DEFAULT_TOLERANCE = 1e-5
# The list rule (off by default): a sweep that changes fewer than this fraction of the
# sampled users' top-N slots no longer changes what users see. Not the default: on
# MovieLens-100K with 1 % of pairs deleted it stops after 4 sweeps while the deleted pairs'
# mean score is still above every retrain's (docs/benchmarks.md); 20 sweeps are not.
DEFAULT_RANK_TOLERANCE = 0.01
# The settle rule (the default, unlearn_core/settle.py) ends a run within a few sweeps for
# small deletions and after about 40 for 5 % of the pairs; the cap is above both.
DEFAULT_MAX_SWEEPS = 60
DEFAULT_SETTLE_RATIO = DEFAULT_RATIO
DEFAULT_SETTLE_TAIL = DEFAULT_TAIL
SETTLE_MIN_SWEEPS = MIN_STEPS


@dataclass(frozen=True)
class SweepPolicy:
    """When to stop sweeping, and how to sweep."""

    tolerance: float = DEFAULT_TOLERANCE  # stop once a sweep changes scores by less
    # ... or once it changes fewer than this fraction of the sampled top-N slots (None: off)
    rank_tolerance: float | None = None
    top_n: int = DEFAULT_TOP_N
    rank_sample: int = DEFAULT_RANK_SAMPLE
    # ... or once the changed pairs settle: a sweep moves them at most this many times as
    # much as observed pairs (None: off; a run of exactly max_sweeps sweeps)
    settle_ratio: float | None = DEFAULT_SETTLE_RATIO
    # ... and the deleted pairs' projected excess fall still to come is at most this share
    # of the observed pairs' mean |score| (settle.py)
    settle_tail: float = DEFAULT_SETTLE_TAIL
    max_sweeps: int = DEFAULT_MAX_SWEEPS  # full sweeps after the touched re-solve
    solver: Solver | None = None  # None: the fastest for the model kind
    track_loss: bool = True  # evaluate the objective after every step
    sample_size: int = DEFAULT_SAMPLE_SIZE
    sample_seed: int = 0
    num_threads: int = 0

    def __post_init__(self) -> None:
        if not (self.tolerance >= 0):
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance!r}")
        if self.max_sweeps < 0:
            raise ValueError(f"max_sweeps must be >= 0, got {self.max_sweeps!r}")
        if self.rank_tolerance is not None and not (0 <= self.rank_tolerance <= 1):
            raise ValueError(f"rank_tolerance must be in [0, 1], got {self.rank_tolerance!r}")
        if self.settle_ratio is not None and not self.settle_ratio >= 1:
            raise ValueError(f"settle_ratio must be >= 1, got {self.settle_ratio!r}")
        if not self.settle_tail >= 0:
            raise ValueError(f"settle_tail must be >= 0, got {self.settle_tail!r}")
        if self.top_n < 1 or self.rank_sample < 1:
            raise ValueError("top_n and rank_sample must be >= 1")


def update(
    model: FactorModel,
    data: Interactions,
    change: Change,
    policy: SweepPolicy = SweepPolicy(),
) -> tuple[FactorModel, Interactions, UpdateReport]:
    """Apply a change to the data and bring the model to the new objective.

    The model and the data must index the same users and items; indices the change names
    beyond them must already exist in the model (see FactorModel.with_ids). A change that
    alters nothing returns the model unchanged and runs no sweep.
    """
    if data.shape[0] > model.shape[0] or data.shape[1] > model.shape[1]:
        raise ValueError(f"data {data.shape} has rows the model {model.shape} lacks")
    max_user, max_item = change.max_indices()
    if max_user >= model.shape[0] or max_item >= model.shape[1]:
        raise ValueError("the change names users or items the model does not have")
    data = data.resized(model.shape)
    started = time.perf_counter()
    new_data, summary = apply_change(data, change, model.params.kind)
    new_data.by_item  # noqa: B018 - build the item-major copy here, not inside a timed solve
    apply_seconds = time.perf_counter() - started
    touched_users, touched_items = summary.touched_users, summary.touched_items  # np.unique once
    report = UpdateReport(
        removed=summary.removed,
        added=summary.added,
        pairs_not_found=summary.pairs_not_found,
        users_not_found=summary.users_not_found,
        items_not_found=summary.items_not_found,
        touched_users=len(touched_users),
        touched_items=len(touched_items),
        tolerance=policy.tolerance,
        rank_tolerance=policy.rank_tolerance,
        settle_ratio=policy.settle_ratio,
        settle_tail=policy.settle_tail if policy.settle_ratio is not None else None,
        max_sweeps=policy.max_sweeps,
        apply_seconds=apply_seconds,
    )
    if summary.removed == 0 and summary.added == 0:
        report.converged = True
        return model, new_data, report

    users = model.user_factors.copy()
    items = model.item_factors.copy()
    reseed_collapsed_directions(users, items, seed=policy.sample_seed)
    changed = ScoreSample.of_pairs(
        summary.changed_users, summary.changed_items, policy.sample_size, policy.sample_seed
    )
    run = _Run(new_data, model, policy, report, changed, summary.changed_users)
    run.touched(users, items, touched_users, touched_items)
    run.sweeps(users, items)
    return model.with_factors(users, items), new_data, report


def forget(
    model: FactorModel,
    data: Interactions,
    deletions: Change,
    policy: SweepPolicy = SweepPolicy(),
) -> tuple[FactorModel, Interactions, UpdateReport]:
    """Unlearn-ALS: remove the deletions (pairs, users' or items' histories) and re-converge."""
    if len(deletions.add_users):
        raise ValueError("forget takes deletions only; use update() to mix in additions")
    return update(model, data, deletions, policy)


def fold_in(
    model: FactorModel,
    data: Interactions,
    additions: Change,
    policy: SweepPolicy = SweepPolicy(),
) -> tuple[FactorModel, Interactions, UpdateReport]:
    """Learn new interactions through the same machinery."""
    if (
        len(additions.remove_pair_users)
        or len(additions.remove_users)
        or len(additions.remove_items)
    ):
        raise ValueError("fold_in takes additions only; use update() to mix in removals")
    return update(model, data, additions, policy)


# A direction whose share of the factors' energy is below this has collapsed to zero.
_COLLAPSED = 1e-10
_RESEED_SCALE = 1e-3


def reseed_collapsed_directions(users: np.ndarray, items: np.ndarray, seed: int = 0) -> int:
    """Give latent directions that collapsed to zero a small random start, in place.

    A direction in which all user and item factors are zero is a fixed point of ALS: every
    solve keeps it zero, whatever the data says. Heavy deletions under strong
    regularisation can collapse one, and a model that has no data yet (cold start) is all
    collapsed. Seeding only the item side lets the next user solve grow the direction if
    the data supports it, and changes no score by more than the seed's square.
    Returns how many directions were seeded.
    """
    energy = gramian(users) + gramian(items)
    eigenvalues, eigenvectors = np.linalg.eigh(energy)
    collapsed = eigenvalues <= _COLLAPSED * max(float(eigenvalues[-1]), 1.0)
    n = int(collapsed.sum())
    if n and len(items):
        k = users.shape[1]
        noise = np.random.default_rng(seed).normal(0.0, _RESEED_SCALE / np.sqrt(k), (len(items), n))
        items += (noise @ eigenvectors[:, collapsed].T).astype(items.dtype)
    return n


class _Run:
    """One run of the touched re-solve and the sweeps, recording each step."""

    def __init__(
        self,
        data: Interactions,
        model: FactorModel,
        policy: SweepPolicy,
        report: UpdateReport,
        changed: ScoreSample,
        changed_users: np.ndarray,
    ) -> None:
        self.data = data
        self.params = model.params
        self.policy = policy
        self.report = report
        # The residual watches the whole model and, separately, the pairs that changed:
        # a small change barely moves global scores, but its own pairs must settle too.
        self.samples = (ScoreSample.draw(data, policy.sample_size, policy.sample_seed), changed)
        # What users would see: the touched users' lists first, they move most.
        self.lists = None
        if policy.rank_tolerance is not None:
            self.lists = TopNSample.draw(
                data, policy.rank_sample, policy.top_n, policy.sample_seed, changed_users
            )
        self.settling = None
        if policy.settle_ratio is not None:
            self.settling = Settling(SettleRule(policy.settle_ratio, policy.settle_tail))
        self.context = SweepContext(
            data, model.params, policy.solver or default_solver(model.params), policy.num_threads
        )
        if policy.track_loss:
            report.initial_loss = loss(data, model.user_factors, model.item_factors, self.params)

    def touched(
        self,
        users: np.ndarray,
        items: np.ndarray,
        touched_users: np.ndarray,
        touched_items: np.ndarray,
    ) -> None:
        """Re-solves of the rows whose data changed, users first, then items: exact
        (Cholesky), or CG to float32 precision (sweep.TOUCHED_CG_STEPS)."""
        before = self._scores(users, items)
        started = time.perf_counter()
        # Alone (no sweep follows) the touched step is the whole update: solved to float32
        # precision. Before sweeps, half the CG steps: the sweeps carry it the rest of the
        # way, and on MovieLens-1M it saves a third of the run at the same end scores.
        steps = TOUCHED_CG_STEPS if self.policy.max_sweeps == 0 else TOUCHED_CG_STEPS // 2
        self.context.solve_some("user", touched_users, users, items, steps)
        self.context.solve_some("item", touched_items, users, items, steps)
        seconds = time.perf_counter() - started
        self._record("touched", 0, before, users, items, seconds, touched_users, touched_items)

    def sweeps(self, users: np.ndarray, items: np.ndarray) -> None:
        shown = self.lists.top(users, items) if self.lists is not None else None
        previous: float | None = None
        for index in range(1, self.policy.max_sweeps + 1):
            before = self._scores(users, items)
            started = time.perf_counter()
            self.context.sweep(users, items)
            seconds = time.perf_counter() - started
            n_users, n_items = self.data.shape
            change = None
            if self.lists is not None:
                now = self.lists.top(users, items)
                change, shown = top_n_change(shown, now), now
            after = self._scores(users, items)
            settle = self._settle(before, after)
            residual = self._record(
                "sweep", index, before, users, items, seconds, n_users, n_items, change,
                after, settle,
            )  # fmt: skip
            if (
                residual <= self.policy.tolerance
                or self._lists_settled(change, previous)
                or (settle is not None and settle.settled)
            ):
                self.report.converged = True
                return
            previous = change

    def _settle(self, before: list[np.ndarray], after: list[np.ndarray]) -> SettleStep | None:
        """The settle rule after a sweep: the changed pairs against observed pairs."""
        if self.settling is None:
            return None
        observed = self.samples[0].observed
        return self.settling.step(
            (before[1], after[1]), (before[0][:observed], after[0][:observed])
        )

    def _lists_settled(self, change: float | None, previous: float | None) -> bool:
        """What users see has stopped moving: a sweep changed fewer top-N slots than the
        tolerance, or no fewer than the sweep before (what is left is ALS's own churn
        among near-tied items, which a sweep of an unchanged model shows as well)."""
        if change is None or self.policy.rank_tolerance is None:
            return False
        return change <= self.policy.rank_tolerance or (previous is not None and change >= previous)

    def _scores(self, users: np.ndarray, items: np.ndarray) -> list[np.ndarray]:
        return [sample.scores(users, items) for sample in self.samples]

    def _record(
        self,
        phase: str,
        index: int,
        before: list[np.ndarray],
        users: np.ndarray,
        items: np.ndarray,
        seconds: float,
        solved_users: np.ndarray | int,
        solved_items: np.ndarray | int,
        top_n_change: float | None = None,
        after: list[np.ndarray] | None = None,
        settle: SettleStep | None = None,
    ) -> float:
        if not (np.all(np.isfinite(users)) and np.all(np.isfinite(items))):
            raise NonFiniteFactorsError(f"factors became NaN or infinite in {phase} {index}")
        after = after if after is not None else self._scores(users, items)
        residual = max(relative_change(b, a) for b, a in zip(before, after, strict=True))
        self.report.records.append(
            SweepRecord(
                phase=phase,  # type: ignore[arg-type]
                index=index,
                residual=residual,
                loss=loss(self.data, users, items, self.params) if self.policy.track_loss else None,
                seconds=seconds,
                users_solved=_count(solved_users),
                items_solved=_count(solved_items),
                top_n_change=top_n_change,
                settle_ratio=settle.ratio if settle is not None else None,
                settle_tail=_finite(settle.tail) if settle is not None else None,
            )
        )
        return residual


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _count(rows: np.ndarray | int) -> int:
    return rows if isinstance(rows, int) else len(rows)
