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


def retrain(
    data: Interactions, model: FactorModel, method: str, iterations: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A model fitted from scratch on `data` with the same objective: `implicit`'s ALS
    (its confidence alpha * r given 1 + alpha * w directly, with alpha 1: exact), or
    this product's own ALS (`unlearn`; the only choice for explicit ratings)."""
    params = model.params
    if method == "implicit":
        if params.kind != "implicit":
            raise ValueError("the implicit library fits implicit feedback only: --retrain unlearn")
        from implicit.cpu.als import AlternatingLeastSquares

        confidence = sp.csr_matrix(data.by_user, dtype=np.float32, copy=True)
        confidence.data = (1.0 + params.alpha * confidence.data).astype(np.float32)
        fitted = AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization, alpha=1.0,
            iterations=iterations, random_state=seed,
        )  # fmt: skip
        fitted.fit(confidence, show_progress=False)
        return np.asarray(fitted.user_factors), np.asarray(fitted.item_factors)
    fresh, _ = train(data, model.user_ids, model.item_ids, params, iterations, seed=seed)
    return fresh.user_factors, fresh.item_factors


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
    iterations: int = 15,
    seeds: tuple[int, ...] = (0, 1, 2),
    thresholds: Thresholds = Thresholds(),
) -> tuple[dict[str, Any], dict[str, Witness]]:
    """The comparison part of the report, and each model's view (for the plot)."""
    if not len(deleted.users):
        raise ValueError("no deleted pair to judge (the sample or the file named none the "
                         "model knows)")  # fmt: skip
    outsiders = never_seen_pairs(current, deleted.users, seed=0)
    views = {"now": witness("now", now.user_factors, now.item_factors, current, deleted,
                            outsiders, held_out, now.params)}  # fmt: skip
    if before is not None:
        views["before"] = witness("before", before.user_factors, before.item_factors, current,
                                  deleted, outsiders, held_out, now.params)  # fmt: skip
    for seed in seeds:
        started = time.perf_counter()
        x, y = retrain(current, now, method, iterations, seed)
        views[f"retrain seed {seed}"] = witness(
            f"retrain seed {seed}", x, y, current, deleted, outsiders, held_out, now.params,
            time.perf_counter() - started,
        )  # fmt: skip
    retrains = [v for n, v in views.items() if n.startswith("retrain")]
    checks = _checks(views["now"], retrains, thresholds)
    report = {
        "models": {name: view.summary() for name, view in views.items()},
        "retrain": {"method": method, "iterations": iterations, "seeds": list(seeds)},
        "thresholds": asdict(thresholds),
        "checks": checks,
    }
    return report, views


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


def plot(views: dict[str, Witness], verdict: str, path: str) -> None:
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
    fig.suptitle(f"unlearn verify: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
