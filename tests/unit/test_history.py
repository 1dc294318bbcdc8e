"""jobs/history.py: one order of a user's events and one exclusion rule, without Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.jobs.history import event_counts, item_events, last_events, scoring_frame, seen_pairs
from freshrec.models.data import Catalogue, Histories, normalize_events
from freshrec.models.split import seen_items

T0 = pd.Timestamp("2024-03-01 10:00", tz="UTC")


def _log() -> pd.DataFrame:
    rows = [  # (event_id, user, item, type, seconds after T0)
        ("e5", "u1", "b", "view", 0), ("e2", "u1", "a", "purchase", 0), ("e9", "u1", "a", "view", 0),
        ("e1", "u1", "c", "add_to_cart", 0.5), ("e3", "u1", "b", "view", 0),  # e3 and e5: the same content
        ("e4", "u2", "a", "view", 0), ("e0", "u2", None, "search", 0), ("e7", "u2", "a", "purchase", 0),
    ]
    return pd.DataFrame({"event_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
                         "item_id": [r[2] for r in rows], "event_type": [r[3] for r in rows],
                         "ts": [T0 + pd.Timedelta(seconds=r[4]) for r in rows]})


def test_ties_are_broken_by_event_id_whatever_the_input_order():
    want = ["e2", "e3", "e5", "e9", "e1"]  # the same second: by event id; e1 is half a second later
    for seed in range(5):
        shuffled = _log().sample(frac=1.0, random_state=seed)
        ev = item_events(shuffled)
        assert ev.loc[ev["user_id"] == "u1", "event_id"].tolist() == want
        assert ev["user_id"].tolist() == ["u1"] * 5 + ["u2"] * 2, "searches are not item events"
    assert last_events(_log(), 2).groupby("user_id")["event_id"].agg(list).to_dict() == {
        "u1": ["e9", "e1"], "u2": ["e4", "e7"]}


def test_an_event_read_twice_is_one_event_but_equal_events_stay_two():
    log = _log()
    twice = pd.concat([log, log.iloc[[0, 1]]], ignore_index=True)
    assert item_events(twice)["event_id"].tolist() == item_events(log)["event_id"].tolist()
    assert len(item_events(log)) == 7, "e3 and e5 share every field but their id: two events"


def test_training_histories_follow_the_same_order():
    log = _log()
    ev = normalize_events(log.sample(frac=1.0, random_state=1))
    cat = Catalogue.from_events(ev)
    h = Histories.from_events(ev, cat, users=["u1"], max_len=4)
    want = last_events(log, 4)
    want = want.loc[want["user_id"] == "u1"]
    assert cat.item_ids[h.item].tolist() == want["item_id"].tolist()
    assert h.t.tolist() == [int(T0.timestamp())] * 4


def test_scoring_frame_merges_two_sources_like_one():
    log = _log()
    batch, recent = log.iloc[:5], log.iloc[3:]  # e1 and e3 in both
    counts = pd.concat([event_counts(item_events(batch)), event_counts(item_events(recent))])
    merged = scoring_frame(["u2", "u1", "new"], pd.concat([batch, recent]), counts, 3, "purchased")
    whole = scoring_frame(["u2", "u1", "new"], log, event_counts(item_events(log)), 3, "purchased")
    for col in ("item_ids", "event_types", "t", "exclude"):
        assert [list(v) for v in merged[col]] == [list(v) for v in whole[col]]
    assert list(whole["item_ids"][1]) == ["b", "a", "c"] and list(whole["exclude"][1]) == ["a"]
    assert len(whole["item_ids"][2]) == 0 and len(whole["exclude"][2]) == 0


@pytest.mark.parametrize("mode", ["all", "purchased", "none"])
def test_training_exclusions_are_the_serving_rule(mode):
    log = _log()
    cat = Catalogue.from_events(normalize_events(log))
    h = Histories.from_events(log, cat, users=["u1", "u2"])
    trained = [sorted(cat.item_ids[seen_items(h, mode)[i]]) for i in range(2)]
    served = seen_pairs(event_counts(item_events(log)), mode).groupby("user_id")["item_id"].agg(sorted)
    assert trained == [served.get(u, []) for u in ("u1", "u2")]
    # per event or per (user, item) counts: the same pairs
    agg = event_counts(item_events(log)).groupby(["user_id", "item_id"], as_index=False).sum()
    assert sorted(map(tuple, seen_pairs(agg, mode).to_numpy())) == \
        sorted(map(tuple, seen_pairs(event_counts(item_events(log)), mode).to_numpy()))
    assert np.array_equal(seen_items(h, "none").values, np.zeros(0))
