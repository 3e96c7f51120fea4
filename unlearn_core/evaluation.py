"""Ranking, rating and privacy metrics for judging a model against retraining.

Models are compared by what they predict (scores, rankings, errors), never factor by
factor: factors are only defined up to a rotation.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from unlearn_core.interactions import Interactions
from unlearn_core.model import pair_scores


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U)."""
    positive = np.asarray(positive, dtype=np.float64)
    negative = np.asarray(negative, dtype=np.float64)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def recall_at_k(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    known: Interactions,
    test_users: np.ndarray,
    test_items: np.ndarray,
    k: int = 20,
) -> float:
    """Mean over test users of hits / min(k, n_test), ranking only items absent from `known`."""
    test_users = np.asarray(test_users, dtype=np.int64)
    test_items = np.asarray(test_items, dtype=np.int64)
    order = np.argsort(test_users, kind="stable")
    users_sorted, items_sorted = test_users[order], test_items[order]
    unique_users, starts = np.unique(users_sorted, return_index=True)
    ends = np.append(starts[1:], len(users_sorted))
    recalls = np.empty(len(unique_users))
    indptr, indices = known.by_user.indptr, known.by_user.indices
    for start in range(0, len(unique_users), 256):
        block = unique_users[start : start + 256]
        scores = user_factors[block].astype(np.float64) @ item_factors.astype(np.float64).T
        for row, user in enumerate(block):
            scores[row, indices[indptr[user] : indptr[user + 1]]] = -np.inf
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row in range(len(block)):
            n = start + row
            relevant = items_sorted[starts[n] : ends[n]]
            hits = np.isin(top[row], relevant).sum()
            recalls[n] = hits / min(k, len(relevant))
    return float(recalls.mean()) if len(recalls) else float("nan")


def sampled_auc(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    known: Interactions,
    test_users: np.ndarray,
    test_items: np.ndarray,
    negatives_per_positive: int = 10,
    seed: int = 0,
) -> float:
    """AUC of held-out pairs against random pairs of the same users that are not known."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.asarray(test_users, dtype=np.int64), negatives_per_positive)
    items = rng.integers(0, known.shape[1], len(users))
    unseen = known.weights_of(users, items) == 0
    positive = pair_scores(user_factors, item_factors, test_users, test_items)
    negative = pair_scores(user_factors, item_factors, users[unseen], items[unseen])
    return auc(positive, negative)


def rmse(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
) -> float:
    predicted = pair_scores(user_factors, item_factors, users, items)
    return float(np.sqrt(np.mean((predicted - np.asarray(ratings, dtype=np.float64)) ** 2)))


def never_seen_pairs(
    observed: Interactions, users: np.ndarray, per_user: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """For each given user, random items it never interacted with (in `observed`).

    Used as the non-members of a membership-inference attack: pairs of the same users
    as the deleted ones, so the attack cannot win by telling users apart.
    """
    rng = np.random.default_rng(seed)
    candidates_u = np.repeat(np.asarray(users, dtype=np.int64), per_user * 4)
    candidates_i = rng.integers(0, observed.shape[1], len(candidates_u))
    unseen = observed.weights_of(candidates_u, candidates_i) == 0
    candidates_u, candidates_i = candidates_u[unseen], candidates_i[unseen]
    keep = min(len(candidates_u), len(users) * per_user)
    pick = rng.choice(len(candidates_u), size=keep, replace=False)
    return candidates_u[pick], candidates_i[pick]


def membership_attack_auc(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    member_users: np.ndarray,
    member_items: np.ndarray,
    outsider_users: np.ndarray,
    outsider_items: np.ndarray,
) -> float:
    """AUC of an attacker who calls a pair a member when its score is high.

    0.5 means the model's scores do not tell deleted pairs from never-seen ones.
    """
    members = pair_scores(user_factors, item_factors, member_users, member_items)
    outsiders = pair_scores(user_factors, item_factors, outsider_users, outsider_items)
    return auc(members, outsiders)
