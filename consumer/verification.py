"""`unlearn verify`: a report a privacy engineer can file, on a live namespace.

For a set of deletions (a sample of the audit trail's receipts, or a given file of pairs)
it checks, against the model as Redis holds it now:

- truth: no deleted pair is stored, and no stored interaction is covered by a checked
  receipt (its scope, at or before its time);
- forgetting: the deleted pairs' scores and ranks now, before (given the model file of
  before) and in a retrain from scratch on the current data (an `implicit` fit by
  default: a solver this product does not share its update with);
- privacy: a membership-inference attack (a pair is called a member when its score is
  high) against deleted pairs vs never-seen pairs of the same users: its AUC now must be
  within a margin of its AUC on the retrains;
- utility: held-out recall@20 and AUC (given pairs the model never saw) no lower than the
  retrains' lowest less their spread (or a floor), and the retraining objective on the
  current data no more than a margin above the retrains' highest.

The verdict is "pass" when every check holds; the thresholds are in the report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from consumer.errors import InputError
from unlearn_core import FactorModel, Interactions
from unlearn_core.evaluation import (
    membership_attack_auc,
    never_seen_pairs,
    recall_at_k,
    sampled_auc,
)
from unlearn_core.loss import loss
from unlearn_core.model import pair_scores
from unlearn_core.retrain_check import (
    ATTACK_AUC_MARGIN,
    DELETED_SCORE_MARGIN,
    HELD_OUT_FLOOR,
    HeldOut,
)
from unlearn_core.solve import solve_rows
from unlearn_core.sweep import SweepContext, default_solver
from unlearn_core.train import train

LOSS_MARGIN = 0.01  # the current model's objective at most 1 % above the retrains' highest


@dataclass(frozen=True)
class Thresholds:
    deleted_score_margin: float = DELETED_SCORE_MARGIN
    attack_auc_margin: float = ATTACK_AUC_MARGIN
    held_out_floor: float = HELD_OUT_FLOOR
    loss_margin: float = LOSS_MARGIN


@dataclass(frozen=True)
class Deleted:
    """The deleted pairs to judge, as indices of the current model (ids it no longer
    knows are left out and counted)."""

    users: np.ndarray
    items: np.ndarray
    unknown: int = 0


@dataclass
class Witness:
    """One model's view of the deleted pairs."""

    name: str
    scores: np.ndarray
    ranks: np.ndarray
    attack_auc: float
    recall_at_20: float | None = None
    auc: float | None = None
    loss: float | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "deleted_pairs": len(self.scores),  # the model before may know fewer of them
            "deleted_mean_score": _round(float(self.scores.mean())),
            "deleted_median_rank": float(np.median(self.ranks)),
            "deleted_in_top_20": int((self.ranks <= 20).sum()),
            "attack_auc": _round(self.attack_auc),
            "held_out_recall_at_20": _round(self.recall_at_20),
            "held_out_auc": _round(self.auc),
            "loss": _round(self.loss),
            "seconds": round(self.seconds, 3),
        }


def pairs_of(model: FactorModel, users: list[str], items: list[str]) -> Deleted:
    user_index = {u: n for n, u in enumerate(model.user_ids.tolist())}
    item_index = {i: n for n, i in enumerate(model.item_ids.tolist())}
    known = [(user_index[u], item_index[i]) for u, i in zip(users, items, strict=True)
             if u in user_index and i in item_index]  # fmt: skip
    array = np.array(known, dtype=np.int64).reshape(-1, 2)
    return Deleted(array[:, 0], array[:, 1], len(users) - len(known))


def sample_receipts(
    receipts: list[dict[str, Any]], sample: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Up to `sample` receipts, newest first among equals of a random draw (seeded)."""
    if len(receipts) <= sample:
        return list(receipts)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(receipts), sample, replace=False).tolist())
    return [receipts[n] for n in chosen]


def truth(
    receipts: list[dict[str, Any]],
    stored: dict[tuple[str, str], float],
    pairs: list[tuple[str, str]],
) -> dict[str, Any]:
    """Does the state hold anything the receipts (or the deletion file) say is gone?"""
    by_user: dict[str, list[tuple[str, float]]] = {}
    by_item: dict[str, list[tuple[str, float]]] = {}
    for (user, item), ts in stored.items():
        by_user.setdefault(user, []).append((item, ts))
        by_item.setdefault(item, []).append((user, ts))
    covered = []
    for receipt in receipts:
        at, user, item = receipt["event_ts"], receipt.get("user"), receipt.get("item")
        if receipt["scope"] == "pair":
            found = [(user, item)] if stored.get((user, item), float("inf")) <= at else []
        elif receipt["scope"] == "user":
            found = [(user, i) for i, ts in by_user.get(user, []) if ts <= at]
        else:
            found = [(u, item) for u, ts in by_item.get(item, []) if ts <= at]
        covered += [{"request": receipt.get("request_id") or receipt["source"],
                     "user": u, "item": i} for u, i in found]  # fmt: skip
    still = [{"user": u, "item": i} for u, i in pairs if (u, i) in stored]
    return {
        "receipts_checked": len(receipts),
        "pairs_checked": len(pairs),
        "covered_but_stored": covered[:20],
        "covered_but_stored_count": len(covered),
        "deleted_pairs_stored": still[:20],
        "deleted_pairs_stored_count": len(still),
    }


# Retrains run in steps of this many iterations until they are as converged as the model
# judged (or RETRAIN_MAX_ITERATIONS): judged against retrains less or more converged than
# itself, a model's verdict would say more about the iteration count than about forgetting.
RETRAIN_STEP = 5
RETRAIN_MAX_ITERATIONS = 200
CONVERGENCE_SAMPLE = 1000  # users whose distance from their exact solve measures it
SMALL_SAMPLE = 30  # fewer judged pairs than this: the report warns


def convergence(x: np.ndarray, y: np.ndarray, data: Interactions, params) -> float:
    """How close a model is to its fixed point on `data`: the median over (a sample of)
    users of |x_u - exact solve| / |exact solve| against its own item factors."""
    rows = np.flatnonzero(data.row_counts() > 0)
    if len(rows) > CONVERGENCE_SAMPLE:
        rows = np.random.default_rng(0).choice(rows, CONVERGENCE_SAMPLE, replace=False)
    if not len(rows):
        return 0.0
    exact = solve_rows(data.by_user, rows, y.astype(np.float32), params)
    scale = np.maximum(np.linalg.norm(exact, axis=1), 1e-30)
    return float(np.median(np.linalg.norm(x[rows] - exact, axis=1) / scale))


def retrain(
    data: Interactions,
    model: FactorModel,
    method: str,
    iterations: int | None,
    seed: int,
    target: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """A model fitted from scratch on `data` with the same objective: `implicit`'s ALS
    (its confidence alpha * r given 1 + alpha * w directly, with alpha 1: exact), or
    this product's own ALS (`unlearn`; the only choice for explicit ratings). With
    `iterations` None it runs until it is as converged as `target` says (at most
    RETRAIN_MAX_ITERATIONS). Returns its factors and the iterations it ran."""
    params = model.params
    if method == "implicit" and params.kind != "implicit":
        raise InputError("command line", "the implicit library fits implicit feedback only: "
                         "--retrain unlearn")  # fmt: skip
    budget = RETRAIN_MAX_ITERATIONS if iterations is None else iterations
    step = budget if iterations is not None else RETRAIN_STEP
    done, x, y = 0, None, None
    while done < budget:
        step = min(step, budget - done)
        x, y = _retrain_step(data, model, method, step, seed, x, y)
        done += step
        if iterations is not None or convergence(x, y, data, params) <= target:
            break
    return x, y, done


def _retrain_step(data, model, method, iterations, seed, x, y):
    """`iterations` more sweeps of a retrain, from (x, y) when given, else from scratch."""
    params = model.params
    if method == "implicit":
        from implicit.cpu.als import AlternatingLeastSquares

        confidence = sp.csr_matrix(data.by_user, dtype=np.float32, copy=True)
        confidence.data = (1.0 + params.alpha * confidence.data).astype(np.float32)
        fitted = AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization, alpha=1.0,
            iterations=iterations, random_state=seed,
        )  # fmt: skip
        if x is not None:  # implicit's fit goes on from factors it is given
            fitted.user_factors, fitted.item_factors = x, y
        fitted.fit(confidence, show_progress=False)
        return np.asarray(fitted.user_factors), np.asarray(fitted.item_factors)
    if x is None:
        fresh, _ = train(data, model.user_ids, model.item_ids, params, iterations, seed=seed)
        return fresh.user_factors, fresh.item_factors
    x, y = x.copy(), y.copy()
    context = SweepContext(data, params, default_solver(params), 0)
    for _ in range(iterations):
        context.sweep(x, y)
    return x, y


def witness(
    name: str,
    users: np.ndarray,
    items: np.ndarray,
    current: Interactions,
    deleted: Deleted,
    outsiders: tuple[np.ndarray, np.ndarray],
    held_out: HeldOut | None,
    params,
    seconds: float = 0.0,
) -> Witness:
    x, y = users[: current.shape[0]], items[: current.shape[1]]
    scores = pair_scores(x, y, deleted.users, deleted.items)
    out = Witness(
        name, scores, _ranks(x, y, current, deleted),
        membership_attack_auc(x, y, deleted.users, deleted.items, *outsiders),
        loss=loss(current, x, y, params), seconds=seconds,
    )  # fmt: skip
    if held_out is not None and len(held_out.users):
        out.recall_at_20 = recall_at_k(x, y, current, held_out.users, held_out.items)
        out.auc = sampled_auc(x, y, current, held_out.users, held_out.items)
    return out


def verify(
    now: FactorModel,
    current: Interactions,
    deleted: Deleted,
    before: FactorModel | None = None,
    held_out: HeldOut | None = None,
    method: str = "implicit",
    iterations: int | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    thresholds: Thresholds = Thresholds(),
) -> tuple[dict[str, Any], dict[str, Witness]]:
    """The comparison part of the report, and each model's view (for the plot).
    `iterations` None: retrains as converged as the model judged."""
    if not len(deleted.users):
        raise InputError(
            "verify",
            "no deleted pair to judge (the sample or the file named none the model knows)",
        )
    outsiders = never_seen_pairs(current, deleted.users, seed=0)
    views = {"now": witness("now", now.user_factors, now.item_factors, current, deleted,
                            outsiders, held_out, now.params)}  # fmt: skip
    notes: dict[str, Any] = {}
    if before is not None:
        aligned = align(before, now)
        kept = aligned.known_user[deleted.users] & aligned.known_item[deleted.items]
        notes["before_pairs_left_out"] = int((~kept).sum())  # ids the model before lacks
        if kept.any():
            mine = Deleted(deleted.users[kept], deleted.items[kept])
            views["before"] = witness(
                "before", aligned.users, aligned.items, current, mine,
                never_seen_pairs(current, mine.users, seed=0), held_out, now.params,
            )  # fmt: skip
    target = convergence(now.user_factors, now.item_factors, current, now.params)
    ran = []
    for seed in seeds:
        started = time.perf_counter()
        x, y, done = retrain(current, now, method, iterations, seed, target)
        ran.append(done)
        views[f"retrain seed {seed}"] = witness(
            f"retrain seed {seed}", x, y, current, deleted, outsiders, held_out, now.params,
            time.perf_counter() - started,
        )  # fmt: skip
    retrains = [v for n, v in views.items() if n.startswith("retrain")]
    checks = _checks(views["now"], retrains, thresholds)
    report = {
        "models": {name: view.summary() for name, view in views.items()},
        "retrain": {
            "method": method,
            "seeds": list(seeds),
            "iterations": ran,
            "until": "a fixed count" if iterations is not None else "as converged as the model",
            # median distance of users' rows from their exact solve: the model's, and the
            # retrains' stopping point when not a fixed count
            "model_convergence": _round(target),
        },
        "thresholds": asdict(thresholds),
        "checks": checks,
        **notes,
    }
    return report, views


@dataclass(frozen=True)
class Aligned:
    """A model's factors in another model's index space (rows it lacks: zero, unknown)."""

    users: np.ndarray
    items: np.ndarray
    known_user: np.ndarray
    known_item: np.ndarray


def align(model: FactorModel, to: FactorModel) -> Aligned:
    """`model`'s rows laid out as `to` indexes its ids (ids absent from `model`: unknown,
    left out of what is judged). A model of another rank, or sharing no id with `to`, is
    not `to` before its deletions (a namespace keeps its rank): it cannot be judged."""
    rank, theirs = model.user_factors.shape[1], to.user_factors.shape[1]
    if rank != theirs:
        raise InputError("--before", f"a model of rank {rank}, the namespace's has rank "
                         f"{theirs}: not this model before its deletions")  # fmt: skip
    out = []
    for ids, factors, target in (
        (model.user_ids, model.user_factors, to.user_ids),
        (model.item_ids, model.item_factors, to.item_ids),
    ):
        index = {value: n for n, value in enumerate(ids.tolist())}
        rows = np.array([index.get(value, -1) for value in target.tolist()], dtype=np.int64)
        known = rows >= 0
        laid = np.zeros((len(target), factors.shape[1]), dtype=np.float32)
        laid[known] = factors[rows[known]]
        out.append((laid, known))
    (users, known_user), (items, known_item) = out
    if not known_user.any() or not known_item.any():
        raise InputError("--before", "the model shares no user or no item id with the "
                         "namespace's: nothing of it can be judged")  # fmt: skip
    return Aligned(users, items, known_user, known_item)


def _checks(mine: Witness, theirs: list[Witness], t: Thresholds) -> dict[str, bool]:
    def values(name: str) -> list[float]:
        return [getattr(w, name) for w in theirs]

    def not_worse(name: str) -> bool:
        """Utility is not degraded: at least the retrains' lowest, less their spread (or
        the floor). Higher is no failure: the retrains stop after a fixed iteration count."""
        low, high = min(values(name)), max(values(name))
        return getattr(mine, name) >= low - max(high - low, t.held_out_floor)

    deleted = [float(w.scores.mean()) for w in theirs]
    mean_now = float(mine.scores.mean())
    checks = {
        "deleted_score": min(deleted) <= mean_now <= max(deleted)
        or abs(mean_now - float(np.mean(deleted))) <= t.deleted_score_margin,
        "attack_auc": abs(mine.attack_auc - float(np.mean(values("attack_auc"))))
        <= t.attack_auc_margin,
        "loss": mine.loss is not None and mine.loss <= max(values("loss")) * (1 + t.loss_margin),
    }
    if mine.recall_at_20 is not None:
        checks["held_out_recall_at_20"] = not_worse("recall_at_20")
        checks["held_out_auc"] = not_worse("auc")
    return checks


def _ranks(x: np.ndarray, y: np.ndarray, current: Interactions, deleted: Deleted) -> np.ndarray:
    """Where each deleted item ranks (1 = first) among the items its user does not have."""
    indptr, indices = current.by_user.indptr, current.by_user.indices
    out = np.empty(len(deleted.users), dtype=np.int64)
    for n, (user, item) in enumerate(zip(deleted.users.tolist(), deleted.items.tolist(),
                                         strict=True)):  # fmt: skip
        scores = y.astype(np.float64) @ x[user].astype(np.float64)
        scores[indices[indptr[user] : indptr[user + 1]]] = -np.inf
        out[n] = 1 + int((scores > scores[item]).sum())
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def plot(views: dict[str, Witness], verdict: str, path: str, failed: list[str] = ()) -> None:
    """Three panels: deleted pairs' scores, their ranks, the attack's AUC per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = list(views)
    for name in names:
        axes[0].hist(views[name].scores, bins=30, histtype="step", label=name, linewidth=1.4)
        ranks = np.sort(views[name].ranks)
        axes[1].plot(ranks, np.arange(1, len(ranks) + 1) / len(ranks), label=name)
    axes[0].set(title="deleted pairs: score", xlabel="x_u . y_i", ylabel="pairs")
    axes[1].set(title="deleted pairs: rank among the user's other items", xlabel="rank",
                ylabel="share of pairs at this rank or better", xscale="log")  # fmt: skip
    axes[2].bar(names, [views[n].attack_auc for n in names], color="tab:purple")
    axes[2].axhline(0.5, color="grey", linestyle=":")
    axes[2].set(title="membership-inference attack AUC", ylim=(0.0, 1.0))
    axes[2].tick_params(axis="x", rotation=20)
    for axis in axes[:2]:
        axis.legend(fontsize=8)
    failing = f" ({', '.join(failed)})" if failed else ""
    title = f"unlearn verify: {verdict}{failing}"
    fig.suptitle(title)
    fig.tight_layout()
    # The title also as the PNG's own Title, for whoever files the picture without the report.
    fig.savefig(path, dpi=110, metadata={"Title": title})
    plt.close(fig)
