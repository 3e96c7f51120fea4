"""Seeded training from scratch: random small factors, then full ALS sweeps."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from unlearn_core.convergence import ScoreSample, relative_change
from unlearn_core.interactions import Interactions
from unlearn_core.loss import loss
from unlearn_core.model import FACTOR_DTYPE, FactorModel
from unlearn_core.params import Hyperparameters
from unlearn_core.report import SweepRecord, UpdateReport
from unlearn_core.sweep import Solver, SweepContext, default_solver

SweepCallback = Callable[[SweepRecord], None]


def initial_factors(
    n_users: int, n_items: int, params: Hyperparameters, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Small random factors; the scale keeps first scores near zero, as for unseen pairs."""
    rng = np.random.default_rng(seed)
    scale = 0.1 / np.sqrt(params.factors)
    users = rng.normal(0.0, scale, (n_users, params.factors)).astype(FACTOR_DTYPE)
    items = rng.normal(0.0, scale, (n_items, params.factors)).astype(FACTOR_DTYPE)
    return users, items


def train(
    data: Interactions,
    user_ids: object,
    item_ids: object,
    params: Hyperparameters,
    iterations: int = 15,
    seed: int = 0,
    solver: Solver | None = None,
    track_loss: bool = False,
    num_threads: int = 0,
    on_sweep: SweepCallback | None = None,
) -> tuple[FactorModel, UpdateReport]:
    """Train a model on all of `data` with `iterations` full sweeps."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    users, items = initial_factors(data.shape[0], data.shape[1], params, seed)
    context = SweepContext(data, params, solver or default_solver(params), num_threads)
    sample = ScoreSample.draw(data, seed=seed)
    report = UpdateReport(max_sweeps=iterations)
    for index in range(1, iterations + 1):
        before = sample.scores(users, items)
        started = time.perf_counter()
        context.sweep(users, items)
        seconds = time.perf_counter() - started
        record = SweepRecord(
            phase="sweep",
            index=index,
            residual=relative_change(before, sample.scores(users, items)),
            loss=loss(data, users, items, params) if track_loss else None,
            seconds=seconds,
            users_solved=data.shape[0],
            items_solved=data.shape[1],
        )
        report.records.append(record)
        if on_sweep is not None:
            on_sweep(record)
    model = FactorModel.create(user_ids, item_ids, users, items, params)
    return model, report
