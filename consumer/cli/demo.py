"""`unlearn demo`: the whole offline job on an embedded default, explained as it runs.

Trains on MovieLens-100K when it is found (../shared/data, UNLEARN_DATA_DIR or --data),
on a generated long-tailed data set otherwise; then one user asks to forget everything
they did in their last month, another asks to be forgotten entirely, and 200 single
pairs are withdrawn. Shows the user's top-10 before and after, and what it cost.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from consumer.tsv import read_interactions
from unlearn_core import Change, Hyperparameters, Interactions, SweepPolicy, forget, train
from unlearn_core.ids import IdIndex
from unlearn_core.model import FactorModel
from unlearn_core.synthetic import SECONDS_PER_DAY, long_tailed_events

DEMO_PARAMS = Hyperparameters("implicit", factors=32, regularization=1.0, alpha=1.0)
TOP_N = 10
MONTH = 30 * SECONDS_PER_DAY


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="train, forget a user's last month, and show the recommendations change",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--data", metavar="FILE", help="interactions TSV (default: MovieLens-100K)")
    demo.add_argument("--iterations", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    source, users, items, weights, stamps, user_ids, item_ids = _load(args.data, args.seed)
    data = Interactions.from_triples(
        users, items, weights, (len(user_ids), len(item_ids)), "implicit"
    )
    print(f"data: {source}: {data.nnz} interactions, {data.shape[0]} users x {data.shape[1]} items")

    with tqdm(total=args.iterations, desc="training", unit="sweep", disable=None) as bar:
        model, _ = train(
            data, user_ids, item_ids, DEMO_PARAMS, args.iterations, seed=args.seed,
            on_sweep=lambda _record: bar.update(1),
        )  # fmt: skip

    user, month_items = _last_month(users, items, stamps)
    rng = np.random.default_rng(args.seed)
    others = np.flatnonzero(data.row_counts() > 0)
    whole_user = int(rng.choice(others[others != user]))
    random_pairs = data.entry_keys[rng.choice(data.nnz, 200, replace=False)]
    change = Change.deletions(
        pair_users=np.concatenate([np.full(len(month_items), user), random_pairs // data.shape[1]]),
        pair_items=np.concatenate([month_items, random_pairs % data.shape[1]]),
        users=[whole_user],
    )
    print(
        f"\ndeletion requests: user {user_ids[user]} forgets their last month "
        f"({len(month_items)} items); user {user_ids[whole_user]} asks to be forgotten "
        f"entirely; 200 single pairs are withdrawn"
    )
    forgotten, remaining, report = forget(model, data, change, SweepPolicy(max_sweeps=20))
    retrained, _ = train(
        remaining, user_ids, item_ids, DEMO_PARAMS, args.iterations, seed=args.seed
    )  # what the slow alternative would give, for comparison

    before = _top_n(model, data, user)
    after = _top_n(forgotten, remaining, user)
    reference = _top_n(retrained, remaining, user)
    neighbours = _neighbours(model, month_items, per_item=5)
    _print_top_n(model, (before, after, reference), month_items, neighbours)

    deleted_u, deleted_i = np.full(len(month_items), user), month_items
    print("\nreport")
    print(f"  interactions removed          {report.removed}")
    print(f"  touched rows re-solved        {report.touched_users} users + "
          f"{report.touched_items} items in {report.touched_seconds * 1e3:.1f} ms")  # fmt: skip
    print(f"  sweeps                        {report.sweeps} "
          f"({report.total_seconds - report.touched_seconds:.2f} s), "
          f"residual {report.final_residual:.1e}, converged={report.converged}")  # fmt: skip
    print(f"  loss on remaining data        {report.initial_loss:.6g} -> {report.final_loss:.6g}")
    print(f"  mean score of forgotten pairs {model.scores(deleted_u, deleted_i).mean():.3f} -> "
          f"{forgotten.scores(deleted_u, deleted_i).mean():.3f}")  # fmt: skip
    print(f"  neighbours of forgotten items in top-{TOP_N}: {np.isin(before, neighbours).sum()}"
          f" -> {np.isin(after, neighbours).sum()} (retrained: "
          f"{np.isin(reference, neighbours).sum()})")  # fmt: skip
    print(f"  top-{TOP_N} overlap with the retrained model: {len(np.intersect1d(after, reference))}"
          f" of {TOP_N}")  # fmt: skip
    print(f"  wall time                     {time.perf_counter() - started:.1f} s")
    return 0


def _load(path: str | None, seed: int) -> tuple:
    found = Path(path) if path else _find_movielens()
    if found is not None:
        rows = read_interactions(found, "implicit")
        users, items = IdIndex(), IdIndex()
        u, i = users.add(rows.users), items.add(rows.items)
        stamps = np.nan_to_num(rows.timestamps, nan=0.0)
        return str(found), u, i, rows.weights, stamps, users.ids, items.ids
    events = long_tailed_events(seed=seed)
    user_ids = [f"user-{n}" for n in range(int(events.users.max()) + 1)]
    item_ids = [f"item-{n}" for n in range(int(events.items.max()) + 1)]
    return (
        "generated long-tailed data (MovieLens-100K not found)",
        events.users, events.items, events.weights, events.timestamps, user_ids, item_ids,
    )  # fmt: skip


def _find_movielens() -> Path | None:
    if "UNLEARN_DATA_DIR" in os.environ:  # set: the only place to look
        roots = [Path(os.environ["UNLEARN_DATA_DIR"])]
    else:
        roots = [
            Path.cwd().parent / "shared" / "data",
            Path(__file__).resolve().parents[3] / "shared" / "data",
        ]
    for root in roots:
        candidate = root / "ml-100k" / "u.data"
        if candidate.is_file():
            return candidate
    return None


def _last_month(users: np.ndarray, items: np.ndarray, stamps: np.ndarray) -> tuple[int, np.ndarray]:
    """A user whose last month is a real part, not all, of their history; and those items.

    Prefers the most such items among users whose last month is 10-40% of their history,
    so both the forgetting and what remains of their taste are visible.
    """
    last = np.zeros(users.max() + 1)
    np.maximum.at(last, users, stamps)
    in_month = stamps >= last[users] - MONTH
    month_counts = np.bincount(users[in_month], minlength=len(last))
    totals = np.bincount(users, minlength=len(last))
    share = month_counts / np.maximum(totals, 1)
    eligible = (share >= 0.1) & (share <= 0.4) & (month_counts >= 10)
    user = int(np.argmax(np.where(eligible, month_counts, 0) if eligible.any() else month_counts))
    return user, np.unique(items[in_month & (users == user)])


def _top_n(model: FactorModel, data: Interactions, user: int) -> np.ndarray:
    scores = model.item_factors.astype(np.float64) @ model.user_factors[user].astype(np.float64)
    seen = data.by_user.indices[data.by_user.indptr[user] : data.by_user.indptr[user + 1]]
    scores[seen] = -np.inf  # recommend only what the user does not have
    return np.argsort(-scores)[:TOP_N]


def _neighbours(model: FactorModel, items: np.ndarray, per_item: int) -> np.ndarray:
    """Items most similar (cosine of factors in the original model) to the given ones."""
    factors = model.item_factors.astype(np.float64)
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
    similarity = unit[items] @ unit.T
    similarity[:, items] = -np.inf
    return np.unique(np.argsort(-similarity, axis=1)[:, :per_item])


def _print_top_n(
    model: FactorModel,
    columns: tuple[np.ndarray, np.ndarray, np.ndarray],
    forgotten: np.ndarray,
    neighbours: np.ndarray,
) -> None:
    def label(item: int) -> str:
        mark = "x" if item in forgotten else ("~" if item in neighbours else " ")
        return f"{mark} {model.item_ids[item]}"

    print(f"\ntop-{TOP_N} for that user (x: a forgotten item, ~: a near neighbour of one)")
    print(f"  {'rank':>4}  {'before':<16}{'after forgetting':<20}{'retrained from scratch':<24}")
    for rank, row in enumerate(zip(*columns, strict=True), start=1):
        before, after, retrained = (label(int(item)) for item in row)
        print(f"  {rank:>4}  {before:<16}{after:<20}{retrained:<24}")
