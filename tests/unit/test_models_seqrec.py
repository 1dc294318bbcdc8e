"""The sequence model: determinism, refresh without retraining, new items, exclusions."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from freshrec.models.data import Catalogue, Histories
from freshrec.models.datasets import synthetic_sequential
from freshrec.models.seqrec import SeqRec, SeqRecConfig
from freshrec.models.split import build_eval_set, seen_items, time_split

CFG = SeqRecConfig(epochs=2, batch_size=64, dim=16, max_len=20, horizon_days=7, seed=0)


@pytest.fixture(scope="module")
def data():
    events = synthetic_sequential(n_users=150, n_items=60, n_categories=6, events_per_user=20, days=40, seed=2)
    split = time_split(events, window_days=7, min_target_users=5)
    return build_eval_set(split, "none")


@pytest.fixture(scope="module")
def model(data):
    return SeqRec(CFG).fit(data.train, data.catalogue)


def test_same_seed_same_scores_other_seed_other_scores(data, model):
    again = SeqRec(CFG).fit(data.train, data.catalogue)
    assert np.array_equal(model.score(data.histories), again.score(data.histories))
    other = SeqRec(SeqRecConfig(**{**CFG.__dict__, "seed": 1})).fit(data.train, data.catalogue)
    assert not np.allclose(model.score(data.histories), other.score(data.histories))
    assert len(model.history) == CFG.epochs and all(np.isfinite(r["loss"]) for r in model.history)


def test_training_restores_process_wide_torch_settings(data):
    threads = torch.get_num_threads()
    SeqRec(SeqRecConfig(**{**CFG.__dict__, "epochs": 1})).fit(data.train, data.catalogue)
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_scores_cover_the_catalogue_for_new_and_returning_users(data, model):
    scores = model.score(data.histories)
    assert scores.shape == (len(data), len(data.catalogue))
    assert np.isfinite(scores).all()
    empty = no_events(["nobody"], data)
    assert np.isfinite(model.score(empty)).all()
    assert model.encode_users(empty).shape == (1, CFG.dim)


def no_events(users, data):
    return Histories.from_events(pd.DataFrame(columns=["user_id", "item_id", "event_type", "ts"]), data.catalogue,
                                 users=users, now=data.cutoff)


def _sequence(user, items, start, catalogue):
    rows = [{"user_id": user, "item_id": item, "event_type": "purchase", "ts": start + pd.Timedelta(hours=i),
             "category": catalogue.category[catalogue.index[item]], "price": 3.0} for i, item in enumerate(items)]
    return pd.DataFrame(rows)


def test_a_new_users_sequence_is_scored_without_retraining(data, model):
    before = copy.deepcopy(model.state_dict())
    start = pd.Timestamp(data.cutoff - 2 * 86400, unit="s", tz="UTC")
    item = data.catalogue.item_ids[5]
    seq = Histories.from_events(_sequence("first-timer", [item, item, item], start, data.catalogue), data.catalogue,
                                now=data.cutoff)
    empty = no_events(["first-timer"], data)
    with_seq, without = model.score(seq)[0], model.score(empty)[0]
    # three recent purchases of the item make it one of the first suggestions; without them it is not
    assert (with_seq > with_seq[5]).sum() < 3
    assert (without > without[5]).sum() > (with_seq > with_seq[5]).sum()
    assert not np.allclose(model.encode_users(seq), model.encode_users(empty))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_refreshing_a_known_users_sequence_changes_their_list(data, model):
    hist = data.histories.subset(np.array([int(np.flatnonzero(~data.is_new)[0])]))
    user = hist.user_ids[0]
    base = model.score(hist)[0]
    known = set(hist.item.tolist())
    new_item = next(i for i in np.argsort(base) if i not in known)  # a poorly ranked item the user never touched
    item_id = data.catalogue.item_ids[new_item]
    fresh = pd.concat([
        pd.DataFrame({"user_id": user, "item_id": data.catalogue.item_ids[hist.item], "event_type": "purchase",
                      "ts": pd.to_datetime(hist.t, unit="s", utc=True),
                      "category": data.catalogue.category[hist.item], "price": 1.0}),
        _sequence(user, [item_id] * 3, pd.Timestamp(data.cutoff - 3600 * 5, unit="s", tz="UTC"), data.catalogue),
    ])
    refreshed = model.score(Histories.from_events(fresh, data.catalogue, now=data.cutoff))[0]
    assert (refreshed > refreshed[new_item]).sum() < (base > base[new_item]).sum()


def test_a_new_item_is_scored_from_its_category_and_price(data, model):
    old = data.catalogue
    catalogue = Catalogue(item_ids=np.append(old.item_ids, "zz-brand-new"), category=np.append(old.category, old.category[0]),
                          price=np.append(old.price, 2.0))
    fresh = copy.deepcopy(model).prepare(catalogue, data.train)  # appended: the histories' indices still hold
    new = len(old)
    assert fresh.item_row[new] == 1  # the unknown-ID row: category and price carry it
    scores = fresh.score(no_events(["someone"], data))
    assert scores.shape == (1, len(catalogue)) and np.isfinite(scores[0, new])
    # a new item of a category scores differently from one of another category
    another = next(c for c in old.category if c != old.category[0])
    other = Catalogue(item_ids=catalogue.item_ids, category=np.append(old.category, another), price=catalogue.price)
    assert copy.deepcopy(model).prepare(other, data.train).score(no_events(["someone"], data))[0, new] != scores[0, new]


@pytest.mark.parametrize("mode", ["all", "purchased"])
def test_exclusion_modes_train_with_sampled_softmax_and_never_list_seen_items(mode):
    events = synthetic_sequential(n_users=80, n_items=40, events_per_user=15, days=30, seed=4)
    es = build_eval_set(time_split(events, window_days=7, min_target_users=5), mode)
    cfg = SeqRecConfig(**{**CFG.__dict__, "epochs": 1, "exclude_seen": mode, "full_softmax_max_items": 10, "n_negatives": 16})
    model = SeqRec(cfg).fit(es.train, es.catalogue)
    items, _ = model.recommend(es.histories, 10, exclude=seen_items(es.histories, mode))
    seen = seen_items(es.histories, mode)
    for u in range(len(es)):
        assert not set(items[u].tolist()) & set(seen[u].tolist())


def test_pickle_round_trip_scores_the_same(data, model):
    clone = pickle.loads(pickle.dumps(model))
    assert np.array_equal(clone.score(data.histories), model.score(data.histories))


def test_fast_top_k_gives_the_lists_of_score_plus_top_k(data, model):
    from freshrec.models.baselines import Recommender

    for exclude in (None, data.exclude, seen_items(data.histories, "all")):
        fast_items, fast_vals = model.recommend(data.histories, 15, exclude=exclude, batch_size=37)
        ref_items, ref_vals = Recommender.recommend(model, data.histories, 15, exclude=exclude, batch_size=37)
        np.testing.assert_allclose(fast_vals, ref_vals, rtol=1e-4, atol=1e-5)
        finite = np.isfinite(ref_vals)
        # the same items, except where two scores tie (then either order is a correct list)
        ties = np.zeros_like(finite)
        ties[:, 1:] |= np.isclose(ref_vals[:, 1:], ref_vals[:, :-1], rtol=1e-6)
        ties[:, :-1] |= ties[:, 1:]
        assert np.array_equal(fast_items[finite & ~ties], ref_items[finite & ~ties])
        assert (fast_items[~finite] == -1).all()


def test_one_day_explore_logits_match_the_per_row_gather(data, model):
    hist = data.histories.subset(np.arange(20))
    seq, _ = model._sequence_batch(hist, hist.offsets[1:], hist.offsets[:-1], hist.now, model._event_cats(hist))
    with torch.no_grad():
        h = model.net.encode(model._tensors(seq))
        vec, bias = model.net.items(*model._item_tensors(np.arange(len(model.catalogue))))
        stats, rows = model._stats(hist.now)
        assert stats.shape[0] == 1
        one = model.net.explore_logits(h, vec, bias, stats, rows)
        two = model.net.explore_logits(h, vec, bias, torch.cat([stats, stats]), rows)  # forces the gather path
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)


def test_the_blocked_top_k_gives_torchs_top_values_with_ties_and_minus_infinity():
    from freshrec.models.seqrec import top_k_rows

    gen = torch.Generator().manual_seed(0)
    for n in (50, 399, 400, 401, 403, 3935):  # narrower than k blocks, whole blocks, a ragged tail
        x = torch.randn(64, n, generator=gen)
        x[torch.rand(64, n, generator=gen) < 0.3] = float("-inf")  # excluded items
        x[:, :7] = 0.5  # ties
        x[5] = float("-inf")  # nothing left to show
        k = min(100, n)
        want, _ = torch.topk(x, k, dim=1)
        got, idx = top_k_rows(x, k)
        assert torch.equal(got, want), n
        assert torch.equal(torch.gather(x, 1, idx), got)
        assert all(len(set(row.tolist())) == k for row in idx)
