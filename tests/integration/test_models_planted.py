"""No collapse to one list: the pipeline's default candidate (candidates + LightGBM ranker),
trained, gated and bound for serving as `freshrec run batch` does, on a small log with planted
tastes and seen items excluded (the exploration case where a ratings catalogue used to get one
trending list for everyone).

Users fall in taste groups, each with its own items; every visit also buys an item from a shared
pool whose head outsells any group item, and that pool trends hardest in the last week. Besides
users active to the end there are users who stopped long ago and users with two events only.
Each kind must get lists made of its group's items, and the lists must show many distinct items.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from freshrec.models.baselines import Trending
from freshrec.models.data import Catalogue, Histories, normalize_events
from freshrec.models.pipeline import TrainingConfig, serving_recommender, train_and_gate
from freshrec.models.split import seen_items

from freshrec.settings import Settings

pytestmark = pytest.mark.integration

N_GROUPS, GROUP_ITEMS, POOL, DAYS = 4, 40, 30, 90
START = pd.Timestamp("2024-01-01", tz="UTC")


def planted_log(n_active: int = 400, n_lapsed: int = 80, n_weak: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    taste = 1.0 / np.arange(1, GROUP_ITEMS + 1) ** 0.7
    taste /= taste.sum()
    pool = 1.0 / np.arange(1, POOL + 1)
    pool /= pool.sum()
    rows = []

    def visits(user: str, group: int, first: float, last: float, max_visits: int) -> None:
        day, n = first, 0
        while day < last and n < max_visits:
            rows.append((user, f"g{group}_{rng.choice(GROUP_ITEMS, p=taste)}", day, f"c{group}"))
            # the pool's head item sells more than any group item, and most of all in the last week
            hot = day > DAYS - 7 and rng.random() < 0.5
            rows.append((user, "p0" if hot else f"p{rng.choice(POOL, p=pool)}", day, "pool"))
            day += rng.exponential(6.0)
            n += 1

    for u in range(n_active):
        visits(f"active{u}", u % N_GROUPS, rng.uniform(0, 7), DAYS, 10_000)
    for u in range(n_lapsed):  # stopped 40 to 60 days before the end of the log
        visits(f"lapsed{u}", u % N_GROUPS, rng.uniform(0, 7), DAYS - rng.uniform(40, 60), 10_000)
    for u in range(n_weak):  # one visit (a group item and a pool item), any time
        visits(f"weak{u}", u % N_GROUPS, rng.uniform(0, DAYS), DAYS, 1)
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "day", "category"])
    return df.assign(event_type="purchase", ts=START + pd.to_timedelta(df.pop("day"), unit="D"), price=1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("planted") / "home", exclude_seen="all", min_test_users=50)
    settings.ensure_dirs()
    events = planted_log()
    return settings, events, train_and_gate(settings, events, TrainingConfig.from_settings(settings))


@pytest.fixture(scope="module", params=["published", "ranker"])
def served(request, trained):
    """Top-10 lists of every user as of the end of the log: from what the gate published, or
    from the ranker it trained (the registered challenger) whatever the gate decided."""
    settings, events, report = trained
    publish = report.publish if request.param == "published" else {"kind": "model", "version": report.model["version"]}
    rec, _ = serving_recommender(settings, publish, events)
    ev = normalize_events(events)
    hist = Histories.from_events(ev, rec.catalogue, now=int(ev["t"].max()) + 1)
    items, _ = rec.recommend(hist, 10, exclude=seen_items(hist, "all"))
    return rec, hist, items


def group_shares(hist: Histories, items: np.ndarray, catalogue: Catalogue, kind: str) -> tuple[float, float]:
    """For the users of ``kind``: the share of their top 10 from their own group, and of the group
    items in it, the share from their own group (the rest of a list is the shared pool)."""
    rows = np.flatnonzero(np.char.startswith(hist.user_ids.astype(str), kind))
    group = np.array([int(u[len(kind):]) % N_GROUPS for u in hist.user_ids[rows]])
    top = catalogue.item_ids[items[rows]].astype(str)
    own = np.char.startswith(top, np.char.add(np.char.add("g", group.astype(str)), "_")[:, None])
    return float(own.mean()), float(own.sum() / np.char.startswith(top, "g").sum())


def test_the_gate_compares_on_three_cutoffs_and_publishes_what_won(trained):
    _, _, report = trained
    assert report.window["protocol"] == "time" and len(report.window["cutoffs"].split(",")) == 3
    if report.decision.promote:
        assert report.publish["kind"] == "model"
    else:  # no champion yet: the best baseline by the mean over the cutoffs
        assert report.publish == {"kind": "baseline", "name": report.decision.best_baseline,
                                  "run_id": report.baselines[report.decision.best_baseline]["run_id"]}


@pytest.mark.parametrize(("kind", "floor"), [("active", 0.45), ("lapsed", 0.45), ("weak", 0.35)])
def test_every_kind_of_user_gets_their_groups_items(served, kind, floor):
    # half of what anyone buys is the shared pool, so about half of a good list is too; a list
    # by popularity or trend holds no group item at all
    rec, hist, items = served
    share, purity = group_shares(hist, items, rec.catalogue, kind)
    assert share >= floor and purity >= 0.9, (kind, share, purity)


def test_lists_stay_personal(served):
    rec, hist, items = served
    distinct = len(np.unique(items))
    assert distinct >= N_GROUPS * 20, distinct
    trending = Trending().fit(hist, rec.catalogue)
    trend_items, _ = trending.recommend(hist, 10, exclude=seen_items(hist, "all"))
    assert len(np.unique(trend_items)) < distinct / 2  # what a collapse to one trending list looks like
