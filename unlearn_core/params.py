"""Hyperparameters of a bi-linear model, shared by training, unlearning and model files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Kind = Literal["implicit", "explicit"]
KINDS: tuple[Kind, ...] = ("implicit", "explicit")

# Defaults that give sensible models on MovieLens-sized data. ALS-WR multiplies the
# regularisation by each row's interaction count, so it wants a much smaller constant.
DEFAULT_REGULARIZATION: dict[Kind, float] = {"implicit": 1.0, "explicit": 0.1}


@dataclass(frozen=True)
class Hyperparameters:
    """What defines the objective: the model kind, its rank and its constants.

    implicit: Hu-Koren-Volinsky. p = 1 where weight w > 0, confidence c = 1 + alpha * w,
        unobserved pairs have c = 1 and p = 0; loss over all pairs + reg * (|X|^2 + |Y|^2).
    explicit: ALS-WR. Squared error on observed ratings
        + reg * (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2).
    """

    kind: Kind = "implicit"
    factors: int = 64
    regularization: float = DEFAULT_REGULARIZATION["implicit"]
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.factors, int) or self.factors < 1:
            raise ValueError(f"factors must be a positive integer, got {self.factors!r}")
        if not (math.isfinite(self.regularization) and self.regularization > 0):
            raise ValueError(f"regularization must be finite and > 0, got {self.regularization!r}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {self.alpha!r}")

    @classmethod
    def for_kind(
        cls,
        kind: Kind,
        factors: int = 64,
        regularization: float | None = None,
        alpha: float = 1.0,
    ) -> Hyperparameters:
        """Hyperparameters with the kind's default regularisation where none is given."""
        reg = DEFAULT_REGULARIZATION.get(kind, 1.0) if regularization is None else regularization
        return cls(kind=kind, factors=factors, regularization=float(reg), alpha=float(alpha))
