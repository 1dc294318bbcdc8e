"""Ranking metrics at K on numpy arrays (one implementation; metrics_spark.py is its Spark twin).

Inputs: ``recs`` (n_users, K_max) int item codes in rank order, -1 padding where a list is
shorter; ``targets`` a Ragged of the relevant item codes per user (codes of items that no list
can contain may be any other negative number except -1). Binary relevance; for one user with
target set T and hits h_1..h_K (h_r = 1 when the item at rank r is in T):

- precision@K = sum(h) / K
- recall@K    = sum(h) / |T|
- hit_rate@K  = 1 if sum(h) > 0
- ndcg@K      = sum_r h_r / log2(r + 1)  /  sum_{r <= min(|T|, K)} 1 / log2(r + 1)
- map@K       = sum_r h_r * precision@r  /  min(|T|, K)

and, over all lists: coverage@K = distinct recommended items / catalogue size, novelty@K =
mean popularity rank (1 = most popular) of the recommended items. Users without a target are
not evaluated (callers drop them).

Beyond the gate's metrics (not yet wired in): ``split_recall`` separates recall on items the
user had before (repeats) from recall on items new to them, ``pairwise_overlap`` measures how
alike users' lists are (1 = everyone gets the same list), ``distinct_items`` counts the items
that reach any list.
"""

from __future__ import annotations

import numpy as np
from freshrec.models.data import Ragged, unique_columns

PER_USER_METRICS = ("precision", "recall", "hit_rate", "ndcg", "map")


def hits_matrix(recs: np.ndarray, targets: Ragged) -> np.ndarray:
    """(n_users, K) bool: is the item at each rank one of the user's targets?"""
    recs = np.asarray(recs, dtype=np.int64)
    n, k = recs.shape
    if len(targets) != n:
        raise ValueError(f"{n} recommendation lists but {len(targets)} target sets")
    if n == 0 or k == 0 or len(targets.values) == 0:
        return np.zeros((n, k), dtype=bool)
    lo = min(int(recs.min()), int(targets.values.min()))
    span = max(int(recs.max()), int(targets.values.max())) - lo + 1
    rec_keys = np.arange(n, dtype=np.int64)[:, None] * span + (recs - lo)
    target_keys = targets.rows * span + (targets.values - lo)
    return np.isin(rec_keys, target_keys) & (recs != -1)


def per_user_metrics(recs: np.ndarray, targets: Ragged, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``{"ndcg_at_10": array(n_users), ...}`` for each metric in PER_USER_METRICS and k in ks."""
    hits = hits_matrix(recs, targets)
    n, kmax = hits.shape
    if max(ks) > kmax:
        raise ValueError(f"lists have {kmax} items, fewer than k={max(ks)}")
    n_rel = targets.lengths.astype(np.float64)
    if np.any(n_rel == 0):
        raise ValueError("every evaluated user needs at least one target")
    ranks = np.arange(1, kmax + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    ap_terms = np.cumsum(hits * cum_hits / ranks, axis=1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        h = cum_hits[:, k - 1]
        n_ideal = np.minimum(n_rel, k).astype(np.int64)
        out[f"precision_at_{k}"] = h / k
        out[f"recall_at_{k}"] = h / n_rel
        out[f"hit_rate_at_{k}"] = (h > 0).astype(np.float64)
        out[f"ndcg_at_{k}"] = dcg[:, k - 1] / ideal[n_ideal - 1]
        out[f"map_at_{k}"] = ap_terms[:, k - 1] / n_ideal
    return out


def coverage(recs: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    return float(distinct_items(recs, k) / n_items) if n_items else 0.0


def distinct_items(recs: np.ndarray, k: int) -> int:
    """How many different items appear in at least one top-k list (padding not counted)."""
    top = np.asarray(recs)[:, :k]
    return int(len(np.unique(top[top >= 0])))


def novelty(recs: np.ndarray, k: int, popularity_rank: np.ndarray) -> float:
    """Mean popularity rank of the recommended items (higher = less popular = more novel)."""
    top = np.asarray(recs)[:, :k]
    top = top[top >= 0]
    return float(popularity_rank[top].mean()) if len(top) else float("nan")


def popularity_rank(counts: np.ndarray) -> np.ndarray:
    """1 for the most popular item; ties share the best rank (competition ranking)."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.sort(counts)[::-1]
    return (np.searchsorted(-order, -counts, side="left") + 1).astype(np.int64)


def ranking_metrics(recs: np.ndarray, targets: Ragged, ks: tuple[int, ...], n_items: int,
                    popularity_rank_: np.ndarray | None = None) -> dict[str, float]:
    """Means of the per-user metrics plus coverage (and novelty when ranks are given)."""
    out = {name: float(values.mean()) if len(values) else float("nan")
           for name, values in per_user_metrics(recs, targets, ks).items()}
    for k in ks:
        out[f"coverage_at_{k}"] = coverage(recs, k, n_items)
        if popularity_rank_ is not None:
            out[f"novelty_at_{k}"] = novelty(recs, k, popularity_rank_)
    return out


def split_recall(recs: np.ndarray, targets: Ragged, history: Ragged, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Recall@k on repeat targets and on new targets, per user.

    ``history`` holds each user's items before the cutoff (catalogue codes, e.g.
    ``split.seen_items(eval_set.histories, "all")``). A target in it is a *repeat*, any other a
    *new* item. ``{"recall_repeat_at_10": ..., "recall_new_at_10": ...}``: hits among that kind
    of target / number of targets of that kind; NaN for a user with no target of that kind
    (average with ``np.nanmean``). Under EXCLUDE_SEEN=all no target is a repeat.
    """
    recs = np.asarray(recs, dtype=np.int64)
    if len(history) != len(targets):
        raise ValueError(f"{len(targets)} target sets but {len(history)} histories")
    if max(ks) > recs.shape[1]:
        raise ValueError(f"lists have {recs.shape[1]} items, fewer than k={max(ks)}")
    padded, slot = _padded(targets)
    is_repeat = hits_matrix(padded, history)[targets.rows, slot]
    out: dict[str, np.ndarray] = {}
    for kind, mask in (("repeat", is_repeat), ("new", ~is_repeat)):
        kind_targets = Ragged.from_pairs(targets.rows[mask], targets.values[mask], len(targets))
        n_kind = kind_targets.lengths.astype(np.float64)
        hits = hits_matrix(recs, kind_targets)
        with np.errstate(invalid="ignore", divide="ignore"):
            for k in ks:
                out[f"recall_{kind}_at_{k}"] = np.where(n_kind > 0, hits[:, :k].sum(axis=1) / n_kind, np.nan)
    return out


def _padded(ragged: Ragged) -> tuple[np.ndarray, np.ndarray]:
    """``ragged`` as an (n, longest) matrix padded with -1, and each value's column in it."""
    slot = np.arange(len(ragged.values), dtype=np.int64) - ragged.offsets[ragged.rows]
    width = int(ragged.lengths.max()) if len(ragged) else 0
    out = np.full((len(ragged), width), -1, dtype=np.int64)
    out[ragged.rows, slot] = ragged.values
    return out, slot


def pairwise_overlap(recs: np.ndarray, k: int) -> float:
    """Mean over all pairs of users of |top-k of u  &  top-k of v| / k.

    1.0 when every user gets the same k items, 0.0 when no two lists share an item; the
    personalisation of a recommender is high when this is low. |intersection| / k (not
    Jaccard) is the cosine similarity of two full lists as 0/1 item vectors, and its mean has a
    closed form: summed over ordered pairs u != v it is sum_i c_i^2 - sum_u |L_u|, where c_i
    is the number of lists that hold item i. So it is exact for any number of users in
    O(users x k), with no pair sampling. Padding (-1) and repeated items within a list count
    once at most, so a short list overlaps less than 1 even with itself.
    """
    top = np.asarray(recs, dtype=np.int64)[:, :k]
    n = top.shape[0]
    if n < 2 or k < 1:
        raise ValueError(f"need at least 2 lists and k >= 1, got {n} lists and k={k}")
    rows = np.broadcast_to(np.arange(n)[:, None], top.shape)
    ok = top >= 0
    items = unique_columns(rows[ok], top[ok])[1]
    per_item = np.bincount(items).astype(np.float64) if len(items) else np.zeros(0)
    shared = float((per_item ** 2).sum() - len(items))
    return shared / (n * (n - 1)) / k
