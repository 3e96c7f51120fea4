"""Offline commands on files: `unlearn train` and `unlearn forget`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from consumer.errors import InputError
from consumer.model_file import load_model, save_model, write_text_atomically
from consumer.tsv import DeletionRows, InteractionRows, read_deletions, read_interactions
from unlearn_core import Change, Hyperparameters, Interactions, SweepPolicy, forget
from unlearn_core.convergence import DEFAULT_TOP_N
from unlearn_core.ids import IdIndex
from unlearn_core.params import KINDS
from unlearn_core.sweep import SOLVERS
from unlearn_core.train import train
from unlearn_core.unlearn import (
    DEFAULT_MAX_SWEEPS,
    DEFAULT_RANK_TOLERANCE,
    DEFAULT_SETTLE_RATIO,
    DEFAULT_SETTLE_TAIL,
    DEFAULT_TOLERANCE,
)


def register(commands: argparse._SubParsersAction) -> None:
    train_cmd = commands.add_parser(
        "train",
        help="train a model from scratch on an interactions file",
        description="Seeded ALS training from scratch. Ids are opaque strings.",
    )
    train_cmd.add_argument("--interactions", required=True, metavar="FILE")
    train_cmd.add_argument("--out", required=True, metavar="MODEL.npz")
    train_cmd.add_argument("--kind", choices=KINDS, default="implicit")
    train_cmd.add_argument("--factors", type=int, default=64)
    train_cmd.add_argument(
        "--regularization",
        type=float,
        default=None,
        metavar="R",
        help="default: 1.0 for implicit, 0.1 for explicit (ALS-WR scales it by row counts)",
    )
    train_cmd.add_argument("--alpha", type=float, default=1.0, metavar="A")
    train_cmd.add_argument("--iterations", type=int, default=15)
    train_cmd.add_argument("--seed", type=int, default=0)
    _add_solver_flags(train_cmd)
    train_cmd.set_defaults(handler=run_train)

    forget_cmd = commands.add_parser(
        "forget",
        help="remove deletions from a trained model with Unlearn-ALS",
        description=(
            "Remove the deleted pairs, users' or items' histories from the data so they count "
            "as never observed, re-solve the touched rows exactly, then continue ALS from the "
            "model's factors until the scores settle. Uses the model's own hyperparameters."
        ),
    )
    forget_cmd.add_argument("--model", required=True, metavar="MODEL.npz")
    forget_cmd.add_argument("--interactions", required=True, metavar="FILE")
    forget_cmd.add_argument("--deletions", required=True, metavar="FILE")
    forget_cmd.add_argument("--out", required=True, metavar="NEW.npz")
    forget_cmd.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="T",
        help="stop once a sweep changes sampled scores by less than this (relative)",
    )
    forget_cmd.add_argument(
        "--rank-tolerance",
        type=float,
        default=0.0,
        metavar="R",
        help="also stop once a sweep changes fewer than this fraction of sampled users' "
        f"top-N slots, or no fewer than the sweep before (e.g. {DEFAULT_RANK_TOLERANCE}); "
        "0 (the default): off",
    )
    forget_cmd.add_argument(
        "--settle-ratio",
        type=float,
        default=DEFAULT_SETTLE_RATIO,
        metavar="S",
        help="stop once a sweep (from the second) moves the deleted pairs' scores at most S "
        "times as much as observed pairs', or no less relative to them than the sweep "
        f"before (default {DEFAULT_SETTLE_RATIO}), and the settle tail is met; 0: off",
    )
    forget_cmd.add_argument(
        "--settle-tail",
        type=float,
        default=DEFAULT_SETTLE_TAIL,
        metavar="F",
        help="... and the deleted pairs' excess fall still to come, projected from the last "
        "two sweeps, is at most F of the observed pairs' mean |score| "
        f"(default {DEFAULT_SETTLE_TAIL})",
    )
    forget_cmd.add_argument(
        "--track-loss",
        action="store_true",
        help="evaluate the objective after every step for the report (on MovieLens-1M it "
        "costs more than a sweep)",
    )
    forget_cmd.add_argument("--top-n", type=int, default=DEFAULT_TOP_N, metavar="N")
    forget_cmd.add_argument("--max-sweeps", type=int, default=DEFAULT_MAX_SWEEPS, metavar="N")
    forget_cmd.add_argument("--report", metavar="REPORT.json")
    _add_solver_flags(forget_cmd)
    forget_cmd.set_defaults(handler=run_forget)


def _add_solver_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default=None,
        help="full-sweep solver (default: cg for implicit, cholesky for explicit)",
    )
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")


def run_train(args: argparse.Namespace) -> int:
    try:
        params = Hyperparameters.for_kind(args.kind, args.factors, args.regularization, args.alpha)
    except ValueError as exc:
        raise InputError("command line", str(exc)) from exc
    if args.iterations < 0:
        raise InputError("command line", "--iterations must be >= 0")
    started = time.perf_counter()
    rows = read_interactions(args.interactions, params.kind)
    if not len(rows.users):
        raise InputError(args.interactions, "no interactions: nothing to train on")
    users, items = IdIndex(), IdIndex()
    data = _interactions(rows, users, items, params)
    _say(f"read {len(rows.users)} interactions: {data.shape[0]} users x {data.shape[1]} items")
    with tqdm(total=args.iterations, desc="train", unit="sweep", disable=None) as bar:
        model, report = train(
            data,
            users.ids,
            items.ids,
            params,
            iterations=args.iterations,
            seed=args.seed,
            solver=args.solver,
            track_loss=True,
            num_threads=args.threads,
            on_sweep=lambda record: (bar.update(1), bar.set_postfix(loss=f"{record.loss:.6g}")),
        )
    save_model(model, args.out)
    summary = {
        "model": args.out,
        "users": data.shape[0],
        "items": data.shape[1],
        "interactions": data.nnz,
        "params": vars(params),
        "iterations": args.iterations,
        "final_loss": report.final_loss,
        "final_residual": report.final_residual,
        "sweep_seconds": report.total_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary))
    return 0


def run_forget(args: argparse.Namespace) -> int:
    if args.max_sweeps < 0 or not args.tolerance >= 0:
        raise InputError("command line", "--max-sweeps and --tolerance must be >= 0")
    stages = _Stages()
    model = load_model(args.model)
    rows = read_interactions(args.interactions, model.params.kind)
    deletions = read_deletions(args.deletions)
    stages.end("read")
    users, items = IdIndex(model.user_ids.tolist()), IdIndex(model.item_ids.tolist())
    data = _interactions(rows, users, items, model.params)
    new_users, new_items = len(users) - model.shape[0], len(items) - model.shape[1]
    if new_users or new_items:
        _say(
            f"warning: {new_users} users and {new_items} items of {args.interactions} are not "
            "in the model; they start from zero factors"
        )
        model = model.with_ids(users.ids[model.shape[0] :], items.ids[model.shape[1] :])
    change, unknown = _deletion_change(deletions, users, items)
    if not 0 <= args.rank_tolerance <= 1 or args.top_n < 1:
        raise InputError("command line", "--rank-tolerance must be in [0, 1], --top-n >= 1")
    if args.settle_ratio and not args.settle_ratio >= 1:
        raise InputError("command line", "--settle-ratio must be >= 1 (or 0: off)")
    if not args.settle_tail >= 0:
        raise InputError("command line", "--settle-tail must be >= 0")
    policy = SweepPolicy(
        tolerance=args.tolerance,
        rank_tolerance=args.rank_tolerance or None,
        settle_ratio=args.settle_ratio or None,
        settle_tail=args.settle_tail,
        track_loss=args.track_loss,
        top_n=args.top_n,
        max_sweeps=args.max_sweeps,
        solver=args.solver,
        num_threads=args.threads,
    )
    stages.end("index")
    new_model, _, report = forget(model, data, change, policy)
    stages.end("forget")
    save_model(new_model, args.out)
    stages.end("write")
    result: dict[str, Any] = {
        "model": args.model,
        "out": args.out,
        "deletion_lines": deletions.lines,
        "unknown_ids": unknown,
        **report.to_dict(),
        "wall_seconds": stages.total(),
        "stage_seconds": stages.seconds,
    }
    if args.report:
        write_text_atomically(args.report, json.dumps(result, indent=2) + "\n")
    _say(
        f"forgot {report.removed} interactions ({report.pairs_not_found} pairs, "
        f"{report.users_not_found} users, {report.items_not_found} items not found; "
        f"{sum(unknown.values())} ids unknown to the model); touched re-solve "
        f"{report.touched_users} users + {report.touched_items} items in "
        f"{report.touched_seconds * 1e3:.1f} ms; {report.sweeps} sweeps, residual "
        f"{report.final_residual if report.final_residual is not None else 0:.2e}, "
        f"converged={report.converged}"
    )
    print(json.dumps({k: v for k, v in result.items() if k != "records"}))
    return 0


def interactions_from_rows(
    rows: InteractionRows, users: IdIndex, items: IdIndex, params: Hyperparameters
) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """The file's events as data, and each event's user and item index."""
    u = rows.user_column.indices(users)
    i = rows.item_column.indices(items)
    shape = (len(users), len(items))
    return Interactions.from_triples(u, i, rows.weights, shape, params.kind), u, i


def _interactions(
    rows: InteractionRows, users: IdIndex, items: IdIndex, params: Hyperparameters
) -> Interactions:
    return interactions_from_rows(rows, users, items, params)[0]


def _deletion_change(
    rows: DeletionRows, users: IdIndex, items: IdIndex
) -> tuple[Change, dict[str, int]]:
    """Indices of the deletions; ids the model never saw are counted, not errors."""
    pair_u, pair_i = users.lookup(rows.pair_users), items.lookup(rows.pair_items)
    whole_u, whole_i = users.lookup(rows.users), items.lookup(rows.items)
    known_pairs = (pair_u >= 0) & (pair_i >= 0)
    unknown = {
        "pairs": int(np.count_nonzero(~known_pairs)),
        "users": int(np.count_nonzero(whole_u < 0)),
        "items": int(np.count_nonzero(whole_i < 0)),
    }
    change = Change.deletions(
        pair_u[known_pairs], pair_i[known_pairs], whole_u[whole_u >= 0], whole_i[whole_i >= 0]
    )
    return change, unknown


class _Stages:
    """Where a command's time went: each stage from the end of the one before."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def end(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 4)
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
