"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from freshrec.models.data import Ragged
from freshrec.models.metrics import (
    coverage,
    distinct_items,
    hits_matrix,
    novelty,
    pairwise_overlap,
    per_user_metrics,
    popularity_rank,
    ranking_metrics,
    split_recall,
)


def ragged(lists):
    rows = np.concatenate([np.full(len(x), i) for i, x in enumerate(lists)]) if lists else np.zeros(0)
    vals = np.concatenate([np.asarray(x) for x in lists]) if lists else np.zeros(0)
    return Ragged.from_pairs(rows.astype(np.int64), vals.astype(np.int64), len(lists))


def test_one_user_by_hand():
    # targets {2, 4, 9}; the list hits at ranks 2 and 4
    m = per_user_metrics(np.array([[1, 2, 3, 4]]), ragged([[2, 4, 9]]), ks=(2, 4))
    assert m["precision_at_4"][0] == pytest.approx(0.5)
    assert m["recall_at_4"][0] == pytest.approx(2 / 3)
    assert m["hit_rate_at_4"][0] == 1.0
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_4"][0] == pytest.approx(dcg / idcg)
    assert m["map_at_4"][0] == pytest.approx((1 / 2 + 2 / 4) / 3)
    # at k=2: one hit at rank 2; ideal is two hits
    assert m["ndcg_at_2"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["map_at_2"][0] == pytest.approx((1 / 2) / 2)
    assert m["recall_at_2"][0] == pytest.approx(1 / 3)


def test_perfect_and_empty_lists():
    m = per_user_metrics(np.array([[7, 8, -1], [-1, -1, -1]]), ragged([[7, 8], [5]]), ks=(3,))
    assert m["ndcg_at_3"].tolist() == pytest.approx([1.0, 0.0])
    assert m["map_at_3"].tolist() == pytest.approx([1.0, 0.0])
    assert m["recall_at_3"].tolist() == pytest.approx([1.0, 0.0])
    assert m["precision_at_3"].tolist() == pytest.approx([2 / 3, 0.0])


def test_padding_never_hits_and_unknown_targets_count():
    # -1 is padding; -2 is a target outside the catalogue: it can't be hit but counts in |T|
    hits = hits_matrix(np.array([[-1, 3]]), ragged([[-2, 3]]))
    assert hits.tolist() == [[False, True]]
    m = per_user_metrics(np.array([[-1, 3]]), ragged([[-2, 3]]), ks=(2,))
    assert m["recall_at_2"][0] == pytest.approx(0.5)


def test_ranking_metrics_means_and_list_metrics():
    recs = np.array([[0, 1], [0, 2]])
    out = ranking_metrics(recs, ragged([[0], [3]]), ks=(1, 2), n_items=4, popularity_rank_=np.array([1, 2, 3, 4]))
    assert out["hit_rate_at_1"] == pytest.approx(0.5)
    assert out["coverage_at_1"] == pytest.approx(1 / 4)
    assert out["coverage_at_2"] == pytest.approx(3 / 4)
    assert out["novelty_at_2"] == pytest.approx((1 + 2 + 1 + 3) / 4)


def test_coverage_and_novelty_ignore_padding():
    recs = np.array([[0, -1], [1, -1]])
    assert coverage(recs, 2, 10) == pytest.approx(0.2)
    assert novelty(recs, 2, np.arange(1, 11)) == pytest.approx(1.5)


def test_popularity_rank_ties_share_the_best_rank():
    assert popularity_rank(np.array([5.0, 9.0, 5.0, 1.0])).tolist() == [2, 1, 2, 4]


def test_users_without_targets_and_short_lists_are_errors():
    with pytest.raises(ValueError):
        per_user_metrics(np.array([[1, 2]]), ragged([[]]), ks=(2,))
    with pytest.raises(ValueError):
        per_user_metrics(np.array([[1, 2]]), ragged([[1]]), ks=(3,))


def test_split_recall_by_hand():
    recs = np.array([[1, 5, 9, 2], [4, 3, 0, 8], [0, 1, 7, 8]])
    targets = ragged([[1, 5, 7, -2], [3], [6]])  # -2: a target outside the catalogue, a new item no list can hold
    history = ragged([[1, 2], [], [6]])
    out = split_recall(recs, targets, history, ks=(1, 4))
    # user 0: repeat {1} hit at rank 1; new {5, 7, -2}: 5 hit at rank 2
    # user 1: no repeat target; new {3} hit at rank 2.  user 2: repeat {6} missed; no new target
    np.testing.assert_equal(out["recall_repeat_at_1"], [1.0, np.nan, 0.0])
    np.testing.assert_equal(out["recall_repeat_at_4"], [1.0, np.nan, 0.0])
    np.testing.assert_allclose(out["recall_new_at_1"], [0.0, 0.0, np.nan])
    np.testing.assert_allclose(out["recall_new_at_4"], [1 / 3, 1.0, np.nan])
    assert np.nanmean(out["recall_new_at_4"]) == pytest.approx((1 / 3 + 1) / 2)
    # the two kinds partition the targets: their hits add up to recall's
    n_rep, n_new = np.array([1, 0, 1]), np.array([3, 1, 0])
    both = np.nan_to_num(out["recall_repeat_at_4"]) * n_rep + np.nan_to_num(out["recall_new_at_4"]) * n_new
    np.testing.assert_allclose(both / (n_rep + n_new), per_user_metrics(recs, targets, ks=(4,))["recall_at_4"])


def test_split_recall_checks_shapes():
    with pytest.raises(ValueError):
        split_recall(np.array([[1, 2]]), ragged([[1]]), ragged([[1], [2]]), ks=(2,))
    with pytest.raises(ValueError):
        split_recall(np.array([[1, 2]]), ragged([[1]]), ragged([[1]]), ks=(3,))


def test_pairwise_overlap_identical_disjoint_and_by_hand():
    assert pairwise_overlap(np.tile([3, 1, 4], (5, 1)), 3) == pytest.approx(1.0)
    assert pairwise_overlap(np.arange(12).reshape(4, 3), 3) == 0.0
    # pairs: (0,1) share item 0 -> 1/2; (0,2) and (1,2) share nothing
    assert pairwise_overlap(np.array([[0, 1], [0, 2], [3, 4]]), 2) == pytest.approx(1 / 6)
    # only the top k count; padding never overlaps
    assert pairwise_overlap(np.array([[0, 1, 9], [0, 2, 9]]), 2) == pytest.approx(1 / 2)
    assert pairwise_overlap(np.array([[0, -1], [0, -1]]), 2) == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        pairwise_overlap(np.array([[0, 1]]), 2)


def test_pairwise_overlap_is_exact_against_every_pair():
    rng = np.random.default_rng(0)
    recs = np.stack([rng.choice(40, size=10, replace=False) for _ in range(150)])
    recs[rng.random(recs.shape) < 0.1] = -1  # some padding
    k = 8
    sets = [set(r[:k][r[:k] >= 0].tolist()) for r in recs]
    brute = np.mean([len(sets[u] & sets[v]) / k for u in range(len(sets)) for v in range(u + 1, len(sets))])
    assert pairwise_overlap(recs, k) == pytest.approx(brute, rel=1e-12)


def test_distinct_items_and_coverage_agree():
    recs = np.array([[0, 5, -1], [5, 7, 2]])
    assert distinct_items(recs, 2) == 3  # 0, 5, 7
    assert distinct_items(recs, 3) == 4
    assert coverage(recs, 2, 10) == pytest.approx(0.3)
