"""`unlearn verify`: proof on demand (consumer/verification.py), as a JSON report and a PNG."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from consumer.cli.service import connect, settings_flags, settings_from
from consumer.errors import InputError
from consumer.model_file import load_model
from consumer.state.bootstrap import export
from consumer.state.inspection import stored_interactions
from consumer.state.store import ModelState
from consumer.tsv import read_deletions, read_interactions
from consumer.verification import (
    SMALL_SAMPLE,
    pairs_of,
    plot,
    sample_receipts,
    truth,
    verify,
)
from unlearn_core import FactorModel
from unlearn_core.retrain_check import HeldOut


def register(commands: argparse._SubParsersAction) -> None:
    cmd = commands.add_parser(
        "verify",
        help="a report that deletions left the model: truth, retraining, attack, utility",
        description="Judge the namespace's model on a set of deletions against retrains "
        "from scratch on its current data; write a JSON report and a PNG. Exit status 0 "
        "when the verdict is pass, 1 when it is fail, 2 when it could not judge.",
    )
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--deletions", metavar="FILE",
                       help="pairs to judge: user<TAB>item per line")  # fmt: skip
    which.add_argument("--sample", type=int, default=200, metavar="N",
                       help="receipts drawn from the audit trail (default 200)")  # fmt: skip
    cmd.add_argument("--report", required=True, metavar="JSON")
    cmd.add_argument("--plot", metavar="PNG", help="default: the report's name with .png")
    cmd.add_argument(
        "--before",
        metavar="MODEL.npz",
        help="the model before the deletions (unlearn export), for its scores",
    )
    cmd.add_argument("--held-out", metavar="FILE",
                     help="interactions the model never saw (user<TAB>item<TAB>weight), "
                     "for held-out recall@20 and AUC")  # fmt: skip
    cmd.add_argument(
        "--retrain",
        choices=("implicit", "unlearn"),
        default=None,
        help="who fits the retrains (default: implicit for implicit feedback)",
    )
    cmd.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="retrains' ALS iterations (default: as many as make them as converged as the "
        "model judged, the report says how many)",
    )
    cmd.add_argument("--seeds", type=int, default=3, help="retrains, one seed each")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the receipt sample")
    settings_flags(cmd)
    cmd.set_defaults(handler=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    if args.deletions is None and args.sample < 1:
        raise InputError("command line", "--sample must be >= 1")
    if args.seeds < 1 or (args.iterations is not None and args.iterations < 1):
        raise InputError("command line", "--seeds and --iterations must be >= 1")
    for path in (args.report, args.plot):
        if path and not Path(path).resolve().parent.is_dir():
            raise InputError(path, "cannot be written: its directory does not exist")
    state = connect(settings_from(args))
    before = load_model(args.before) if args.before else None
    report = verify_namespace(
        state, args.report, args.plot, deletions=args.deletions, sample=args.sample,
        before=before, held_out=args.held_out, method=args.retrain,
        iterations=args.iterations, seeds=args.seeds, seed=args.seed,
    )  # fmt: skip
    print(json.dumps({"report": args.report, "plot": report["plot"],
                      "verdict": report["verdict"], "checks": report["checks"]}))  # fmt: skip
    for warning in report["warnings"]:
        print(f"unlearn: warning: {warning}", file=sys.stderr)
    return 0 if report["verdict"] == "pass" else 1


def verify_namespace(
    state: ModelState,
    report_path: str,
    plot_path: str | None = None,
    deletions: str | None = None,
    sample: int = 200,
    before: FactorModel | None = None,
    held_out: str | None = None,
    method: str | None = None,
    iterations: int | None = None,
    seeds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole report for a namespace, written to `report_path` (and the plot)."""
    started = time.time()
    meta = state.meta()
    now, current = export(state)
    stored = {(u, i): float(ts) for u, i, _, ts in stored_interactions(state)}
    if deletions is not None:
        rows = read_deletions(deletions)
        if rows.users or rows.items:
            raise InputError(deletions, "verify judges pairs: user<TAB>item, no '*'")
        users, items, receipts = rows.pair_users, rows.pair_items, []
        source = {"file": deletions}
    else:
        # Retention's pass summaries are in the trail too; a request's receipts are judged.
        trail = [r for r in state.read_receipts(meta.shards) if r["scope"] != "retention"]
        receipts = sample_receipts(trail, sample, seed)
        pairs = [r for r in receipts if r["scope"] == "pair"]
        users, items = [r["user"] for r in pairs], [r["item"] for r in pairs]
        source = {"receipts_in_trail": len(trail), "sample": sample, "seed": seed,
                  "scopes": {s: sum(r["scope"] == s for r in receipts)
                             for s in ("pair", "user", "item")}}  # fmt: skip
    deleted = pairs_of(now, users, items)
    held = _held_out(held_out, now, current) if held_out else None
    method = method or ("implicit" if now.params.kind == "implicit" else "unlearn")
    body, views = verify(now, current, deleted, before, held, method, iterations,
                         tuple(range(seeds)))  # fmt: skip
    facts = truth(receipts, stored, list(zip(users, items, strict=True)))
    checks = {
        "nothing_covered_is_stored": facts["covered_but_stored_count"] == 0,
        "no_deleted_pair_is_stored": facts["deleted_pairs_stored_count"] == 0,
        **body["checks"],
    }
    verdict = "pass" if all(checks.values()) else "fail"
    failed = [name for name, held in checks.items() if not held]
    plot_path = plot_path or str(Path(report_path).with_suffix(".png"))
    warnings = []
    if len(deleted.users) < SMALL_SAMPLE:
        warnings.append(
            f"only {len(deleted.users)} deleted pair(s) judged: the scores' mean and the "
            f"attack's AUC move by chance at that size (below {SMALL_SAMPLE}, judge more: "
            "--sample, or --deletions)"
        )
    report = {
        "namespace": state.layout.namespace,
        "created_at": started,
        "seconds": 0.0,
        "model": {
            "users": int(now.shape[0]),
            "items": int(now.shape[1]),
            "interactions": int(current.nnz),
            "params": asdict(now.params),
        },
        "deletions": {
            **source,
            "pairs_judged": len(deleted.users),
            "pairs_unknown_to_the_model": deleted.unknown,
        },
        "truth": facts,
        **body,
        "held_out": held_out,
        "checks": checks,
        "failed": failed,
        "verdict": verdict,
        "warnings": warnings,
        "plot": plot_path,
    }
    try:
        plot(views, verdict, plot_path, failed)
    except ImportError:  # matplotlib is the demo extra: the report stands without it
        report["plot"] = None
    report["seconds"] = round(time.time() - started, 2)
    Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _held_out(path: str, model: FactorModel, current) -> HeldOut:
    """The file's pairs the model knows both ids of and does not hold (a held-out pair
    that is also stored says nothing about generalisation)."""
    rows = read_interactions(path, model.params.kind)
    user_index = {u: n for n, u in enumerate(model.user_ids.tolist())}
    item_index = {i: n for n, i in enumerate(model.item_ids.tolist())}
    users = np.array([user_index.get(u, -1) for u in rows.users], dtype=np.int64)
    items = np.array([item_index.get(i, -1) for i in rows.items], dtype=np.int64)
    known = (users >= 0) & (items >= 0)
    users, items = users[known], items[known]
    weights = np.asarray(rows.weights, dtype=np.float64)[known]
    fresh = current.weights_of(users, items) == 0
    return HeldOut(users[fresh], items[fresh], weights[fresh])
