"""Matrices on real Spark: append-only id maps, decayed weights, sequences, item stats."""

from __future__ import annotations

from datetime import datetime

import pytest
from freshrec.jobs.matrices import interactions, item_stats, new_id_rows, recent_sequences
from freshrec.jobs.score import POPULAR_COLUMNS, fold_popularity, popular_lists

pytestmark = pytest.mark.integration

SCHEMA = "event_id string, ts timestamp, user_id string, event_type string, item_id string, category string, price double"
WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0, "search": 0.0, "remove_from_cart": -1.0}


def _events(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def d(day, hour=0):
    return datetime(2024, 5, day, hour)


@pytest.fixture
def events(spark):
    return _events(spark, [
        ("e1", d(1), "u1", "view", "a", "shoes", 10.0),
        ("e2", d(2), "u1", "purchase", "a", "shoes", 12.0),
        ("e3", d(3), "u2", "view", "b", "hats", None),
        ("e4", d(31), "u2", "add_to_cart", "a", None, None),
        ("e5", d(31), "u3", "search", None, None, None),
        ("e6", d(30), "u1", "view", "c", "hats", 5.0),
    ])


def test_id_maps_are_append_only_and_stable(spark, events):
    first = new_id_rows(events, None, "user_id")
    assert [(r.user_id, r.user_idx) for r in first.orderBy("user_idx").collect()] == [("u1", 0), ("u2", 1), ("u3", 2)]
    more = events.unionByName(_events(spark, [("e7", d(1), "u0", "view", "z", None, None)]))
    added = new_id_rows(more, first, "user_id").collect()
    assert [(r.user_id, r.user_idx) for r in added] == [("u0", 3)]  # old ids keep their index even though u0 is older
    assert new_id_rows(more, first.unionByName(spark.createDataFrame(added)), "user_id").count() == 0


def test_interactions_weights_decay_from_newest_event(spark, events):
    users = new_id_rows(events, None, "user_id")
    items = new_id_rows(events.where("item_id IS NOT NULL"), None, "item_id")
    rows = {(r.user_id, r.item_id): r for r in interactions(events, WEIGHTS, 30.0, users, items).collect()}
    assert set(rows) == {("u1", "a"), ("u2", "b"), ("u2", "a"), ("u1", "c")}  # searches have no item
    # newest event is May 31: u2's cart that day has full weight 3; u1's view (May 1) and purchase (May 2)
    assert rows[("u2", "a")].weight == pytest.approx(3.0)
    assert rows[("u1", "a")].weight == pytest.approx(1.0 * 2 ** (-30 / 30) + 5.0 * 2 ** (-29 / 30))
    assert rows[("u1", "a")].n_view == 1 and rows[("u1", "a")].n_purchase == 1 and rows[("u1", "a")].n_events == 2


def test_sequences_keep_last_l_oldest_first(spark, events):
    users = new_id_rows(events, None, "user_id")
    items = new_id_rows(events.where("item_id IS NOT NULL"), None, "item_id")
    seqs = {r.user_id: r for r in recent_sequences(events, 2, items, users).collect()}
    assert seqs["u1"].item_ids == ["a", "c"] and seqs["u1"].event_types == ["purchase", "view"]
    assert seqs["u2"].item_ids == ["b", "a"] and seqs["u2"].last_ts == d(31)
    assert "u3" not in seqs  # only searched


def test_item_stats_popularity_trending_and_catalogue(spark, events):
    items = new_id_rows(events.where("item_id IS NOT NULL"), None, "item_id")
    catalogue = spark.createDataFrame([("b", "caps", 7.5, False)], "item_id string, category string, price double, available boolean")
    stats = {r.item_id: r for r in item_stats(events, WEIGHTS, 30.0, 7.0, items, catalogue).collect()}
    assert stats["a"].pop_rank == 1 and stats["a"].n_users == 2 and stats["a"].n_purchases == 1
    assert stats["a"].category == "shoes" and stats["a"].price == 12.0  # latest known values
    assert stats["b"].category == "caps" and stats["b"].price == 7.5 and stats["b"].available is False
    assert stats["c"].available is True and stats["c"].category_rank == 1
    assert stats["c"].trending_score > 0 and stats["b"].trending_score == 0  # c is new this week; b is a month old
    assert stats["a"].first_seen == d(1) and stats["a"].last_seen == d(31)


def test_folding_recent_events_into_item_stats_is_the_batch_over_all_events(spark, events):
    """What a micro-batch does to the popular lists (jobs.score.fold_popularity) equals a batch
    run over the old and the new events together."""
    old = events.where("ts < '2024-05-30'")  # newest old item event: May 3
    new = events.where("ts >= '2024-05-30'").where("item_id IS NOT NULL")  # searches never reach features/recent
    new = new.unionByName(_events(spark, [("e8", d(31, 5), "u4", "remove_from_cart", "z", None, None)]))
    items = new_id_rows(events.unionByName(new).where("item_id IS NOT NULL"), None, "item_id")
    cols = [*POPULAR_COLUMNS, "last_seen"]
    folded = fold_popularity(item_stats(old, WEIGHTS, 30.0, 7.0, items).select(*cols).toPandas(),
                             new.select("item_id", "event_type", "ts", "category").toPandas(), WEIGHTS, 30.0)
    full = item_stats(old.unionByName(new), WEIGHTS, 30.0, 7.0, items).select(*cols).toPandas()
    got = folded.set_index("item_id").sort_index()
    want = full.set_index("item_id").sort_index()
    assert list(got.index) == ["a", "b", "c", "z"]  # z: first seen in the micro-batch
    assert got["popularity"].to_numpy() == pytest.approx(want["popularity"].to_numpy())
    assert got["n_events"].tolist() == want["n_events"].tolist()
    ranked = lambda stats: [(c, [i for i, _ in pairs]) for c, pairs in popular_lists(stats, 3)]  # noqa: E731
    assert ranked(folded) == ranked(full)


def test_popularity_decays_from_the_newest_item_event_in_the_batch_and_the_fold(spark, events):
    """A search newer than every item event (in the batch's events and in the micro-batch's) moves
    neither reference: the batch (item_stats) and the micro-batch (fold_popularity) both decay
    from the newest item event, so folding still gives the numbers of a batch over all events."""
    old = events.where("ts < '2024-05-30'").unionByName(_events(spark, [("s1", d(20), "u3", "search", None, None, None)]))
    late_search = _events(spark, [("s2", datetime(2024, 6, 9), "u1", "search", None, None, None)])
    new_items = events.where("ts >= '2024-05-30'").where("item_id IS NOT NULL")
    items = new_id_rows(events.where("item_id IS NOT NULL"), None, "item_id")
    cols = [*POPULAR_COLUMNS, "last_seen"]
    folded = fold_popularity(item_stats(old, WEIGHTS, 30.0, 7.0, items).select(*cols).toPandas(),
                             new_items.select("item_id", "event_type", "ts", "category").toPandas(), WEIGHTS, 30.0)
    full = item_stats(old.unionByName(new_items).unionByName(late_search), WEIGHTS, 30.0, 7.0, items).select(*cols).toPandas()
    got = folded.set_index("item_id").sort_index()
    want = full.set_index("item_id").sort_index()
    assert got["popularity"].to_numpy() == pytest.approx(want["popularity"].to_numpy())
    # the newest item event (May 31) has its full weight: u2's cart of a
    assert want.loc["a", "popularity"] == pytest.approx(3.0 + 1.0 * 2 ** (-30 / 30) + 5.0 * 2 ** (-29 / 30))
