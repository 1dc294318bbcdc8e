"""Online refresh of a trained model (SeqRec.refresh, TwoStageRanker.refresh): the item table
grows without moving a score, a new best-seller is learned as its own ID, and the same inputs
and seed give the same weights."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from freshrec.models.data import Catalogue, Histories, normalize_events
from freshrec.models.datasets import synthetic_sequential
from freshrec.models.seqrec import UNK, SeqRec, SeqRecConfig

CFG = SeqRecConfig(epochs=2, batch_size=64, dim=16, max_len=20, horizon_days=7, seed=0)
HOT = "zz-hot-new"


def _with_hot_item(events: pd.DataFrame, since: pd.Timestamp, buyers: int = 60) -> pd.DataFrame:
    """``events`` plus a brand-new item of a new category that ``buyers`` users buy, one an hour
    from ``since`` on: a steady best-seller of the new events."""
    users = sorted(events["user_id"].unique())[:buyers]
    hot = pd.DataFrame({"user_id": users, "item_id": HOT, "event_type": "purchase", "category": "new-category", "price": 4.0,
                        "ts": [since + pd.Timedelta(hours=1 + 2 * i) for i in range(len(users))]})
    return pd.concat([events, hot], ignore_index=True)


@pytest.fixture(scope="module")
def log():
    events = synthetic_sequential(n_users=150, n_items=60, n_categories=6, events_per_user=20, days=40, seed=2)
    since = pd.Timestamp(events["ts"].max()) - pd.Timedelta(days=5)
    old = normalize_events(events.loc[events["ts"] < since])
    new = normalize_events(_with_hot_item(events, since))
    old_cat, new_cat = Catalogue.from_events(old), Catalogue.from_events(new)
    return {"since": int(since.timestamp()), "old_cat": old_cat, "old": Histories.from_events(old, old_cat),
            "new_cat": new_cat, "new": Histories.from_events(new, new_cat), "events": new}


@pytest.fixture(scope="module")
def champion(log):
    return SeqRec(CFG).fit(log["old"], log["old_cat"])


def test_extending_the_item_table_changes_no_score(log, champion):
    static = copy.deepcopy(champion).prepare(log["new_cat"], log["new"])
    grown = copy.deepcopy(champion)
    added = grown.extend(log["new_cat"], log["new"], log["since"])
    grown.prepare(log["new_cat"], log["new"])
    hot = int(log["new_cat"].lookup([HOT])[0])
    assert added == {"items_added": 1, "categories_added": 1}
    assert static.item_row[hot] == UNK and grown.item_row[hot] != UNK
    assert grown.net.item_emb.num_embeddings == champion.net.item_emb.num_embeddings + 1
    assert np.array_equal(static.score(log["new"]), grown.score(log["new"]))  # every item, the new one included


def test_a_new_best_seller_is_learned_as_its_own_id(log, champion):
    static = copy.deepcopy(champion).prepare(log["new_cat"], log["new"])
    fresh = copy.deepcopy(champion)
    report = fresh.refresh(log["new"], log["new_cat"], log["since"], steps=100, replay_share=0.5)
    hot = int(log["new_cat"].lookup([HOT])[0])
    assert report["items_added"] == 1 and report["steps"] == 100 and report["replay_examples"] > 0
    row = fresh.item_row[hot]
    assert not torch.equal(fresh.net.item_emb.weight[row], fresh.net.item_emb.weight[UNK])  # its own row moved
    non_buyers = log["new"].subset(np.flatnonzero(~np.isin(log["new"].user_ids, sorted(log["new"].user_ids)[:60])))
    before, after = static.score(non_buyers), fresh.score(non_buyers)
    rank_before = (before > before[:, [hot]]).sum(axis=1)
    rank_after = (after > after[:, [hot]]).sum(axis=1)
    assert np.median(rank_after) < 5 and np.median(rank_after) < np.median(rank_before)


def test_a_refresh_with_the_same_inputs_and_seed_gives_the_same_weights(log, champion):
    one, two = copy.deepcopy(champion), copy.deepcopy(champion)
    one.refresh(log["new"], log["new_cat"], log["since"], steps=10)
    two.refresh(log["new"], log["new_cat"], log["since"], steps=10)
    for name, tensor in one.state_dict().items():
        assert torch.equal(tensor, two.state_dict()[name]), name
    three = copy.deepcopy(champion)
    three.refresh(log["new"], log["new_cat"], log["since"], steps=10, seed=7)
    assert not torch.equal(three.net.item_emb.weight, one.net.item_emb.weight)


def test_the_ranker_adds_trees_and_lists_a_new_best_seller(log):
    pytest.importorskip("lightgbm")
    from freshrec.models.candidates import CandidateConfig
    from freshrec.models.ranker import RankerConfig, TwoStageRanker

    cfg = RankerConfig(label_window_days=7, n_label_windows=2, min_target_users=10, lightgbm={"n_estimators": 30, "min_child_samples": 20},
                       candidates=CandidateConfig(n_candidates=40, ease_items=30))
    ranker = TwoStageRanker(cfg).fit(log["old"], log["old_cat"])
    trees = ranker.model.booster_.num_trees()
    one, two = copy.deepcopy(ranker), copy.deepcopy(ranker)
    report = one.refresh(log["new"], log["new_cat"], log["since"], trees=10)
    two.refresh(log["new"], log["new_cat"], log["since"], trees=10)
    assert report["fresh_groups"] > 0 and report["replay_groups"] > 0
    assert one.model.booster_.num_trees() == ranker.best_iteration + 10 <= trees + 10
    lists, _ = one.recommend(log["new"], 10)
    assert np.array_equal(lists, two.recommend(log["new"], 10)[0])
    hot = int(log["new_cat"].lookup([HOT])[0])
    assert (lists == hot).any(axis=1).sum() >= 5  # a candidate as itself: the sources were refitted on the new events


def test_a_chained_ranker_refresh_reuses_the_sources_fitted_on_the_events_before_the_new_ones(log):
    """A refresh ends by fitting the candidate sources on every event it was given; the next
    refresh's new labels need candidates from exactly those events, so it takes them as they
    are (in their own catalogue) instead of fitting them again: same groups, same features."""
    pytest.importorskip("lightgbm")
    from freshrec.models.candidates import CandidateConfig
    from freshrec.models.ranker import RankerConfig, TwoStageRanker

    cfg = RankerConfig(label_window_days=7, n_label_windows=1, min_target_users=10, lightgbm={"n_estimators": 20},
                       candidates=CandidateConfig(n_candidates=40, ease_items=30))
    ev, since = log["events"], log["since"]
    middle = since + 2 * 86_400
    cat_a = Catalogue.from_events(ev.loc[ev["t"] < middle])
    first = TwoStageRanker(cfg).fit(log["old"], log["old_cat"])
    assert not first.refresh(Histories.from_events(ev.loc[ev["t"] < middle], cat_a, now=middle), cat_a, since, trees=5)["sources_reused"]
    # an item table that grew in between, its new item sorted first: every code moves by one
    grown = Catalogue(item_ids=np.insert(log["new_cat"].item_ids, 0, "a-new"), category=np.insert(log["new_cat"].category, 0, ""),
                      price=np.insert(log["new_cat"].price, 0, np.nan))
    new = Histories.from_events(ev, grown)
    second = copy.deepcopy(first).refresh(new, grown, middle, trees=5)
    assert second["sources_reused"] and second["fresh_groups"] > 0

    label = (new.t >= middle) & (new.item >= 0)
    reused = first._groups(new, grown, new.t < middle, label, middle, generator=first.generator)
    fitted = first._groups(new, grown, new.t < middle, label, middle)
    assert reused.labels.sum() > 0

    def rows(groups, catalogue):
        user = np.repeat(groups.users, groups.groups)
        order = np.lexsort((catalogue.item_ids[groups.items].astype(str), user.astype(str)))
        return user[order], catalogue.item_ids[groups.items][order], groups.labels[order], groups.features[order]

    for a, b in zip(rows(reused, cat_a), rows(fitted, grown), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_ranker_replays_a_bounded_buffer_of_the_groups_it_learned_from(log):
    """The fit keeps a seeded sample of its label groups with the model (``replay_groups``); a
    refresh replays from it, with no fit of the sources for older labels, and its own groups
    join the buffer, which stays bounded and survives pickling."""
    pytest.importorskip("lightgbm")
    import pickle

    from freshrec.models.candidates import CandidateConfig
    from freshrec.models.ranker import RankerConfig, TwoStageRanker

    cfg = RankerConfig(label_window_days=7, n_label_windows=2, min_target_users=10, replay_groups=12, max_negatives_per_group=3,
                       lightgbm={"n_estimators": 20, "min_child_samples": 20}, candidates=CandidateConfig(n_candidates=40, ease_items=30))
    ranker = TwoStageRanker(cfg).fit(log["old"], log["old_cat"])
    whole = copy.deepcopy(ranker)
    whole.config = dataclasses.replace(cfg, max_negatives_per_group=None)
    every = whole.refresh(log["new"], log["new_cat"], log["since"], trees=5, replay_share=0.25)
    buffer = ranker.replay
    assert len(buffer.groups) == 12 and buffer.features.shape == (buffer.groups.sum(), ranker.model.n_features_in_)
    assert set(buffer.window_start) <= {int(log["old"].now.max()) - w * 7 * 86_400 for w in (1, 2)}  # both label windows
    report = ranker.refresh(log["new"], log["new_cat"], log["since"], trees=5, replay_share=0.25)
    assert report["replay_groups"] == min(12, round(report["fresh_groups"] / 3))
    # the same groups; the trees learned from at most 3 negatives of each, as the fit's did
    assert (report["fresh_groups"], report["replay_groups"]) == (every["fresh_groups"], every["replay_groups"])
    assert report["fresh_groups"] + report["replay_groups"] <= report["train_rows"] < every["train_rows"] / 3
    after = ranker.replay
    assert len(after.groups) == 12 and (after.window_start == log["since"]).any()  # the new groups joined it
    assert (after.window_start < log["since"]).any()  # and older ones stayed
    kept = pickle.loads(pickle.dumps(ranker)).replay
    for name in ("features", "labels", "groups", "users", "window_start"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(after, name))
