"""The time split, the evaluation set and seen-item exclusion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.data import Catalogue, Histories, normalize_events
from freshrec.models.split import build_eval_set, holdout_window, seen_items, time_split

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-03-01", tz="UTC")


def events(rows):
    """rows: (user, item, type, day offset[, category])"""
    return pd.DataFrame([
        {"user_id": r[0], "item_id": r[1], "event_type": r[2], "ts": T0 + r[3] * DAY,
         "category": r[4] if len(r) > 4 else "c", "price": 1.0} for r in rows])


LOG = events([
    ("a", "x", "purchase", 0), ("a", "y", "view", 1), ("a", "x", "purchase", 5),
    ("b", "y", "purchase", 2), ("b", "z", "add_to_cart", 3),
    # window (day 20 is the newest event; a 7-day window starts at day 13)
    ("a", "x", "purchase", 14), ("a", "y", "purchase", 15), ("a", "w", "purchase", 16),
    ("b", "y", "view", 15),
    ("c", "z", "purchase", 20),
    ("d", "q", "search", 18),
])


def test_cutoff_is_end_minus_window_and_train_is_strictly_before():
    split = time_split(LOG, window_days=7, min_target_users=1)
    end = int(pd.Timestamp(T0 + 20 * DAY).timestamp())
    assert split.end == end
    assert split.cutoff == end - 7 * 86400
    assert (split.train["t"] < split.cutoff).all()
    assert (split.window["t"] >= split.cutoff).all()
    assert len(split.train) + len(split.window) == 10  # the search has no item: dropped
    assert split.target_event_types == ("purchase", "add_to_cart")
    # b only viewed in the window: no purchase/cart target
    assert split.targets.to_dict("records") == [
        {"user_id": "a", "item_id": "w"}, {"user_id": "a", "item_id": "x"}, {"user_id": "a", "item_id": "y"},
        {"user_id": "c", "item_id": "z"}]


def test_too_few_purchases_fall_back_to_all_item_events():
    split = time_split(LOG, window_days=7, min_target_users=3)
    assert split.target_event_types == ("view", "add_to_cart", "purchase")
    assert {"user_id": "b", "item_id": "y"} in split.targets.to_dict("records")


def test_window_must_leave_training_data():
    with pytest.raises(ValueError):
        time_split(LOG, window_days=100)
    with pytest.raises(ValueError):
        time_split(LOG, window_days=0)


def _targets_by_user(es):
    ids = es.catalogue.item_ids
    return {u: sorted(ids[t] if t >= 0 else "?" for t in es.targets[i]) for i, u in enumerate(es.users)}


def test_eval_set_none_keeps_repeats_and_flags_new_users():
    es = build_eval_set(time_split(LOG, 7, min_target_users=1), "none")
    assert list(es.users) == ["a", "c"]
    assert es.is_new.tolist() == [False, True]
    # w is new in the window: outside the catalogue but still a target (no one can hit it)
    assert _targets_by_user(es) == {"a": ["?", "x", "y"], "c": ["z"]}
    assert len(es.exclude.values) == 0


def test_eval_set_purchased_and_all_exclusions():
    split = time_split(LOG, 7, min_target_users=1)
    purchased = build_eval_set(split, "purchased")
    ids = purchased.catalogue.item_ids
    assert _targets_by_user(purchased)["a"] == ["?", "y"]  # x was purchased before: excluded
    assert ids[purchased.exclude[0]].tolist() == ["x"]
    every = build_eval_set(split, "all")
    assert _targets_by_user(every)["a"] == ["?"]  # x purchased, y viewed: both excluded
    assert sorted(ids[every.exclude[0]].tolist()) == ["x", "y"]


def test_users_left_without_targets_are_dropped():
    log = events([("a", "x", "purchase", 0), ("a", "x", "purchase", 10), ("b", "y", "purchase", 0), ("b", "z", "purchase", 10)])
    es = build_eval_set(time_split(log, 5, min_target_users=1), "purchased")
    assert list(es.users) == ["b"]


def test_eval_set_does_not_depend_on_row_order():
    shuffled = LOG.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a = build_eval_set(time_split(LOG, 7, min_target_users=1), "none")
    b = build_eval_set(time_split(shuffled, 7, min_target_users=1), "none")
    assert list(a.users) == list(b.users)
    assert np.array_equal(a.targets.values, b.targets.values)
    assert np.array_equal(a.histories.item, b.histories.item)


def test_seen_items_modes():
    cat = Catalogue.from_events(normalize_events(LOG))
    h = Histories.from_events(LOG, cat, users=["a", "b", "new"])
    ids = cat.item_ids
    assert [sorted(ids[seen_items(h, "all")[i]]) for i in range(3)] == [["w", "x", "y"], ["y", "z"], []]
    assert [sorted(ids[seen_items(h, "purchased")[i]]) for i in range(3)] == [["w", "x", "y"], ["y"], []]
    assert len(seen_items(h, "none").values) == 0
    with pytest.raises(ValueError):
        seen_items(h, "some")


def test_histories_keep_the_last_events_in_time_order():
    cat = Catalogue.from_events(normalize_events(LOG))
    h = Histories.from_events(LOG, cat, users=["a"], max_len=2)
    assert cat.item_ids[h.item].tolist() == ["y", "w"]
    assert np.all(np.diff(h.t) >= 0)


def test_holdout_window_hides_validation_targets_from_training():
    split = time_split(LOG, 7, min_target_users=1)
    es = build_eval_set(split, "none")
    # inner window: the 4 days before the cutoff (days 9..12 hold no events; use a longer one)
    fit, val = holdout_window(es.train, es.catalogue, window_days=10, exclude_seen="none", min_target_users=1)
    assert val.cutoff == split.cutoff - 10 * 86400
    assert (val.histories.t < val.cutoff).all()
    val_users = set(val.users)
    assert val_users == {"a", "b"}
    rows = fit.row_of_event
    in_window = fit.t >= val.cutoff
    assert not np.isin(fit.user_ids[rows[in_window]], list(val_users)).any()
