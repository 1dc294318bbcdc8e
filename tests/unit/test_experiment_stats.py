"""Assignment, interleaving, attribution and the statistics of experiments (freshrec.experiment_stats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from freshrec.experiment_stats import (
    assign,
    attribute,
    compare,
    interleave_preference,
    msprt_p_value,
    per_user,
    srm,
    team_draft,
)

T0 = pd.Timestamp("2026-03-01T12:00:00Z")


def test_assignment_is_stable_follows_the_split_and_depends_on_the_salt():
    users = [f"u{i}" for i in range(40_000)]
    first = [assign("exp-1", u, ["control", "treatment"], [90, 10]) for u in users]
    assert first == [assign("exp-1", u, ["control", "treatment"], [0.9, 0.1]) for u in users]  # shares, any scale
    share = first.count("treatment") / len(users)
    assert binomtest(first.count("treatment"), len(users), 0.1).pvalue > 0.001, share
    other = [assign("exp-2", u, ["control", "treatment"], [90, 10]) for u in users]
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 0.1 * len(users)  # a new salt reshuffles
    with pytest.raises(ValueError):
        assign("exp-1", "u1", ["control", "treatment"], [1.0])
    with pytest.raises(ValueError):
        assign("exp-1", "u1", ["control", "treatment"], [1.0, 0.0])


def test_team_draft_shows_each_item_once_and_balances_the_teams():
    a = ["i1", "i2", "i3", "i4", "i5", "i6"]
    b = ["i3", "i7", "i1", "i8", "i9", "i10"]
    firsts = set()
    for key in range(200):
        merged = team_draft(a, b, 6, f"k{key}")
        items = [i for i, _ in merged]
        teams = [t for _, t in merged]
        assert len(items) == len(set(items)) == 6
        assert abs(teams.count("a") - teams.count("b")) <= 1
        assert {"i1", "i3"} <= set(items[:2])  # each team's first pick is its top item
        for item, team in merged:  # a team only adds items of its own list
            assert item in (a if team == "a" else b)
        firsts.add(teams[0])
        assert merged == team_draft(a, b, 6, f"k{key}")  # deterministic for its key
    assert firsts == {"a", "b"}  # the coin is not always the same
    assert [i for i, _ in team_draft(["x"], [], 5, "k")] == ["x"]  # lists that run out


def _impressions(rows):
    return pd.DataFrame(rows, columns=["recommendation_id", "user_id", "served_at", "variant", "item_ids", "teams"])


def test_events_are_credited_by_their_recommendation_id_first_then_by_a_recent_impression():
    imp = _impressions([
        ("r1", "u1", T0, "control", ["i1", "i2"], None),
        ("r2", "u1", T0 + pd.Timedelta(hours=1), "treatment", ["i2", "i3"], None),
        ("r3", "u2", T0, "treatment", ["i5", "i6"], ["a", "b"]),
    ])
    events = pd.DataFrame([
        ("e1", "u1", "i2", "view", T0 + pd.Timedelta(hours=2), "r1"),  # names r1: explicit beats the newer r2
        ("e2", "u1", "i2", "purchase", T0 + pd.Timedelta(hours=2), None),  # newest impression of i2: r2
        ("e3", "u1", "i1", "view", T0 + pd.Timedelta(hours=30), None),  # r1 showed i1, but 30 h ago
        ("e4", "u1", "i9", "view", T0 + pd.Timedelta(hours=2), None),  # never shown
        ("e5", "u2", "i6", "add_to_cart", T0 + pd.Timedelta(minutes=5), None),  # interleaved: team b
        ("e6", "u2", "i5", "view", T0 - pd.Timedelta(minutes=5), None),  # before the impression
        ("e7", "u3", "i5", "view", T0 + pd.Timedelta(minutes=5), "r3"),  # names another user's list
    ], columns=["event_id", "user_id", "item_id", "event_type", "ts", "recommendation_id"])
    got = attribute(events, imp).set_index("event_id")
    assert sorted(got.index) == ["e1", "e2", "e5"]
    assert got.loc["e1", ["credited_to", "variant", "how"]].tolist() == ["r1", "control", "explicit"]
    assert got.loc["e2", ["credited_to", "variant", "how"]].tolist() == ["r2", "treatment", "impression"]
    assert got.loc["e5", ["credited_to", "team"]].tolist() == ["r3", "b"]
    assert attribute(events, imp, window_s=40 * 3600).set_index("event_id").loc["e3", "credited_to"] == "r1"


def test_per_user_metrics_count_credited_events_per_exposed_user():
    imp = _impressions([("r1", "u1", T0, "control", ["i1"], None), ("r2", "u1", T0, "control", ["i2"], None),
                        ("r3", "u2", T0, "treatment", ["i1"], None)])
    events = pd.DataFrame([("e1", "u1", "i1", "view", T0, None, None, None),
                           ("e2", "u1", "i1", "purchase", T0, None, 10.0, 2),
                           ("e3", "u1", "i2", "purchase", T0, None, 5.0, None)],
                          columns=["event_id", "user_id", "item_id", "event_type", "ts", "recommendation_id", "price", "quantity"])
    users = per_user(imp, attribute(events, imp)).set_index("user_id")
    assert users.loc["u1", ["impressions", "views", "purchases", "revenue"]].tolist() == [2, 1, 2, 25.0]
    assert users.loc["u1", "click_through"] == 0.5 and users.loc["u1", "purchase_conversion"] == 1.0
    assert users.loc["u2", ["views", "purchase_conversion", "revenue_per_user"]].tolist() == [0, 0, 0]


def _simulate(seed: int, n: int, p_control: float, lift: float) -> pd.DataFrame:
    """Exposed users in arrival order, each a conversion with p (x (1 + lift) in treatment)."""
    rng = np.random.default_rng(seed)
    variant = np.where(rng.random(n) < 0.5, "control", "treatment")
    p = np.where(variant == "treatment", p_control * (1 + lift), p_control)
    bought = (rng.random(n) < p).astype(float)
    shown = rng.integers(1, 4, n).astype(float)
    views = rng.binomial(shown.astype(int), np.where(variant == "treatment", 0.2 * (1 + lift), 0.2)).astype(float)
    return pd.DataFrame({"variant": variant, "user_id": [f"u{i}" for i in range(n)], "impressions": shown, "views": views,
                         "purchase_conversion": bought, "add_to_cart_rate": bought, "revenue_per_user": bought * 20.0})


def test_an_a_a_test_keeps_its_false_positive_rate_and_a_real_lift_is_found():
    runs = 200
    fixed = always = 0
    for seed in range(runs):
        result = {c.metric: c for c in compare(_simulate(seed, 4_000, 0.1, 0.0), "control", "treatment")}
        fixed += result["purchase_conversion"].p_value < 0.05
        always += result["purchase_conversion"].always_valid_p < 0.05
    # at most 5%, within the binomial interval of 200 runs
    assert binomtest(fixed, runs, 0.05, alternative="greater").pvalue > 0.01, fixed
    assert always <= fixed + 2 and binomtest(always, runs, 0.05, alternative="greater").pvalue > 0.01, always

    found = sum(c.p_value < 0.05 and c.difference > 0 for seed in range(40)
                for c in compare(_simulate(1000 + seed, 20_000, 0.1, 0.15), "control", "treatment", ["purchase_conversion"]))
    assert found >= 33  # the power is about 0.93 at 10,000 users per arm and this lift
    lifted = compare(_simulate(7, 20_000, 0.1, 0.15), "control", "treatment")
    by = {c.metric: c for c in lifted}
    assert by["purchase_conversion"].ci_low > 0 and by["purchase_conversion"].always_valid_p < 0.05
    assert by["click_through"].ci_low > 0 and 0.1 < by["click_through"].relative_lift < 0.2


def test_the_always_valid_p_value_holds_under_peeking():
    """Looking after every user: a fixed-horizon test looked at that often would reject far
    more than 5% of A/A runs; the mSPRT's p-value does not."""
    rejected = peeked = 0
    runs = 100
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        order = (rng.random(3_000) < 0.5).astype(int)
        values = (rng.random(3_000) < 0.2).astype(float)
        rejected += msprt_p_value(values[order == 0], values[order == 1], order) < 0.05
        peeked += any(compare(pd.DataFrame({"variant": np.where(order[:n] == 1, "treatment", "control"),
                                            "purchase_conversion": values[:n]}), "control", "treatment",
                              ["purchase_conversion"])[0].p_value < 0.05 for n in range(200, 3_001, 100))
    assert binomtest(rejected, runs, 0.05, alternative="greater").pvalue > 0.01, rejected
    assert peeked > 3 * max(rejected, 5), (peeked, rejected)  # the fixed-horizon p-value, read at every look


def test_sample_ratio_mismatch_is_flagged():
    assert not srm({"control": 5_020, "treatment": 4_980}, {"control": 50, "treatment": 50})["mismatch"]
    skewed = srm({"control": 5_200, "treatment": 4_800}, {"control": 50, "treatment": 50})
    assert skewed["mismatch"] and skewed["p_value"] < 0.001
    assert not srm({"control": 9_000, "treatment": 1_000}, {"control": 0.9, "treatment": 0.1})["mismatch"]


def test_interleaving_finds_the_preferred_team():
    rng = np.random.default_rng(3)
    rows = []
    for u in range(600):  # each user acts on 1-3 items; team b's items are chosen 60% of the time
        for _ in range(rng.integers(1, 4)):
            rows.append((f"u{u}", "b" if rng.random() < 0.6 else "a"))
    credited = pd.DataFrame(rows, columns=["user_id", "team"])
    result = interleave_preference(credited)
    assert result["preferred"] == "b" and result["ci_low"] > 0.5 and result["p_value"] < 0.05
    even = pd.DataFrame([(f"u{u}", t) for u in range(300) for t in ("a", "b")], columns=["user_id", "team"])
    assert interleave_preference(even)["ties"] == 300 and interleave_preference(even)["preferred"] is None


def test_simulated_shoppers_a_a_a_b_interleaving_and_srm():
    """The shopper simulator (freshrec.shoppers) through the same statistics: an A/A test rejects
    at about alpha, a large lift is found by both modes, and lost impressions trip the SRM check."""
    from freshrec.shoppers import ShopperConfig, ab_users, interleaved_credits

    cfg = ShopperConfig()
    aa = [compare(ab_users(np.random.default_rng(s), 2_000, 0.0, cfg, f"aa-{s}"), "control", "treatment",
                  ["purchase_conversion"])[0] for s in range(100)]
    assert binomtest(sum(c.p_value < 0.05 for c in aa), 100, 0.05, alternative="greater").pvalue > 0.01
    assert sum(c.always_valid_p < 0.05 for c in aa) <= 6

    ab = [compare(ab_users(np.random.default_rng(100 + s), 20_000, 0.5, cfg, f"ab-{s}"), "control", "treatment",
                  ["purchase_conversion"])[0] for s in range(10)]
    assert sum(c.p_value < 0.05 and c.difference > 0 for c in ab) >= 8
    assert all(0.2 < c.relative_lift < 0.8 for c in ab if c.p_value < 0.05)  # about the planted 50%

    preferred = [interleave_preference(interleaved_credits(np.random.default_rng(200 + s), 8_000, 0.5, cfg, f"il-{s}"))
                 for s in range(10)]
    assert sum(p["preferred"] == "b" for p in preferred) >= 8 and not any(p["preferred"] == "a" for p in preferred)

    split = {"control": 50, "treatment": 50}
    faithful = ab_users(np.random.default_rng(300), 40_000, 0.0, cfg, "srm")
    lossy = ab_users(np.random.default_rng(300), 40_000, 0.0, cfg, "srm", lost_treatment_share=0.05)
    assert not srm(faithful.groupby("variant").size().to_dict(), split)["mismatch"]
    assert srm(lossy.groupby("variant").size().to_dict(), split)["mismatch"]


def test_returning_shoppers_see_a_list_each_visit_and_interleaving_uses_them():
    """visits_mean: shoppers come back (the active ones most), each visit a fresh list of their
    variant, an impression each; with 1 every shopper sees exactly one list. Interleaving credits
    every visit to its shopper, and finds a 20% better team among 4,000 returning shoppers."""
    from freshrec.shoppers import ShopperConfig, ab_users, activity, interleaved_credits, visits

    rng = np.random.default_rng(5)
    cfg = ShopperConfig(visits_mean=5.0)
    active = activity(rng, 20_000, cfg)
    rows = visits(rng, active, cfg)
    per_shopper = np.bincount(rows, minlength=len(active))
    assert per_shopper.min() >= 1 and 4.8 < per_shopper.mean() < 5.2
    assert per_shopper[active > 2].mean() > 2 * per_shopper[active < 0.5].mean()
    assert (np.bincount(visits(rng, active, ShopperConfig()), minlength=len(active)) == 1).all()

    users = ab_users(np.random.default_rng(6), 3_000, 0.0, cfg, "visits")
    assert len(users) == 3_000 and users["impressions"].sum() > 4 * 3_000

    found = [interleave_preference(interleaved_credits(np.random.default_rng(400 + s), 4_000, 0.2, cfg, f"v-{s}"))
             for s in range(5)]
    assert all(p["preferred"] == "b" for p in found)
