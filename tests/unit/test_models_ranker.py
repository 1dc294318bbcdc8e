"""The two-stage ranker on a log with planted tastes: labels only from before the evaluation
window, lists that recover each group's items (and differ between groups), exclusions, pickling,
and one user scored alone getting the batch's list."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pandas as pd
import pytest
from freshrec.models.baselines import Popularity, top_k
from freshrec.models.candidates import HISTORY, CandidateConfig
from freshrec.models.data import SECONDS_PER_DAY, normalize_events
from freshrec.models.evaluate import evaluate
from freshrec.models.protocols import rolling_cutoffs
from freshrec.models.ranker import FEATURES, RankerConfig, TwoStageRanker, _negatives_kept, candidate_features
from freshrec.models.split import seen_items

pytest.importorskip("lightgbm")

N_GROUPS, GROUP_ITEMS, WINDOW_DAYS = 4, 6, 14
START = pd.Timestamp("2024-01-01", tz="UTC")


def planted_log(n_users: int = 240, n_noise: int = 30, days: int = 100, seed: int = 0) -> pd.DataFrame:
    """Users in N_GROUPS taste groups. On each visit (about weekly) a user buys two items of their
    group's GROUP_ITEMS and one item of a shared pool whose Zipf head is what sells most overall,
    so popularity lists the pool's head while the targets are mostly each group's own items."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, n_noise + 1)
    zipf /= zipf.sum()
    rows = []
    for u in range(n_users):
        group = u % N_GROUPS
        day = rng.uniform(0, 7)
        while day < days:
            for item in rng.choice(GROUP_ITEMS, size=2, replace=False):
                rows.append((f"u{u}", f"g{group}_{item}", day, f"c{group}"))
            rows.append((f"u{u}", f"n{rng.choice(n_noise, p=zipf)}", day, "noise"))
            day += rng.exponential(7.0)
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "day", "category"])
    return df.assign(event_type="purchase", ts=START + pd.to_timedelta(df.pop("day"), unit="D"), price=1.0)


EVENTS = normalize_events(planted_log())
CONFIG = RankerConfig(label_window_days=WINDOW_DAYS, n_label_windows=2, lightgbm={"n_estimators": 60, "min_child_samples": 20},
                      min_target_users=10, candidates=CandidateConfig(n_candidates=40, ease_items=30))


@pytest.fixture(scope="module")
def fold():
    return rolling_cutoffs(EVENTS, n_cutoffs=1, window_days=WINDOW_DAYS, exclude_seen="none", min_target_users=10)[0]


@pytest.fixture(scope="module")
def ranker(fold):
    return TwoStageRanker(CONFIG).fit(fold.eval_set.train, fold.eval_set.catalogue)


def test_labels_come_only_from_the_label_windows_before_the_cutoff(fold):
    es = fold.eval_set
    data = TwoStageRanker(CONFIG).training_set(es.train, es.catalogue)
    window = WINDOW_DAYS * SECONDS_PER_DAY
    assert set(data.window_start) == {es.cutoff - window, es.cutoff - 2 * window}
    ev = fold.split.train
    assert ev["t"].max() < es.cutoff  # the evaluation window is not even in what the ranker is given
    row_user = np.repeat(data.users, data.groups)
    row_start = np.repeat(data.window_start, data.groups)
    item_ids = es.catalogue.item_ids[data.items]
    for start in set(data.window_start):
        in_window = ev.loc[(ev["t"] >= start) & (ev["t"] < start + window)]
        taken = set(zip(in_window["user_id"], in_window["item_id"], strict=True))
        rows = np.flatnonzero(row_start == start)
        expected = [(row_user[r], item_ids[r]) in taken for r in rows]
        assert data.labels[rows].tolist() == expected
        before = ev.loc[ev["t"] < start].groupby(["user_id", "item_id"]).size()
        counts = [before.get((row_user[r], item_ids[r]), 0) for r in rows]
        assert data.features[rows, FEATURES.index("n_purchase")].tolist() == counts  # history only from before the window
    assert data.labels.sum() > 0 and (data.labels == 0).sum() > 0
    # windows reaching back before the log's first event have no history to draw candidates from
    many = TwoStageRanker(dataclasses.replace(CONFIG, n_label_windows=20)).training_set(es.train, es.catalogue)
    assert min(many.window_start) > ev["t"].min() and len(set(many.window_start)) < 20


def test_the_ranker_recovers_planted_tastes_and_beats_popularity(fold, ranker):
    es = fold.eval_set
    ranked = evaluate(ranker, es, ks=(10,))
    popular = evaluate(Popularity().fit(es.train, es.catalogue), es, ks=(10,))
    assert ranked.metrics["ndcg_at_10"] > popular.metrics["ndcg_at_10"] + 0.2
    top = es.catalogue.item_ids[ranked.recs[:, :GROUP_ITEMS]]
    group = np.array([int(u[1:]) % N_GROUPS for u in es.users])
    own_group = np.char.startswith(top.astype(str), np.char.add("g", group.astype(str))[:, None])
    returning = ~es.is_new
    assert own_group[returning].mean() > 0.8  # each group's lists are its planted items
    # no collapse to one list: the groups' items all reach someone's top 10
    assert len(np.unique(ranked.recs[:, :10])) >= N_GROUPS * GROUP_ITEMS
    assert len(np.unique(popular.recs[:, :10])) == 10


def test_pickling_round_trips_to_identical_lists(fold, ranker):
    es = fold.eval_set
    clone = pickle.loads(pickle.dumps(ranker))
    a, sa = ranker.recommend(es.histories, 10, es.exclude)
    b, sb = clone.recommend(es.histories, 10, es.exclude)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)


def test_the_compiled_trees_score_as_lightgbm_does_and_follow_a_replaced_model(fold, ranker):
    """Scoring runs the ranker's trees compiled to native code (lleaves); they give LightGBM's own
    predictions, missing values included, and a new model (refresh) is compiled anew."""
    from lightgbm import LGBMRanker

    es = fold.eval_set
    cands = ranker.generator.generate(es.histories, seen_items(es.histories, ranker.config.exclude_seen))
    x = candidate_features(cands, es.histories, ranker.generator)
    assert np.isnan(x).any(), "the features hold missing values, which the trees route as LightGBM does"
    np.testing.assert_allclose(ranker._predict(x), ranker.model.predict(x), rtol=0, atol=1e-9)
    assert "_compiled" not in pickle.loads(pickle.dumps(ranker)).__dict__, "native code is not pickled"

    clone = pickle.loads(pickle.dumps(ranker))
    rng = np.random.default_rng(0)
    other = LGBMRanker(objective="lambdarank", n_estimators=5, min_child_samples=5, verbose=-1).fit(
        x[:600], rng.integers(0, 2, 600), group=[100] * 6)
    before = clone._predict(x)
    clone.model = other
    np.testing.assert_allclose(clone._predict(x), other.predict(x), rtol=0, atol=1e-9)
    assert not np.allclose(clone._predict(x), before)


def test_one_thread_scores_as_every_core_does(fold, ranker):
    """Spark's workers score on one thread (single_threaded), the batch's own process on every core."""
    es = fold.eval_set
    assert ranker.config.num_threads == 0
    one = pickle.loads(pickle.dumps(ranker)).single_threaded()
    assert one.config.num_threads == 1
    assert np.array_equal(one.score(es.histories), ranker.score(es.histories))


def test_a_second_fit_gives_the_same_lists(fold, ranker):
    es = fold.eval_set
    again = TwoStageRanker(CONFIG).fit(es.train, es.catalogue)
    assert np.array_equal(again.recommend(es.histories, 10)[0], ranker.recommend(es.histories, 10)[0])


def test_exclusions_are_honoured_and_lists_stay_full(fold, ranker):
    hist = fold.eval_set.histories
    exclude = seen_items(hist, "all")
    items, scores = ranker.recommend(hist, 20, exclude)
    for row in range(len(hist)):
        assert not set(items[row]) & set(exclude[row])
    assert np.all(items >= 0) and np.all(np.isfinite(scores))
    assert all(len(set(row)) == 20 for row in items)


def test_recommend_is_the_top_of_score_and_one_user_alone_gets_the_batch_list(fold, ranker):
    hist = fold.eval_set.histories.subset(np.arange(25))
    exclude = seen_items(hist, "purchased")
    items, scores = ranker.recommend(hist, 15, exclude, batch_size=8)
    full, full_scores = top_k(ranker.score(hist), 15, exclude.rows, exclude.values)
    np.testing.assert_allclose(scores, full_scores, rtol=1e-6)
    # top_k picks among items tied at the k-th score arbitrarily (argpartition); above it, the same items
    above = scores > scores[:, -1:]
    assert np.array_equal(items[above], full[above]) and above.sum() > 5 * len(hist)
    one, _ = ranker.recommend(hist.subset(np.array([3])), 15, exclude.subset(np.array([3])))
    assert np.array_equal(one[0], items[3])


def test_random_labels_are_held_out_of_the_candidates_history(fold):
    es = fold.eval_set
    config = RankerConfig(label_protocol="random", label_fraction=0.25, min_target_users=10,
                          candidates=CandidateConfig(n_candidates=40, ease_items=30))
    data = TwoStageRanker(config).training_set(es.train, es.catalogue)
    positive = data.labels == 1
    assert positive.any()
    history = data.features[:, FEATURES.index(HISTORY[0]):FEATURES.index(HISTORY[0]) + 4]  # counts per event type
    assert np.all(history[positive] == 0)  # a held-out item leaves the user's history entirely
    assert (history[~positive].sum(axis=1) > 0).any()


def test_training_keeps_every_positive_and_at_most_n_negatives_per_group():
    rng = np.random.default_rng(3)
    sizes = np.array([5, 300, 40, 120])
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    labels = (rng.random(len(group_of)) < 0.05).astype(np.int32)
    kept = _negatives_kept(labels, group_of, 30, seed=0)
    assert kept[labels == 1].all()
    negatives = np.bincount(group_of[kept & (labels == 0)], minlength=len(sizes))
    assert negatives.tolist() == np.minimum(np.bincount(group_of[labels == 0], minlength=len(sizes)), 30).tolist()
    np.testing.assert_array_equal(kept, _negatives_kept(labels, group_of, 30, seed=0))
    assert not np.array_equal(kept, _negatives_kept(labels, group_of, 30, seed=1))
    assert _negatives_kept(labels, group_of, None, seed=0).all()
