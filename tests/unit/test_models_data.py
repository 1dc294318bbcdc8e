"""Catalogue, histories and the lake reader."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.data import Catalogue, Histories, Ragged, normalize_events, read_lake_events

EVENTS = pd.DataFrame({
    "user_id": [1, 1, 2, 2, 2],
    "item_id": ["a", "b", "a", "a", None],
    "event_type": ["view", "purchase", "purchase", "purchase", "search"],
    "ts": pd.to_datetime(["2024-01-02", "2024-01-01", "2024-01-01", "2024-01-03", "2024-01-03"], utc=True),
    "category": ["x", "y", "x", "z", None],
    "price": [2.0, 3.0, 4.0, 6.0, None],
})


def test_normalize_keeps_item_events_sorted_with_string_ids():
    ev = normalize_events(EVENTS)
    assert ev["user_id"].tolist() == ["1", "1", "2", "2"]
    assert ev["item_id"].tolist() == ["b", "a", "a", "a"]  # user 1 by time
    assert ev.groupby("user_id")["t"].apply(lambda s: s.is_monotonic_increasing).all()
    epoch_ms = EVENTS.assign(ts=EVENTS["ts"].astype("int64") // 1_000_000)
    assert normalize_events(epoch_ms)["t"].tolist() == ev["t"].tolist()
    with pytest.raises(ValueError):
        normalize_events(EVENTS.drop(columns=["ts"]))


def test_catalogue_features_and_item_table_override():
    cat = Catalogue.from_events(normalize_events(EVENTS))
    assert cat.item_ids.tolist() == ["a", "b"]
    assert cat.category.tolist() == ["x", "y"]  # a: x twice, z once
    assert cat.price.tolist() == [4.0, 3.0]  # median of 2, 4, 6
    items = pd.DataFrame({"item_id": ["a", "c"], "category": ["w", "y"], "price": [1.0, 9.0]})
    cat = Catalogue.from_events(normalize_events(EVENTS), items=items)
    assert cat.item_ids.tolist() == ["a", "b", "c"]
    assert cat.category.tolist() == ["w", "y", "y"]
    assert cat.price.tolist() == [1.0, 3.0, 9.0]
    assert cat.category_code.tolist() == [0, 1, 1] and cat.categories.tolist() == ["w", "y"]
    assert cat.lookup(["c", "nope"]).tolist() == [2, -1]


def test_histories_subset_filter_and_interaction_matrix():
    cat = Catalogue.from_events(normalize_events(EVENTS))
    h = Histories.from_events(EVENTS, cat, users=["2", "1", "3"])
    assert h.lengths.tolist() == [2, 2, 0]
    assert h.subset(np.array([1])).item.tolist() == [1, 0]
    assert h.filter(h.etype == 4).lengths.tolist() == [2, 1, 0]
    m = h.interaction_matrix(len(cat)).toarray()
    assert m.tolist() == [[10.0, 0.0], [1.0, 5.0], [0.0, 0.0]]


def test_ragged_round_trip():
    r = Ragged.from_pairs(np.array([2, 0, 2, 2]), np.array([5, 1, 5, 3]), 4)
    assert r.tolist() == [[1], [], [3, 5], []]
    assert r.subset(np.array([2, 0])).tolist() == [[3, 5], [1]]


def test_read_lake_events_reads_the_partitioned_parquet(tmp_path):
    lake = tmp_path / "events"
    df = EVENTS.assign(user_id=EVENTS["user_id"].astype(str), event_date=EVENTS["ts"].dt.date.astype(str),
                       event_id=[f"e{i}" for i in range(len(EVENTS))], source_file="f")
    df.to_parquet(lake, partition_cols=["event_date"])
    got = read_lake_events(lake, start=pd.Timestamp("2024-01-02", tz="UTC"))
    assert sorted(got.columns) == sorted(["event_id", "user_id", "item_id", "event_type", "ts", "category", "price"])
    assert len(got) == 3


def test_sample_readers_map_events_to_the_canonical_types():
    from pathlib import Path

    from freshrec.models.datasets import load_otto, load_retailrocket

    samples = Path(__file__).resolve().parents[2] / "data" / "samples"
    rr = load_retailrocket(samples / "retailrocket_sample_events.csv")
    assert len(rr) == 2771 and set(rr["event_type"]) == {"view", "add_to_cart", "purchase"}
    otto = load_otto(samples / "otto_sample_train.jsonl")
    assert len(otto) == 862 and otto["user_id"].nunique() == 20
    assert normalize_events(otto)["t"].min() > 1_600_000_000  # epoch seconds, not milliseconds


def test_unique_columns_is_np_unique_over_stacked_columns():
    from freshrec.models.data import unique_columns

    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 50, 5000):
        cols = [rng.integers(-3, 5, n), rng.integers(0, 3, n), rng.integers(10**12, 10**12 + 4, n)]
        want = np.unique(np.stack(cols), axis=1)
        got = np.stack(unique_columns(*cols))
        np.testing.assert_array_equal(got, want)
