"""Which rows a forgetting cycle re-solves: those whose inputs moved, and only while they
move by more than a tolerance.

A row's exact solve reads its neighbours' factors, each weighted by its pair's confidence
(implicit: c = 1 + alpha w; explicit: 1). When a neighbour r of row j moves by |dy_r|,
j's inputs moved by c_rj |dy_r|: that is j's *pressure*. Its *mass* is what all its
inputs weigh, sum over its pairs of c_rj |y_r|. Pressure over mass is the share of the
row's confidence-weighted inputs that moved since its last solve; a cycle re-solves a
row once that share exceeds the tolerance, and a re-solved row presses on its own
neighbours in turn. The cycle's cost thus follows the deletions' reach: rows nothing
reached are never read.

Arrays in, arrays out: the service keeps one `Pressure` per owner (consumer/consolidation).
"""

from __future__ import annotations

import numpy as np

from unlearn_core.params import Hyperparameters

SIDES = ("user", "item")


def other_side(side: str) -> str:
    return "item" if side == "user" else "user"


def confidences(weights: np.ndarray, params: Hyperparameters) -> np.ndarray:
    """How much each pair weighs in its rows' solves (the Gramian's per-pair weight)."""
    weights = np.asarray(weights, dtype=np.float64)
    if params.kind == "implicit":
        return np.where(weights > 0, 1.0 + params.alpha * weights, 1.0)
    return np.ones_like(weights)


class Pressure:
    """Per side, every row's pressure (inputs moved since its last solve) and, once known,
    its mass (its inputs' weight). Dense arrays: 8 bytes a row and side."""

    def __init__(self) -> None:
        self.pressure = {side: np.zeros(0) for side in SIDES}
        self.mass = {side: np.zeros(0) for side in SIDES}  # NaN: not known yet

    def _grow(self, side: str, size: int) -> None:
        current = len(self.pressure[side])
        if size > current:
            size = max(size, 2 * current)
            self.pressure[side] = np.concatenate([self.pressure[side], np.zeros(size - current)])
            self.mass[side] = np.concatenate([self.mass[side], np.full(size - current, np.nan)])

    def push(
        self,
        side: str,
        movements: np.ndarray,
        lengths: np.ndarray,
        neighbours: np.ndarray,
        confidence: np.ndarray,
    ) -> None:
        """Rows of `side` moved by `movements` (|new - old|); row n's neighbours are the
        next `lengths[n]` entries of `neighbours` (indices of the other side), each with
        its pair's confidence. Each neighbour's pressure grows by c |movement|."""
        other = other_side(side)
        neighbours = np.asarray(neighbours, dtype=np.int64)
        if not len(neighbours):
            return
        self._grow(other, int(neighbours.max()) + 1)
        amounts = np.repeat(np.asarray(movements, dtype=np.float64), lengths) * confidence
        np.add.at(self.pressure[other], neighbours, amounts)

    def pressed(self, side: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows of `side` (among `rows`, if given) with any pressure, most pressed first."""
        values = self.pressure[side]
        if rows is None:
            found = np.flatnonzero(values > 0)
        else:
            rows = rows[rows < len(values)]
            found = rows[values[rows] > 0]
        return found[np.argsort(-values[found], kind="stable")]

    def over(self, side: str, rows: np.ndarray, tolerance: float) -> np.ndarray:
        """Which of these rows may be over the tolerance: their mass unknown, or their
        pressure above tolerance x mass."""
        self._grow(side, int(rows.max(initial=-1)) + 1)
        mass = self.mass[side][rows]
        return np.isnan(mass) | (self.pressure[side][rows] > tolerance * mass)

    def know_mass(self, side: str, rows: np.ndarray, mass: np.ndarray) -> None:
        self._grow(side, int(rows.max(initial=-1)) + 1)
        self.mass[side][rows] = mass

    def ratio(self, side: str, rows: np.ndarray) -> np.ndarray:
        """Pressure over mass (inf for a row with pressure and no mass: no data)."""
        self._grow(side, int(rows.max(initial=-1)) + 1)
        pressure, mass = self.pressure[side][rows], self.mass[side][rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(mass > 0, pressure / mass, np.where(pressure > 0, np.inf, 0.0))

    def relieve(self, side: str, rows: np.ndarray) -> None:
        """These rows were re-solved: their inputs are as their solve saw them."""
        self._grow(side, int(rows.max(initial=-1)) + 1)
        self.pressure[side][rows] = 0.0

    def total(self, side: str, rows: np.ndarray | None = None) -> int:
        """How many rows (of these) have any pressure."""
        return len(self.pressed(side, rows))

    def clear(self) -> None:
        for side in SIDES:
            self.pressure[side][:] = 0.0


def row_mass(
    lengths: np.ndarray, neighbours: np.ndarray, confidence: np.ndarray, other: np.ndarray
) -> np.ndarray:
    """Each row's mass: sum over its pairs of c |y_neighbour| (rows as in `Pressure.push`)."""
    norms = np.linalg.norm(other[np.asarray(neighbours, dtype=np.int64)], axis=1) * confidence
    owners = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(owners, weights=norms, minlength=len(lengths))
