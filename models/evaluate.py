"""Run any recommender on an EvalSet: metrics overall and for new versus returning users.

Metric names are the MLflow names of docs/tables.md: ``ndcg_at_10``, ``recall_at_20``,
``coverage_at_10``, ... overall, and the same prefixed with ``new_users/`` or
``returning_users/`` for the two segments (a new user has no event before the cutoff); overall
also ``recall_repeat_at_k`` / ``recall_new_at_k`` (targets the user had before the cutoff, and
the others), ``distinct_items_at_10`` and ``pairwise_overlap_at_10`` (metrics.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from freshrec.models.data import event_weight_array
from freshrec.models.metrics import distinct_items, pairwise_overlap, popularity_rank, ranking_metrics, split_recall
from freshrec.models.split import EvalSet, seen_items

DEFAULT_KS = (10, 20, 100)
SEGMENTS = ("new_users", "returning_users")


@dataclass(frozen=True)
class EvalResult:
    name: str
    metrics: dict[str, float]
    recs: np.ndarray  # (n_users, max(ks)) catalogue indices, -1 padding
    seconds: float


def catalogue_popularity(eval_set: EvalSet) -> np.ndarray:
    """Positive events per catalogue item in the training data (the novelty reference)."""
    train = eval_set.train
    ok = (train.item >= 0) & (event_weight_array(None)[train.etype] > 0)
    return np.bincount(train.item[ok], minlength=len(eval_set.catalogue)).astype(np.float64)


def evaluate(recommender, eval_set: EvalSet, ks: tuple[int, ...] = DEFAULT_KS, batch_size: int = 1024,
             name: str | None = None) -> EvalResult:
    """Top-max(ks) lists for the eval set's users (exclusions applied) and their metrics."""
    started = time.perf_counter()
    recs, _ = recommender.recommend(eval_set.histories, max(ks), exclude=eval_set.exclude, batch_size=batch_size)
    seconds = time.perf_counter() - started
    return EvalResult(name or recommender.name, metrics_of(recs, eval_set, ks), recs, seconds)


def metrics_of(recs: np.ndarray, eval_set: EvalSet, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    n_items = len(eval_set.catalogue)
    ranks = popularity_rank(catalogue_popularity(eval_set))
    out = ranking_metrics(recs, eval_set.targets, ks, n_items, ranks)
    out["n_users"] = float(len(eval_set))
    # what is new against what the user had before (the targets a repeat-buy list cannot hit), and
    # how personal the lists are: distinct items shown and the mean overlap of two users' lists
    for name, values in split_recall(recs, eval_set.targets, seen_items(eval_set.histories, "all"), ks).items():
        if np.isfinite(values).any():
            out[name] = float(np.nanmean(values))
    out["distinct_items_at_10"] = float(distinct_items(recs, 10))
    if len(recs) >= 2:
        out["pairwise_overlap_at_10"] = pairwise_overlap(recs, 10)
    for segment, mask in (("new_users", eval_set.is_new), ("returning_users", ~eval_set.is_new)):
        rows = np.flatnonzero(mask)
        out[f"{segment}/n_users"] = float(len(rows))
        if len(rows):
            seg = ranking_metrics(recs[rows], eval_set.targets.subset(rows), ks, n_items, ranks)
            out.update({f"{segment}/{name}": value for name, value in seg.items()})
    return out
