"""Each baseline on tiny data, and the shared top-k with exclusions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from freshrec.models.baselines import (
    EASE,
    CategoryPopularity,
    CooccurrenceKNN,
    Popularity,
    RepeatBuy,
    Trending,
    UserKNN,
    _fallback,
    top_k,
    top_k_fallback,
    top_k_shared,
)
from freshrec.models.data import Catalogue, Histories, Ragged, normalize_events
from freshrec.models.split import seen_items

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def log(rows):
    return normalize_events(pd.DataFrame([
        {"user_id": u, "item_id": i, "event_type": e, "ts": T0 + pd.Timedelta(days=d), "category": c, "price": 1.0}
        for u, i, e, d, c in rows]))


# p1 is the most popular overall; t1 sells only lately; f1/f2 are always bought together
LOG = log([
    ("u1", "p1", "purchase", 0, "A"), ("u2", "p1", "purchase", 1, "A"), ("u3", "p1", "purchase", 2, "A"),
    ("u4", "p1", "purchase", 3, "A"), ("u5", "p2", "purchase", 3, "A"),
    ("u1", "f1", "purchase", 4, "B"), ("u1", "f2", "purchase", 4, "B"),
    ("u2", "f1", "purchase", 5, "B"), ("u2", "f2", "purchase", 5, "B"),
    ("u3", "f1", "purchase", 6, "B"),
    ("u6", "t1", "purchase", 28, "C"), ("u7", "t1", "purchase", 29, "C"), ("u8", "t1", "view", 29, "C"),
    ("u9", "r1", "purchase", 10, "B"), ("u9", "r1", "purchase", 12, "B"), ("u9", "r1", "purchase", 14, "B"),
    ("u9", "r2", "purchase", 20, "B"),
])
CAT = Catalogue.from_events(LOG)
NOW = int((T0 + pd.Timedelta(days=30)).timestamp())
TRAIN = Histories.from_events(LOG, CAT, now=NOW)


def ids(idx):
    return [CAT.item_ids[i] if i >= 0 else None for i in idx]


def recs_for(rec, users, k=3):
    hist = Histories.from_events(LOG, CAT, users=users, now=NOW)
    items, _ = rec.fit(TRAIN, CAT).recommend(hist, k)
    return [ids(row) for row in items]


def test_popularity_is_the_same_list_for_everyone_and_new_users():
    assert recs_for(Popularity(), ["u1", "new"], k=2) == [["p1", "f1"], ["p1", "f1"]]


def test_category_popularity_follows_the_users_categories():
    # u9 buys only in B: B's best sellers first (f1 and r1 tie, the lower index wins), then overall popularity
    assert recs_for(CategoryPopularity(), ["u9"], k=5) == [["f1", "r1", "f2", "r2", "p1"]]
    assert recs_for(CategoryPopularity(), ["new"], k=1) == [["p1"]]


def test_trending_ranks_what_sells_lately():
    assert recs_for(Trending(window_days=7), ["new"], k=2) == [["t1", "p1"]]


def test_repeat_buy_lists_own_items_by_frequency_then_popular_ones():
    assert recs_for(RepeatBuy(), ["u9"], k=3) == [["r1", "r2", "p1"]]
    assert recs_for(RepeatBuy(), ["new"], k=1) == [["p1"]]


def test_repeat_buy_breaks_frequency_ties_by_recency():
    # u1 bought p1 (day 0), f1 and f2 (day 4) once each: the later ones first, f1 before f2 by index
    assert recs_for(RepeatBuy(), ["u1"], k=3) == [["f1", "f2", "p1"]]


def test_cooccurrence_recommends_what_goes_with_the_users_items():
    rec = CooccurrenceKNN(n_neighbors=5)
    # u3 bought p1 and f1: f2 co-occurs with both; an item is never its own neighbour
    assert recs_for(rec, ["u3"], k=1) == [["f2"]]
    # f2 was bought with f1 twice (cosine 2/sqrt(2*3)) and with p1 twice (2/sqrt(2*4))
    assert ids(rec.similar_items(CAT.index["f2"], 2)) == ["f1", "p1"]


def test_user_knn_recommends_what_the_most_similar_users_took():
    hist = Histories.from_events(LOG, CAT, users=["u3"], now=NOW)
    rec = UserKNN(n_neighbors=2).fit(TRAIN, CAT)
    # u3 bought p1 and f1; u1 and u2 bought both and f2 as well: the two nearest users' item
    items, _ = rec.recommend(hist, 1, exclude=seen_items(hist, "purchased"))
    assert ids(items[0]) == ["f2"]
    # without the exclusion u3's own items come first (alpha of the score is the user's own vector)
    assert set(ids(rec.recommend(hist, 2)[0][0])) == {"p1", "f1"}


def test_user_knn_never_counts_a_user_as_their_own_neighbour():
    events = log([("a", "x", "purchase", 0, "A"), ("a", "s", "purchase", 1, "A"), ("b", "s", "purchase", 2, "A"),
                  ("c", "s", "purchase", 3, "A"), ("c", "y", "purchase", 3, "A"), ("d", "z", "purchase", 4, "A")])
    cat = Catalogue.from_events(events)
    train = Histories.from_events(events, cat, now=NOW)
    hist = Histories.from_events(events, cat, users=["a", "d", "new"], now=NOW)
    nb = UserKNN(n_neighbors=3, typical_items=0).fit(train, cat).neighbours(hist).toarray()
    # only a bought x: a's neighbours (b and c, through s) bring s and y, never x
    assert nb[0, cat.index["x"]] == 0 and nb[0, cat.index["s"]] > 0 and nb[0, cat.index["y"]] > 0
    assert not nb[1].any() and not nb[2].any()  # d shares no item with anyone; a new user has no vector
    with_typical = UserKNN(n_neighbors=3, typical_items=2).fit(train, cat).neighbours(hist).toarray()
    # each missing neighbour is replaced by the pool's mean vector on its heaviest items
    assert (with_typical[2] > 0).sum() == 2 and np.allclose(with_typical[1], with_typical[2])


def test_user_knn_draws_neighbours_from_the_most_recently_active_users():
    rec = UserKNN(max_pool_users=3).fit(TRAIN, CAT)
    assert set(rec.pool_sorted_ids) == {"u6", "u7", "u8"} and rec.pool.shape == (3, len(CAT))


def test_ease_scores_co_bought_items_and_refuses_large_catalogues():
    hist = Histories.from_events(LOG, CAT, users=["u3"], now=NOW)
    items, _ = EASE(l2=1.0).fit(TRAIN, CAT).recommend(hist, 1, exclude=seen_items(hist, "all"))
    assert ids(items[0]) == ["f2"]
    with pytest.raises(ValueError):
        EASE(max_items=3).fit(TRAIN, CAT)


def test_every_list_is_full_and_respects_exclusions():
    hist = Histories.from_events(LOG, CAT, users=["u9"], now=NOW)
    exclude = Ragged.from_pairs(np.array([0, 0]), np.array([CAT.index["r1"], CAT.index["p1"]]), 1)
    for rec in (Popularity(), CategoryPopularity(), Trending(), RepeatBuy(), CooccurrenceKNN(), UserKNN(), EASE(l2=1.0)):
        items, scores = rec.fit(TRAIN, CAT).recommend(hist, len(CAT) - 2, exclude=exclude)
        got = ids(items[0])
        assert None not in got and "r1" not in got and "p1" not in got, rec.name
        assert np.all(np.diff(scores[0]) <= 0), rec.name


def test_top_k_pads_and_breaks_ties_by_index():
    scores = np.array([[1.0, 3.0, 3.0, 0.0]], dtype=np.float32)
    items, vals = top_k(scores, 6, np.array([0]), np.array([3]))
    assert items.tolist() == [[1, 2, 0, -1, -1, -1]]
    assert np.isneginf(vals[0, 3:]).all()


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_shared_is_top_k_of_the_repeated_row(k):
    rng = np.random.default_rng(k)
    scores = rng.permutation(30).astype(np.float32)  # top_k breaks a tie at the k-th place arbitrarily
    scores[[3, 17]] = -np.inf
    rows, items = rng.integers(0, 9, 60), rng.integers(0, 30, 60)
    exclude = Ragged.from_pairs(rows, items, 9)
    want = top_k(np.tile(scores, (9, 1)), k, exclude.rows, exclude.values)
    got = top_k_shared(scores, 9, k, exclude, batch_size=4)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_top_k_shared_breaks_ties_by_index_and_pads():
    scores = np.array([1.0, 3.0, 3.0, 0.0, 3.0, -np.inf], dtype=np.float32)
    items, vals = top_k_shared(scores, 2, 6, Ragged.from_pairs(np.array([0, 1]), np.array([2, 0]), 2))
    assert items.tolist() == [[1, 4, 0, 3, -1, -1], [1, 2, 4, 3, -1, -1]]
    assert vals[1].tolist()[:4] == [3.0, 3.0, 3.0, 0.0] and np.isneginf(vals[:, 4:]).all()


def exact_top_k(scores: np.ndarray, k: int, exclude: Ragged) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every row sorted whole, ties to the lower index (top_k's argpartition may
    pick any of the items tied at the k-th place)."""
    scores = np.array(scores, dtype=np.float32)
    scores[exclude.rows, exclude.values] = -np.inf
    items = np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])
    vals = np.take_along_axis(scores, items, axis=1)
    items[~np.isfinite(vals)] = -1
    return items, vals


def test_sparse_and_shared_lists_are_the_dense_lists():
    hist = Histories.from_events(LOG, CAT, now=NOW)
    exclude = seen_items(hist, "purchased")
    for rec in (Popularity(), Trending(), CategoryPopularity(), RepeatBuy(), CooccurrenceKNN(), UserKNN(n_neighbors=2)):
        rec.fit(TRAIN, CAT)
        fast = rec.recommend(hist, 4, exclude=exclude, batch_size=2)
        dense = exact_top_k(rec.score(hist), 4, exclude)
        np.testing.assert_array_equal(fast[0], dense[0], err_msg=rec.name)
        np.testing.assert_array_equal(fast[1], dense[1], err_msg=rec.name)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_fallback_is_top_k_of_the_dense_fallback(k):
    rng = np.random.default_rng(k)
    n, n_items = 12, 60
    # few distinct values, so ties abound; row 0 holds the 50 most popular items, so its fill
    # starts past them; row 1 has no primary item; some values are not positive
    dense = rng.integers(-1, 4, (n, n_items)).astype(np.float64) * (rng.random((n, n_items)) < 0.3)
    popularity = rng.integers(0, 6, n_items).astype(np.float64)
    dense[0] = 0.0
    dense[0, np.argsort(-popularity, kind="stable")[:50]] = 1.0
    dense[1] = 0.0
    exclude = Ragged.from_pairs(rng.integers(0, n, 90), rng.integers(0, n_items, 90), n)
    want = exact_top_k(_fallback(dense, popularity), k, exclude)
    got = top_k_fallback(sp.csr_matrix(dense), popularity, k, exclude)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_category_popularity_without_categories_is_popularity():
    plain = log([(u, i, e, d, "") for u, i, e, d, _ in [
        ("u1", "p1", "purchase", 0, ""), ("u2", "p1", "purchase", 1, ""), ("u2", "p2", "purchase", 2, "")]])
    cat = Catalogue.from_events(plain)
    hist = Histories.from_events(plain, cat, users=["u1"], now=NOW)
    items, _ = CategoryPopularity().fit(Histories.from_events(plain, cat, now=NOW), cat).recommend(hist, 2)
    assert [cat.item_ids[i] for i in items[0]] == ["p1", "p2"]


def test_the_one_key_order_of_pairs_is_the_three_key_lexsort_with_ties_nan_and_signed_zeros():
    from freshrec.models.baselines import _row_score_item_order

    rng = np.random.default_rng(1)
    for t in range(200):
        n = int(rng.integers(0, 2000))
        rows = rng.integers(0, int(rng.integers(1, 50)), n)
        if t % 3 == 0:
            rows = np.sort(rows)  # as from a CSR matrix
        items = rng.integers(0, int(rng.integers(1, 400)), n)
        if t % 4 == 0:
            scores = np.round(rng.normal(size=n), 1)  # many ties
        elif t % 4 == 1:
            scores = rng.integers(-5, 5, n)
        elif t % 4 == 2:
            scores = np.round(rng.normal(size=n), 1)
            for share, value in ((0.2, np.nan), (0.1, -0.0), (0.05, np.inf), (0.05, -np.inf)):
                scores[rng.random(n) < share] = value
        else:
            scores = rng.random(n).astype(np.float32)
        assert np.array_equal(_row_score_item_order(rows, items, scores), np.lexsort((items, -scores, rows))), t
    wide = np.array([0, 1 << 40]), np.array([1 << 30, 0]), np.array([0.5, 0.25])  # the key would overflow
    assert np.array_equal(_row_score_item_order(*wide), np.lexsort((wide[1], -wide[2], wide[0])))
