"""Rolling-origin cutoffs, the random per-user holdout, the protocol choice and thin evidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.data import SECONDS_PER_DAY, Catalogue, normalize_events
from freshrec.models.datasets import synthetic_latent, synthetic_sequential
from freshrec.models.protocols import choose_protocol, random_holdout, rolling_cutoffs, thin_evidence
from freshrec.models.split import build_eval_set, time_split

DAY = pd.Timedelta(days=1)
T0 = pd.Timestamp("2024-03-01", tz="UTC")
SEQ = normalize_events(synthetic_sequential(n_users=300, days=90, seed=3))


def events(rows):
    """rows: (user, item, type, day offset)"""
    return pd.DataFrame([{"user_id": u, "item_id": i, "event_type": e, "ts": T0 + d * DAY, "category": "c", "price": 1.0}
                         for u, i, e, d in rows])


def targets_by_user(es):
    ids = es.catalogue.item_ids
    return {u: sorted(ids[t] if t >= 0 else "?" for t in es.targets[i]) for i, u in enumerate(es.users)}


def test_rolling_cutoffs_never_leak_and_tile_the_last_windows():
    folds = rolling_cutoffs(SEQ, n_cutoffs=3, window_days=14, min_target_users=10)
    end, w = int(SEQ["t"].max()), 14 * SECONDS_PER_DAY
    assert [f.cutoff for f in folds] == [end - 3 * w, end - 2 * w, end - w]  # newest last, a window apart
    for i, f in enumerate(folds):
        assert (f.split.train["t"] < f.cutoff).all()
        assert len(f.split.train) == int((SEQ["t"] < f.cutoff).sum())  # every earlier event trains
        assert (f.eval_set.train.t < f.cutoff).all() and (f.eval_set.histories.t < f.cutoff).all()
        assert (f.eval_set.histories.now == f.cutoff).all()
        window_t = f.split.window["t"]
        assert (window_t >= f.cutoff).all()
        assert (window_t < f.cutoff + w).all() if i < 2 else (window_t <= end).all()
        assert f.n_test_users == len(f.eval_set) > 0
    # the three windows are disjoint and hold every event from the oldest cutoff on
    assert sum(len(f.split.window) for f in folds) == int((SEQ["t"] >= folds[0].cutoff).sum())
    assert folds[0].n_train_events < folds[1].n_train_events < folds[2].n_train_events


@pytest.mark.parametrize("exclude_seen", ["all", "purchased", "none"])
def test_newest_fold_is_todays_time_split(exclude_seen):
    fold = rolling_cutoffs(SEQ, n_cutoffs=3, window_days=14, exclude_seen=exclude_seen, min_target_users=10)[-1]
    split = time_split(SEQ, 14, min_target_users=10)
    pd.testing.assert_frame_equal(fold.split.train, split.train)
    pd.testing.assert_frame_equal(fold.split.window, split.window)
    assert (fold.cutoff, fold.split.end, fold.split.target_event_types) == (split.cutoff, split.end, split.target_event_types)
    # the EvalSet pipeline.prepare_window builds for this window
    today = build_eval_set(split, exclude_seen, Catalogue.from_events(split.train))
    ours = fold.eval_set
    assert list(ours.users) == list(today.users)
    assert ours.targets.tolist() == today.targets.tolist()
    assert ours.exclude.tolist() == today.exclude.tolist()
    assert ours.is_new.tolist() == today.is_new.tolist()
    assert list(ours.catalogue.item_ids) == list(today.catalogue.item_ids)
    assert ours.train.offsets.tolist() == today.train.offsets.tolist()


LOG = events([
    ("a", "x", "purchase", 0), ("b", "y", "purchase", 1),
    ("a", "y", "purchase", 10), ("a", "z", "view", 12),  # fold 0's window [10, 20)
    ("b", "x", "purchase", 20),  # exactly the next cutoff: fold 1, not fold 0
    ("c", "z", "add_to_cart", 25), ("a", "x", "purchase", 30),  # fold 1's window [20, 30], 30 is the newest event
])


def test_hand_built_folds_targets_boundaries_and_exclusion():
    f0, f1 = rolling_cutoffs(LOG, n_cutoffs=2, window_days=10, exclude_seen="purchased", min_target_users=1)
    assert f0.cutoff == int((T0 + 10 * DAY).timestamp()) and f1.cutoff == int((T0 + 20 * DAY).timestamp())
    assert f0.split.window["t"].tolist() == [f0.cutoff, f0.cutoff + 2 * SECONDS_PER_DAY]
    assert targets_by_user(f0.eval_set) == {"a": ["y"]}  # a's view of z is no target
    # fold 1 trains on fold 0's window: a purchased y and x before, so x is excluded for a
    assert targets_by_user(f1.eval_set) == {"b": ["x"], "c": ["z"]}  # z joined the catalogue through a's view
    assert f1.eval_set.is_new.tolist() == [False, True]


def test_each_fold_falls_back_to_every_positive_event_on_its_own():
    log = events([("a", "x", "purchase", 0), ("a", "y", "view", 5), ("b", "x", "purchase", 12)])
    f0, f1 = rolling_cutoffs(log, n_cutoffs=2, window_days=5, exclude_seen="none", min_target_users=1)
    assert f0.eval_set.target_event_types == ("view", "add_to_cart", "purchase")
    assert targets_by_user(f0.eval_set) == {"a": ["?"]}  # y is first seen in the window: outside the catalogue
    assert f1.eval_set.target_event_types == ("purchase", "add_to_cart")


def test_a_fold_with_an_empty_window_has_no_test_users():
    log = events([("a", "x", "purchase", 0), ("b", "y", "purchase", 1), ("a", "y", "purchase", 30)])
    f0, f1 = rolling_cutoffs(log, n_cutoffs=2, window_days=10, min_target_users=1)
    assert (f0.n_test_users, f1.n_test_users) == (0, 1)
    assert thin_evidence(f0.eval_set)[1].startswith("thin evidence: 0 test users")


def test_overlapping_steps_and_a_log_too_short():
    folds = rolling_cutoffs(SEQ, n_cutoffs=4, window_days=14, step_days=7, min_target_users=10)
    assert np.diff([f.cutoff for f in folds]).tolist() == [7 * SECONDS_PER_DAY] * 3
    span = (SEQ["t"].max() - SEQ["t"].min()) / SECONDS_PER_DAY
    with pytest.raises(ValueError, match="spans"):
        rolling_cutoffs(SEQ, n_cutoffs=3, window_days=span / 3 + 0.1)
    with pytest.raises(ValueError):
        rolling_cutoffs(SEQ, n_cutoffs=0)


RATINGS = normalize_events(synthetic_latent(n_users=200, n_items=300, events_per_user=25, seed=1))


def test_random_holdout_holds_out_a_fifth_of_each_users_items():
    es = random_holdout(RATINGS, exclude_seen="all", seed=0)
    assert len(es) == 200 and not es.is_new.any()
    assert set(es.targets.lengths.tolist()) == {5}  # 25 distinct items each: round(0.2 x 25)
    for i in range(len(es)):
        train_items = set(es.histories.item[es.histories.offsets[i]:es.histories.offsets[i + 1]].tolist())
        assert len(train_items) == 20
        assert not train_items & set(es.targets[i].tolist())  # every event of a held-out item left training
        assert set(es.exclude[i].tolist()) == train_items
    # the held-out events are gone from training, nothing else is
    assert len(es.train.t) == len(RATINGS) - 200 * 5


def test_random_holdout_is_seeded():
    a, b = random_holdout(RATINGS, seed=0), random_holdout(RATINGS, seed=0)
    assert targets_by_user(a) == targets_by_user(b)
    assert targets_by_user(random_holdout(RATINGS, seed=1)) != targets_by_user(a)


def test_random_holdout_small_users_and_rounding():
    log = events([("solo", "x", "purchase", d) for d in range(6)]  # one item, 6 events: nothing to hold out
                 + [("pair", i, "purchase", d) for d, i in enumerate("xyxyx")]  # 2 items: holds out 1
                 + [("short", i, "purchase", d) for d, i in enumerate("xyz")]  # 3 events < min_events
                 + [("ten", f"i{j}", "purchase", j) for j in range(10)]
                 + [("eight", f"i{j}", "purchase", j) for j in range(8)])  # 0.2 x 8 = 1.6 rounds to 2
    es = random_holdout(log, fraction=0.2, min_events=5, exclude_seen="none", min_target_users=1, seed=4)
    assert list(es.users) == ["eight", "pair", "ten"]
    assert es.targets.lengths.tolist() == [2, 1, 2]
    assert random_holdout(log, fraction=0.5, min_target_users=1, seed=4).targets.lengths.tolist() == [4, 1, 5]
    with pytest.raises(ValueError):
        random_holdout(log, fraction=1.0)


def test_random_holdout_targets_follow_the_target_event_types():
    log = events([("u", "v1", "view", 0), ("u", "v2", "view", 1), ("u", "v3", "view", 2),
                  ("u", "p1", "purchase", 3), ("u", "p2", "purchase", 4)])
    items = pd.DataFrame({"item_id": ["v1", "v2", "v3", "p1", "p2"]})  # held-out items stay in the catalogue
    es = random_holdout(log, fraction=0.4, min_target_users=1, items=items, seed=0)
    assert len(targets_by_user(es)["u"]) == 1 and targets_by_user(es)["u"][0].startswith("p")
    viewed_only = random_holdout(log, fraction=0.4, min_target_users=2, items=items, seed=0)  # too few buyers: views count
    assert viewed_only.target_event_types == ("view", "add_to_cart", "purchase")
    assert len(targets_by_user(viewed_only)["u"]) == 2


def ratings_dump(one_timestamp: bool, years: int = 3, n_users: int = 400, seed: int = 0) -> pd.DataFrame:
    """MovieLens-shaped: each user rates their items in one sitting; sittings spread over years."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = T0 + pd.Timedelta(days=float(rng.exponential(years * 365 / 6)) % (years * 365))
        for j in range(20):
            offset = pd.Timedelta(0) if one_timestamp else pd.Timedelta(seconds=int(j * 40))
            rows.append((f"u{u}", f"m{rng.integers(500)}", "purchase", start + offset))
    rows.append(("last", "m0", "purchase", T0 + pd.Timedelta(days=years * 365)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])


def test_choose_protocol():
    name, reason = choose_protocol(SEQ)
    assert name == "time" and "time-dense" in reason
    name, reason = choose_protocol(ratings_dump(one_timestamp=True))
    assert name == "random" and reason.startswith("event order within users is unknown: 100% of users")
    name, reason = choose_protocol(ratings_dump(one_timestamp=False))
    assert name == "random" and reason.startswith("the log is not time-dense: 0% of users with 2+ events have one timestamp")
    short = SEQ.loc[SEQ["t"] < SEQ["t"].min() + 20 * SECONDS_PER_DAY]
    name, reason = choose_protocol(short)
    assert name == "random" and "less than two 14-day windows" in reason
    raw = synthetic_sequential(n_users=300, days=90, seed=3)
    assert choose_protocol(raw.sample(frac=1.0, random_state=0)) == choose_protocol(raw) == choose_protocol(SEQ)
    # MovieLens-100k: ratings spread over months, 9.7% of users in the last fortnight, no repeats
    name, reason = choose_protocol(synthetic_latent(n_users=300, days=90, seed=3))
    assert name == "random" and reason.startswith("a ratings-style log: one event type (purchase) and no user has an item twice")


def test_thin_evidence():
    es = rolling_cutoffs(SEQ, n_cutoffs=1, window_days=14, min_target_users=10)[0].eval_set
    n = len(es)
    thin, reason = thin_evidence(es, min_test_users=n + 1)
    assert thin and reason.startswith(f"thin evidence: {n} test users (0 new, {n} returning) at the cutoff ")
    assert reason.endswith(f"fewer than the {n + 1} needed")
    thin, reason = thin_evidence(es, min_test_users=n)
    assert not thin and reason.endswith(f"at least the {n} needed")
    assert thin_evidence(es)[0] == (n < 200)
