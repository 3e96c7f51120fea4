"""What a run of ALS did, sweep by sweep: the evidence a caller can keep or publish."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Phase = Literal["touched", "sweep"]


@dataclass(frozen=True)
class SweepRecord:
    """One step: the exact re-solve of touched rows, or one full sweep."""

    phase: Phase
    index: int  # 0 for the touched re-solve, then 1, 2, ... for sweeps
    residual: float  # relative change of the sampled scores caused by this step
    loss: float | None  # objective after the step (None when not tracked)
    seconds: float  # wall time of the solves (loss evaluation excluded)
    users_solved: int
    items_solved: int
    # Fraction of the sampled users' top-N slots this sweep changed (None: not tracked).
    top_n_change: float | None = None
    # The changed pairs' score movement over the observed pairs' (None: not tracked), and
    # their excess fall still to come as the settle rule projects it (None: unbounded yet).
    settle_ratio: float | None = None
    settle_tail: float | None = None


@dataclass
class UpdateReport:
    """The per-sweep trail of one Unlearn-ALS (or fold-in) run."""

    removed: int = 0
    added: int = 0
    pairs_not_found: int = 0
    users_not_found: int = 0
    items_not_found: int = 0
    touched_users: int = 0
    touched_items: int = 0
    tolerance: float = 0.0
    rank_tolerance: float | None = None
    settle_ratio: float | None = None
    settle_tail: float | None = None
    max_sweeps: int = 0
    apply_seconds: float = 0.0  # updating the interaction data (before any solve)
    converged: bool = False
    initial_loss: float | None = None
    records: list[SweepRecord] = field(default_factory=list)

    @property
    def sweeps(self) -> int:
        return sum(1 for r in self.records if r.phase == "sweep")

    @property
    def touched_seconds(self) -> float:
        return sum(r.seconds for r in self.records if r.phase == "touched")

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    @property
    def final_residual(self) -> float | None:
        return self.records[-1].residual if self.records else None

    @property
    def final_loss(self) -> float | None:
        return self.records[-1].loss if self.records else self.initial_loss

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            sweeps=self.sweeps,
            touched_seconds=self.touched_seconds,
            total_seconds=self.total_seconds,
            final_residual=self.final_residual,
            final_loss=self.final_loss,
        )
        return out
