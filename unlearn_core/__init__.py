"""unlearn_core: pure math for bi-linear recommenders and Unlearn-ALS.

Arrays in, arrays out: no files, no network, no Kafka or Redis.
"""

from unlearn_core.convergence import ScoreSample, relative_change
from unlearn_core.interactions import Change, ChangeSummary, Interactions, apply_change
from unlearn_core.loss import loss
from unlearn_core.model import FactorModel, NonFiniteFactorsError, pair_scores
from unlearn_core.params import KINDS, Hyperparameters, Kind
from unlearn_core.report import SweepRecord, UpdateReport
from unlearn_core.solve import SingularSystemError, gramian, solve_rows
from unlearn_core.sweep import SOLVERS, Solver, SweepContext
from unlearn_core.train import train
from unlearn_core.unlearn import SweepPolicy, fold_in, forget, update

__all__ = [
    "KINDS",
    "SOLVERS",
    "Change",
    "ChangeSummary",
    "FactorModel",
    "Hyperparameters",
    "Interactions",
    "Kind",
    "NonFiniteFactorsError",
    "ScoreSample",
    "SingularSystemError",
    "Solver",
    "SweepContext",
    "SweepPolicy",
    "SweepRecord",
    "UpdateReport",
    "apply_change",
    "fold_in",
    "forget",
    "gramian",
    "loss",
    "pair_scores",
    "relative_change",
    "solve_rows",
    "train",
    "update",
]
