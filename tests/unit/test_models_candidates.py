"""Candidate generation: own items with their repurchase timing, co-visited items, the sources'
scores and ranks, exclusions, and batches that do not change a user's candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.candidates import HISTORY, SOURCES, CandidateConfig, CandidateGenerator
from freshrec.models.data import Catalogue, Histories, Ragged, normalize_events
from freshrec.models.datasets import synthetic_sequential

T0 = pd.Timestamp("2024-03-01", tz="UTC")
NOW = int((T0 + pd.Timedelta(days=30)).timestamp())


def log(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "day", "category"])
    return normalize_events(df.assign(ts=T0 + pd.to_timedelta(df.pop("day"), unit="D"), price=2.0))


# u1 buys a every 10 days and viewed b; u2 re-buys a after 4 days; c and d always go with a
LOG = log([
    ("u1", "a", "purchase", 0, "A"), ("u1", "a", "purchase", 10, "A"), ("u1", "a", "purchase", 20, "A"),
    ("u1", "b", "view", 25, "B"),
    ("u2", "a", "purchase", 0, "A"), ("u2", "a", "purchase", 4, "A"), ("u2", "c", "purchase", 4, "A"),
    ("u3", "a", "purchase", 1, "A"), ("u3", "c", "purchase", 1, "A"), ("u3", "d", "add_to_cart", 2, "B"),
    ("u4", "c", "purchase", 3, "A"), ("u4", "d", "purchase", 3, "B"), ("u5", "e", "purchase", 29, "C"),
])
CAT = Catalogue.from_events(LOG)
TRAIN = Histories.from_events(LOG, CAT, now=NOW)


def generate(users, exclude=None, **config):
    gen = CandidateGenerator(CandidateConfig(**config)).fit(TRAIN, CAT)
    return gen, gen.generate(Histories.from_events(LOG, CAT, users=users, now=NOW), exclude)


def pair(cands, row, item):
    """The candidate index of (row, item id), or None."""
    lo, hi = cands.offsets[row], cands.offsets[row + 1]
    hit = np.flatnonzero(cands.item[lo:hi] == CAT.index[item])
    return lo + int(hit[0]) if len(hit) else None


def feature(cands, j, name):
    return float(cands.history[j, HISTORY.index(name)])


def test_own_items_carry_their_counts_and_repurchase_timing():
    _, cands = generate(["u1"])
    a, b = pair(cands, 0, "a"), pair(cands, 0, "b")
    assert a is not None and b is not None
    assert feature(cands, a, "n_purchase") == 3 and feature(cands, a, "n_view") == 0
    assert feature(cands, a, "n_days") == 3
    assert feature(cands, a, "days_since_last") == pytest.approx(10.0)
    assert feature(cands, a, "days_since_first") == pytest.approx(30.0)
    assert feature(cands, a, "own_gap") == pytest.approx(10.0)
    assert feature(cands, a, "since_over_own_gap") == pytest.approx(1.0)
    # a's re-buy gaps across users: 10, 10 (u1) and 4 (u2): median 10
    assert feature(cands, a, "since_over_item_interval") == pytest.approx(1.0)
    assert feature(cands, b, "n_view") == 1 and feature(cands, b, "n_purchase") == 0
    assert feature(cands, b, "days_since_last") == pytest.approx(5.0)
    assert np.isnan(feature(cands, b, "own_gap"))  # one day with b: no gap of its own
    own = SOURCES.index("own")
    assert cands.rank[a, own] == 1 and cands.score[a, own] > cands.score[b, own] > 0


def test_co_visited_items_come_from_the_users_recent_items():
    gen, cands = generate(["u1"])
    covisit = SOURCES.index("covisit")
    sim = gen.similarity.toarray()
    a, b, c = (CAT.index[i] for i in "abc")
    # u1 last had a 10 days ago and b 5 days ago; a seed weighs 2^(-days / 14)
    seed_a, seed_b = 2 ** (-10 / 14), 2 ** (-5 / 14)
    jc, ja = pair(cands, 0, "c"), pair(cands, 0, "a")
    assert jc is not None and np.isfinite(cands.rank[jc, covisit]) and cands.sources[jc] & (1 << covisit)
    assert cands.score[jc, covisit] == pytest.approx(seed_a * sim[a, c] + seed_b * sim[b, c], rel=1e-5)
    assert sim[a, a] == 0 and cands.score[ja, covisit] == pytest.approx(seed_b * sim[b, a], rel=1e-5)


def test_a_pair_has_every_sources_score_and_a_rank_only_where_listed():
    _, cands = generate(["u1", "u3"], ease_items=2)
    ease, popular = SOURCES.index("ease"), SOURCES.index("popular")
    assert np.all(cands.score[:, popular] > 0)  # every candidate has a popularity
    outside = ~np.isin(cands.item, CAT.lookup(["a", "c"]))  # the two most popular items are EASE's
    assert np.all(np.isnan(cands.score[outside, ease])) and np.all(np.isnan(cands.rank[outside, ease]))
    listed = np.isfinite(cands.rank)
    assert np.all(cands.rank[listed] >= 1)


def test_new_users_get_the_shared_lists_and_the_cap_holds():
    _, cands = generate(["nobody"], trending_max=1, popular_max=2)
    trending, popular = SOURCES.index("trending"), SOURCES.index("popular")
    assert cands.offsets.tolist() == [0, 3]  # e (trending) and a, c (popular)
    assert set(CAT.item_ids[cands.item]) == {"a", "c", "e"}
    assert np.isfinite(cands.rank[:, [trending, popular]]).any(axis=1).all()
    _, capped = generate(["u1", "u3"], n_candidates=2)
    assert np.diff(capped.offsets).tolist() == [2, 2]


def test_excluded_items_never_become_candidates():
    exclude = Ragged.from_pairs(np.array([0, 0, 1]), CAT.lookup(["a", "c", "a"]), 2)
    _, cands = generate(["u1", "u3"], exclude)
    for row in range(2):
        assert not set(cands.item[cands.offsets[row]:cands.offsets[row + 1]]) & set(exclude[row])
    assert len(cands.item) > 0


def test_candidates_do_not_depend_on_the_batch():
    events = normalize_events(synthetic_sequential(n_users=120, n_items=80, seed=3))
    catalogue = Catalogue.from_events(events)
    train = Histories.from_events(events, catalogue)
    gen = CandidateGenerator(CandidateConfig(n_candidates=40, ease_items=50)).fit(train, catalogue)
    whole = gen.generate(train)
    pieces = gen.generate(train, batch_size=7)
    assert np.array_equal(whole.offsets, pieces.offsets) and np.array_equal(whole.item, pieces.item)
    np.testing.assert_array_equal(whole.score, pieces.score)
    np.testing.assert_array_equal(whole.history, pieces.history)
    assert np.all(np.diff(whole.offsets) <= 40)
    keys = whole.rows * len(catalogue) + whole.item
    assert len(np.unique(keys)) == len(keys)  # a user's candidates are distinct items


def test_top_per_row_matches_a_full_sort_with_ties_and_nan():
    """top_per_row drops pairs below each long row's cap-th score before sorting: the result must
    be the full lexsort's, ties (broken by item) and NaN scores (last) included."""
    from freshrec.models.baselines import top_per_row

    def full_sort(rows, items, scores, cap):
        order = np.lexsort((items, -scores, rows))
        rows, items, scores = rows[order], items[order], scores[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        keep = rank < cap
        return rows[keep], items[keep], scores[keep], rank[keep] + 1

    rng = np.random.default_rng(3)
    pruned = 0
    for _ in range(200):
        n, n_rows, cap = int(rng.integers(0, 2000)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
        rows, items = rng.integers(0, n_rows, n), rng.integers(0, 60, n)
        scores = rng.integers(0, 4, n).astype(float) if rng.random() < 0.5 else rng.random(n)
        scores[rng.random(n) < 0.1 * rng.integers(0, 3)] = np.nan
        scores[rng.random(n) < 0.1 * rng.integers(0, 2)] = -np.inf
        got, want = top_per_row(rows, items, scores, cap), full_sort(rows, items, scores, cap)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        pruned += int(len(rows) > cap * n_rows)
    assert pruned > 50  # most draws had rows long enough to be cut
