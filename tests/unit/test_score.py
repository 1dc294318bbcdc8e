"""jobs/score.py's pure parts: per-partition scoring, popular and similar-items lists, without Spark."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.sparse as sp
from freshrec.jobs.score import _broadcast_value, popular_lists, score_arrow, score_frame, similar_items
from freshrec.models.baselines import EASE, CooccurrenceKNN, Popularity, RepeatBuy, UserKNN
from freshrec.models.data import Catalogue, Histories


def _log() -> pd.DataFrame:
    rows = [
        ("u1", "a", "purchase", 100), ("u1", "b", "view", 200), ("u1", "a", "purchase", 300),
        ("u2", "c", "view", 100), ("u2", "c", "add_to_cart", 150), ("u3", "b", "purchase", 120),
        ("u3", "d", "view", 130), ("u4", "a", "view", 140), ("u4", "e", "view", 160),
    ]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True)
    df["category"] = df["item_id"].map({"a": "x", "b": "x", "c": "y", "d": "y", "e": "z"})
    df["price"] = 1.0
    return df


def _fitted(cls):
    log = _log()
    catalogue = Catalogue.from_events(log)
    return cls().fit(Histories.from_events(log, catalogue), catalogue)


def _frame(users, seqs, exclude):
    return pd.DataFrame({
        "user_id": users,
        "item_ids": [np.array([i for i, _, _ in s], dtype=object) for s in seqs],
        "event_types": [np.array([e for _, e, _ in s], dtype=object) for s in seqs],
        "t": [np.array([t for _, _, t in s], dtype=np.int64) for s in seqs],
        "exclude": [np.array(x, dtype=object) for x in exclude],
    })


def test_score_frame_honours_history_exclusions_and_availability():
    rec = _fitted(RepeatBuy)
    frame = _frame(["u1", "new", "u2"],
                   [[("a", "purchase", 100), ("b", "view", 200), ("a", "purchase", 300)], [], [("c", "view", 100)]],
                   [[], [], ["c"]])
    unavailable = rec.catalogue.lookup(["d"])
    out = score_frame(rec, frame, n=3, now=400, unavailable=unavailable)
    assert list(out["user_id"]) == ["u1", "new", "u2"]
    lists = dict(zip(out["user_id"], out["items"], strict=True))
    assert lists["u1"][:2] == ["a", "b"], "repeat-buy ranks the user's own items first, most frequent first"
    assert lists["new"], "a user with no history still gets a (popularity) list"
    assert "c" not in lists["u2"], "an excluded (seen) item never appears"
    assert all("d" not in items for items in lists.values()), "an unavailable item never appears"
    for items, scores in zip(out["items"], out["scores"], strict=True):
        assert len(items) == len(scores) <= 3
        assert scores == sorted(scores, reverse=True)
        assert np.isfinite(scores).all()


def test_a_worker_unpickles_the_broadcast_once_and_scores_as_the_driver():
    """What each Spark Python worker does with the broadcast recommender (any kind the gate may
    publish): unpickle it once, on one thread, and give the driver's lists."""
    frame = _frame(["u1", "u3"], [[("a", "purchase", 100), ("b", "view", 200)], [("b", "purchase", 120)]], [[], []])
    for cls in (Popularity, RepeatBuy, CooccurrenceKNN, UserKNN, EASE):
        rec = _fitted(cls)
        payload = SimpleNamespace(value=pickle.dumps(rec))  # a Broadcast's .value, without a SparkContext
        worker = _broadcast_value(cls.__name__, payload)
        assert _broadcast_value(cls.__name__, payload) is worker, "unpickled once per worker"
        want, got = score_frame(rec, frame, n=3, now=400), score_frame(worker, frame, n=3, now=400)
        assert want.equals(got), cls.__name__


def test_the_spark_jobs_arrow_scoring_gives_the_lists_of_score_frame():
    """score_users' partitions score Arrow batches (score_arrow): the same lists, in the same
    order with the same scores, as score_frame, for every kind of recommender the gate may
    publish, with exclusions, unavailable items, unknown items and event types and new users."""
    import pyarrow as pa
    from freshrec.models.seqrec import SeqRec, SeqRecConfig

    frame = _frame(["u1", "new", "u2", "u9"],
                   [[("a", "purchase", 100), ("b", "view", 200), ("a", "purchase", 300)], [],
                    [("c", "view", 100), ("e", "zoom", 120)], [("zzz", "view", 10), ("d", "add_to_cart", 20)]],
                   [["b"], [], ["c"], ["zzz", "a"]])
    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    log = _log()
    catalogue = Catalogue.from_events(log)
    seqrec = SeqRec(SeqRecConfig(epochs=1, dim=8, batch_size=4, seed=0)).fit(Histories.from_events(log, catalogue), catalogue)
    for rec in [_fitted(cls) for cls in (Popularity, RepeatBuy, CooccurrenceKNN, UserKNN, EASE)] + [seqrec]:
        unavailable = rec.catalogue.lookup(["d"])
        want = score_frame(rec, frame, n=4, now=400, unavailable=unavailable)
        got = score_arrow(rec, batch, n=4, now=400, unavailable=unavailable)
        assert got.schema.names == ["user_id", "items", "scores"]
        got = got.to_pandas()
        assert list(got["user_id"]) == list(want["user_id"])
        assert [list(x) for x in got["items"]] == list(want["items"]), type(rec).__name__
        assert [list(x) for x in got["scores"]] == list(want["scores"]), type(rec).__name__
        assert all("d" not in items and items for items in want["items"])
        assert score_arrow(rec, batch.slice(0, 0), n=4, now=400).num_rows == 0


def test_score_frame_ignores_items_outside_the_catalogue_and_empty_frames():
    rec = _fitted(Popularity)
    out = score_frame(rec, _frame(["u9"], [[("zzz", "view", 10)]], [["zzz"]]), n=10, now=400)
    assert sorted(out["items"][0]) == sorted(rec.catalogue.item_ids.tolist())
    assert score_frame(rec, _frame([], [], []), n=10, now=400).empty


def test_similar_items_are_neighbours_then_category_then_popular():
    catalogue = Catalogue(item_ids=np.array(["a", "b", "c", "d", "e"], dtype=object),
                          category=np.array(["x", "x", "y", "y", ""], dtype=object), price=np.ones(5))
    sim = sp.csr_matrix(np.array([
        [0, 0.2, 0.9, 0, 0],
        [0.2, 0, 0, 0, 0],
        [0.9, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]))
    popularity = np.array([5.0, 1.0, 2.0, 3.0, 4.0])
    rows = dict(similar_items(sim, catalogue, popularity, n=3, unavailable=catalogue.lookup(["b"])))
    assert [i for i, _ in rows["a"]] == ["c", "e", "d"], "neighbours first (b is unavailable), then popular"
    assert rows["a"][0][1] == 0.9 and rows["a"][1][1] == 0.0
    assert [i for i, _ in rows["d"]] == ["c", "a", "e"], "no neighbours: its category, then overall popular"
    assert set(rows) == set(catalogue.item_ids), "every item gets a list"
    assert all(item not in [i for i, _ in lst] for item, lst in rows.items()), "never the item itself"
    assert all("b" not in [i for i, _ in lst] for lst in rows.values())


def test_similar_lists_are_written_in_blocks_as_the_rows_would_be(tmp_path):
    """similar_item_blocks in blocks of 2 items, written by write_list_blocks, gives the table that
    write_list_table writes from similar_items' rows."""
    import pyarrow.parquet as pq
    from freshrec.jobs.score import similar_item_blocks

    from freshrec.serving.publish import write_list_blocks, write_list_table

    catalogue = Catalogue(item_ids=np.array([f"i{k}" for k in range(7)], dtype=object),
                          category=np.array(["x", "x", "y", "y", "", "x", "y"], dtype=object), price=np.ones(7))
    sim = sp.random(7, 7, density=0.4, random_state=3, format="csr")
    popularity = np.arange(7, dtype=float)
    rows = write_list_table(tmp_path / "rows", "item_id", similar_items(sim, catalogue, popularity, 4), rows_per_file=3)
    blocks = write_list_blocks(tmp_path / "blocks", "item_id",
                               similar_item_blocks(sim, catalogue, popularity, 4, block=2), rows_per_file=3)
    assert len(list(blocks.glob("*.parquet"))) == 2  # 4 rows, then 3: whole blocks per file
    whole = pq.read_table(blocks).to_pylist()
    assert pq.read_table(rows).to_pylist() == whole and len(whole) == 7 and all(len(r["items"]) == 4 for r in whole)
    empty = write_list_blocks(tmp_path / "empty", "item_id", iter(()))
    assert pq.read_table(empty).schema.names == ["item_id", "items", "scores"] and pq.read_table(empty).num_rows == 0


def test_popular_lists_rank_available_items_overall_and_per_category():
    stats = pd.DataFrame({
        "item_id": ["a", "b", "c", "d", "e", "f"],
        "category": ["x", "x", "y", None, "y", "x"],
        "available": pd.array([True, None, True, True, False, True], dtype="boolean"),
        "n_events": [5, 9, 3, 7, 50, 9],
        "popularity": [4.0, 2.0, 2.0, 3.0, 99.0, 2.0],
    })
    lists = dict(popular_lists(stats, 3))
    assert list(lists) == [None, "x", "y"]
    # e is unavailable; b and f tie on popularity and events -> item id; c has fewer events
    assert lists[None] == [("a", 4.0), ("d", 3.0), ("b", 2.0)]
    assert lists["x"] == [("a", 4.0), ("b", 2.0), ("f", 2.0)]
    assert lists["y"] == [("c", 2.0)]


def test_popular_lists_match_a_full_sort_with_many_ties():
    """popular_lists sorts only the items that can make a list; the lists are those of a full sort."""
    rng = np.random.default_rng(3)
    n_items = 2_000
    stats = pd.DataFrame({
        "item_id": [f"i{j}" for j in rng.permutation(n_items)],
        "category": rng.choice(np.array(["a", "b", "c", None], dtype=object), n_items),
        "available": rng.random(n_items) > 0.1,
        "n_events": rng.integers(1, 4, n_items),
        "popularity": rng.integers(0, 30, n_items).astype(float),  # many ties on popularity and events
    })
    full = stats.loc[stats["available"]].sort_values(["popularity", "n_events", "item_id"], ascending=[False, False, True])
    want = {None: full.head(10)["item_id"].tolist()}
    want.update({c: g.head(10)["item_id"].tolist() for c, g in full.groupby("category")})
    got = {c: [i for i, _ in pairs] for c, pairs in popular_lists(stats, 10)}
    assert got == want
