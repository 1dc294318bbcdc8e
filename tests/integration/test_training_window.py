"""What training reads from the lake (lake.read_training_events): the last FRESHREC_TRAIN_WINDOW_DAYS
days, and past FRESHREC_TRAIN_MAX_EVENTS a sample of whole users drawn in Spark, the same on
every read, of the same columns and types as the unsampled read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.data import read_lake_events

from freshrec.lake import read_training_events

pytestmark = pytest.mark.integration

USERS, PER_USER, DAYS = 200, 10, 20


@pytest.fixture
def lake(spark, settings):
    """USERS users with PER_USER purchases each, spread over DAYS days, written by Spark as the
    clean step writes lake/events (partitioned by event_date, naive UTC timestamps)."""
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2026-01-01")
    n = USERS * PER_USER
    ts = start + pd.to_timedelta(rng.integers(0, DAYS * 86_400, n), unit="s")
    events = pd.DataFrame({"event_id": [f"e{i}" for i in range(n)], "user_id": [f"u{i // PER_USER}" for i in range(n)],
                           "item_id": [f"i{k}" for k in rng.integers(0, 50, n)], "event_type": "purchase", "ts": ts,
                           "category": "c", "price": 1.0, "event_date": ts.strftime("%Y-%m-%d")})
    spark.createDataFrame(events).write.partitionBy("event_date").parquet(str(settings.events_path))
    return settings


def test_the_whole_lake_by_default_and_only_the_last_days_with_a_window(lake):
    everything = read_training_events(lake)
    assert len(everything) == USERS * PER_USER
    newest = pd.Timestamp(everything["ts"].max())
    recent = read_training_events(lake.model_copy(update=dict(train_window_days=5)))
    assert len(recent) == int((everything["ts"] >= newest - pd.Timedelta(days=5)).sum()) < len(everything)
    before = pd.Timestamp("2026-01-10", tz="UTC")
    bounded = read_training_events(lake.model_copy(update=dict(train_window_days=5)), end=before)
    assert bounded["ts"].max() < before.tz_localize(None) and bounded["ts"].min() >= before.tz_localize(None) - pd.Timedelta(days=6)


def test_past_the_cap_a_sample_of_whole_users_reaches_the_driver(lake):
    capped = lake.model_copy(update=dict(train_max_events=500))
    sample = read_training_events(capped)
    assert 500 - PER_USER < len(sample) <= 500
    assert (sample.groupby("user_id").size() == PER_USER).all()  # users whole
    again = read_training_events(capped)
    pd.testing.assert_frame_equal(sample.sort_values("event_id").reset_index(drop=True),
                                  again.sort_values("event_id").reset_index(drop=True))
    full = read_lake_events(lake.events_path)
    assert list(sample.columns) == list(full.columns) and (sample.dtypes == full.dtypes).all()
    expected = full.loc[full["user_id"].isin(set(sample["user_id"]))].sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(sample.sort_values("event_id").reset_index(drop=True), expected)
    other = read_training_events(capped.model_copy(update=dict(model_seed=1)))
    assert set(other["user_id"]) != set(sample["user_id"])  # the seed draws other users
