"""Assignment, attribution and statistics of online experiments: pure functions, no I/O.

The experiments of freshrec compare two variants (champion and challenger lists) on live
traffic, in one of two modes:

* **A/B:** :func:`assign` puts each user in one variant for the whole experiment, by a hash of
  (the experiment's salt, the user id): the same answer on every server and after a restart;
* **interleave:** every user sees one list merged from both variants' lists by team-draft
  interleaving (:func:`team_draft`, Radlinski et al. 2008), which records the team (variant)
  that contributed each item.

What a shopper then does is credited to a served list by :func:`attribute`: by the event's
``recommendation_id`` when it carries one, else by the newest impression that showed that item
to that user within a window before the event (24 hours by default). :func:`per_user` turns
impressions and credited events into one row per exposed user, and :func:`compare` gives, per
metric, each variant's value, the difference with a 95% interval (normal approximation; the delta
method for the click-through ratio), and an always-valid p-value (:func:`msprt_p_value`: a mixture
sequential probability ratio test, Johari et al. 2017), so the report may be read at any time
without inflating false positives. :func:`srm` checks the observed split against the configured
one (chi-square; a mismatch at p < 0.001 means the assignment or the logging is broken, and no
metric of the experiment can be trusted). :func:`interleave_preference` counts, per user, which
team's items they acted on, and tests the preference share against one half.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

#: the report's metrics: per exposed user unless said otherwise (see :func:`per_user`)
METRICS = ("click_through", "add_to_cart_rate", "purchase_conversion", "revenue_per_user")
#: the sample-ratio-mismatch alarm
SRM_ALPHA = 0.001
#: credited events count when they come at most this long after the impression
ATTRIBUTION_WINDOW_S = 24 * 3600
ACTIONS = {"view": "views", "add_to_cart": "carts", "purchase": "purchases"}


def unit_hash(*parts: str) -> float:
    """A number in [0, 1) from a SHA-256 of ``parts``: stable across processes and machines."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(salt: str, user_id: str, variants: Sequence[str], split: Sequence[float]) -> str:
    """The variant of ``user_id`` in the experiment with ``salt``: ``split`` gives the variants'
    shares (any positive weights: 50,50 or 0.9,0.1)."""
    if len(variants) != len(split) or not variants:
        raise ValueError("give one share per variant")
    weights = np.asarray(split, dtype=float)
    if (weights <= 0).any():
        raise ValueError("every variant's share must be positive")
    bounds = np.cumsum(weights) / weights.sum()
    return variants[min(int(np.searchsorted(bounds, unit_hash(salt, str(user_id)), side="right")), len(variants) - 1)]


def team_draft(a: Sequence[str], b: Sequence[str], n: int, key: str, teams: tuple[str, str] = ("a", "b")) -> list[tuple[str, str]]:
    """Team-draft interleaving of ranked lists ``a`` and ``b`` into ``n`` items: in each round
    the team with fewer picks (a coin, from ``key`` and the round, on a tie) adds its highest
    item not yet shown. Returns (item, team) pairs in display order; deterministic for ``key``."""
    shown: set[str] = set()
    out: list[tuple[str, str]] = []
    lists, picks, heads = (list(a), list(b)), [0, 0], [0, 0]

    def next_of(side: int) -> str | None:
        ranked = lists[side]
        while heads[side] < len(ranked) and ranked[heads[side]] in shown:
            heads[side] += 1
        return ranked[heads[side]] if heads[side] < len(ranked) else None

    while len(out) < n:
        if picks[0] != picks[1]:
            order = [0, 1] if picks[0] < picks[1] else [1, 0]
        else:
            order = [0, 1] if unit_hash(key, str(len(out))) < 0.5 else [1, 0]
        for side in order:  # the team whose turn it is, or the other when its list ran out
            item = next_of(side)
            if item is not None:
                shown.add(item)
                out.append((item, teams[side]))
                picks[side] += 1
                break
        else:
            break  # both lists ran out
    return out


def attribute(events: pd.DataFrame, impressions: pd.DataFrame, window_s: float = ATTRIBUTION_WINDOW_S) -> pd.DataFrame:
    """The item events of ``events`` credited to an impression, with its ``variant`` and ``team``.

    ``impressions``: one row per served list, ``recommendation_id, user_id, served_at,
    variant, item_ids`` (a list) and optionally ``teams`` (a list beside ``item_ids``: the team of
    each item, interleave mode). ``events``: ``event_id, user_id, item_id, event_type, ts`` and
    optionally ``recommendation_id``, ``price``, ``quantity``. An event carrying the id of a list
    shown to its user is credited to that list (``how`` = ``explicit``); else to the newest list
    that showed its item to its user, served at most ``window_s`` before it (``impression``);
    else it is left out. ``team`` is the team of the event's item in that list, if it was shown."""
    columns = [*events.columns, "credited_to", "variant", "team", "how"]
    if events.empty or impressions.empty:
        return pd.DataFrame(columns=columns)
    ev = events.reset_index(drop=True).copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    imp = impressions.reset_index(drop=True).copy()
    imp["served_at"] = pd.to_datetime(imp["served_at"], utc=True)
    if "teams" not in imp:
        imp["teams"] = None
    imp["teams"] = [t if isinstance(t, (list, tuple, np.ndarray)) else [None] * len(i) for i, t in zip(imp["item_ids"], imp["teams"], strict=True)]
    shown = imp[["recommendation_id", "user_id", "served_at", "variant", "item_ids", "teams"]].explode(["item_ids", "teams"])
    shown = shown.rename(columns={"item_ids": "item_id", "teams": "team"}).dropna(subset=["item_id"])

    credited = pd.DataFrame(index=ev.index, columns=["credited_to", "variant", "team", "how"], dtype=object)
    # 1. by the list the event names (only a list shown to that user, served before the event)
    if "recommendation_id" in ev:
        named = ev.loc[ev["recommendation_id"].notna(), ["user_id", "item_id", "ts", "recommendation_id"]].reset_index()
        hit = named.merge(imp[["recommendation_id", "user_id", "served_at", "variant"]], on=["recommendation_id", "user_id"])
        hit = hit.loc[hit["served_at"] <= hit["ts"]]
        if len(hit):
            teams = hit.merge(shown[["recommendation_id", "item_id", "team"]], on=["recommendation_id", "item_id"], how="left")
            credited.loc[teams["index"], ["credited_to", "variant", "team"]] = \
                teams[["recommendation_id", "variant", "team"]].to_numpy()
            credited.loc[teams["index"], "how"] = "explicit"
    # 2. by the newest impression of the item to the user within the window
    rest = ev.loc[credited["how"].isna(), ["user_id", "item_id", "ts"]].reset_index()
    if len(rest):
        pairs = rest.merge(shown, on=["user_id", "item_id"])
        pairs = pairs.loc[(pairs["served_at"] <= pairs["ts"])
                          & (pairs["ts"] - pairs["served_at"] <= pd.Timedelta(seconds=window_s))]
        newest = pairs.sort_values("served_at").groupby("index").tail(1)
        credited.loc[newest["index"], ["credited_to", "variant", "team"]] = \
            newest[["recommendation_id", "variant", "team"]].to_numpy()
        credited.loc[newest["index"], "how"] = "impression"
    out = pd.concat([ev, credited], axis=1)
    return out.loc[out["how"].notna(), columns].reset_index(drop=True)


def per_user(impressions: pd.DataFrame, credited: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, exposed user): ``first_exposed`` (their first impression),
    ``impressions``, ``views``, ``carts``, ``purchases`` (credited events of each type),
    ``revenue`` (credited purchases' price x quantity, quantity 1 when missing) and the
    metrics: ``click_through`` (views / impressions: a ratio of sums, see :func:`compare`),
    ``add_to_cart_rate`` and ``purchase_conversion`` (1 when the user did it at least once) and
    ``revenue_per_user``."""
    exposure = impressions.groupby(["variant", "user_id"]).agg(
        first_exposed=("served_at", "min"), impressions=("recommendation_id", "size")).reset_index()
    counts = pd.DataFrame(columns=["variant", "user_id", *ACTIONS.values(), "revenue"])
    if len(credited):
        c = credited.assign(**{name: (credited["event_type"] == etype).astype(int) for etype, name in ACTIONS.items()})
        price = pd.to_numeric(c["price"], errors="coerce").fillna(0.0) if "price" in c else 0.0
        quantity = pd.to_numeric(c["quantity"], errors="coerce").fillna(1.0) if "quantity" in c else 1.0
        c["revenue"] = c["purchases"] * price * quantity
        counts = c.groupby(["variant", "user_id"])[[*ACTIONS.values(), "revenue"]].sum().reset_index()
    out = exposure.merge(counts, on=["variant", "user_id"], how="left")
    out[[*ACTIONS.values(), "revenue"]] = out[[*ACTIONS.values(), "revenue"]].infer_objects().fillna(0).astype(float)
    out["click_through"] = out["views"] / out["impressions"]
    out["add_to_cart_rate"] = (out["carts"] > 0).astype(float)
    out["purchase_conversion"] = (out["purchases"] > 0).astype(float)
    out["revenue_per_user"] = out["revenue"]
    return out.sort_values(["first_exposed", "variant", "user_id"]).reset_index(drop=True)


@dataclass(frozen=True)
class Comparison:
    metric: str
    control: float
    treatment: float
    difference: float
    ci_low: float
    ci_high: float
    relative_lift: float | None
    p_value: float  # fixed-horizon, two-sided
    always_valid_p: float  # mSPRT: valid at any look


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.var(ddof=1)) if len(x) > 1 else 0.0


def msprt_p_value(control: np.ndarray, treatment: np.ndarray, order: np.ndarray, tau: float | None = None,
                  burn_in: int = 100) -> float:
    """Always-valid p-value of "the treatment's mean differs from the control's": the mixture
    SPRT of Johari et al. 2017 (a normal mixture of variance ``tau``^2 over the difference),
    looked at after every user, in arrival order (``order``: 0 for the next control value, 1
    for the next treatment value), once both arms have ``burn_in`` users; the p-value is 1 over
    the largest likelihood ratio seen. ``tau`` defaults to a tenth of the control mean at the
    burn-in (a 10% lift), or of its standard deviation when that mean is 0."""
    x = [np.asarray(control, float), np.asarray(treatment, float)]
    order = np.asarray(order, int)
    if len(order) != len(x[0]) + len(x[1]):
        raise ValueError("order must name every user once")
    values = np.empty(len(order))
    for arm in (0, 1):
        values[order == arm] = x[arm]
    n = np.stack([np.cumsum(order == arm) for arm in (0, 1)])
    s = np.stack([np.cumsum(np.where(order == arm, values, 0.0)) for arm in (0, 1)])
    ss = np.stack([np.cumsum(np.where(order == arm, values * values, 0.0)) for arm in (0, 1)])
    ok = (n >= max(burn_in, 2)).all(axis=0)
    if not ok.any():
        return 1.0
    n, s, ss = n[:, ok].astype(float), s[:, ok], ss[:, ok]
    mean = s / n
    var = np.maximum(ss - n * mean * mean, 0.0) / (n - 1)
    if tau is None:
        tau = 0.1 * abs(mean[0, 0]) or 0.1 * math.sqrt(var[0, 0]) or 1e-9
    v = var[0] / n[0] + var[1] / n[1]
    diff = mean[1] - mean[0]
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * diff * diff / (2 * v * (v + t2))
    log_lr = np.where(v > 0, log_lr, np.where(diff == 0, 0.0, np.inf))
    return float(min(1.0, math.exp(-max(0.0, float(np.max(log_lr))))))


def compare(users: pd.DataFrame, control: str, treatment: str, metrics: Sequence[str] = METRICS,
            alpha: float = 0.05) -> list[Comparison]:
    """Treatment against control on each metric of :func:`per_user`'s rows (in exposure order):
    the means (the ratio of sums for ``click_through``), the difference with its 1 - ``alpha``
    interval (normal), the relative lift, a fixed-horizon p-value, and the always-valid one."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - alpha / 2))
    both = users.loc[users["variant"].isin([control, treatment])]
    order = (both["variant"] == treatment).to_numpy(int)
    out = []
    for metric in metrics:
        arms = [metric_values(both.loc[order == arm], metric) for arm in (0, 1)]
        if not all(len(x) for x in arms):
            out.append(Comparison(metric, math.nan, math.nan, math.nan, math.nan, math.nan, None, 1.0, 1.0))
            continue
        (ma, va), (mb, vb) = (_mean_var(x) for x in arms)
        diff, se = mb - ma, math.sqrt(va / len(arms[0]) + vb / len(arms[1]))
        p = 2 * float(norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
        out.append(Comparison(metric, ma, mb, diff, diff - z * se, diff + z * se, diff / ma if ma else None, p,
                              msprt_p_value(arms[0], arms[1], order)))
    return out


def metric_values(users: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-user values whose mean is the metric. Click-through is a ratio of sums (views over
    impressions): its per-user values are linearised (the delta method), so their mean is the
    ratio and their variance the ratio's."""
    if metric != "click_through":
        return users[metric].to_numpy(float)
    views, shown = users["views"].to_numpy(float), users["impressions"].to_numpy(float)
    if not len(users):
        return views
    ratio = views.sum() / shown.sum()
    return ratio + (views - ratio * shown) / shown.mean()


def srm(observed: dict[str, int], split: dict[str, float]) -> dict[str, float | bool]:
    """Sample-ratio mismatch: chi-square of the users per variant against ``split``'s shares;
    ``mismatch`` when p < SRM_ALPHA."""
    from scipy.stats import chisquare

    names = sorted(split)
    counts = np.array([observed.get(v, 0) for v in names], float)
    shares = np.array([split[v] for v in names], float)
    if counts.sum() == 0:
        return {"chi2": 0.0, "p_value": 1.0, "mismatch": False}
    stat, p = chisquare(counts, counts.sum() * shares / shares.sum())
    return {"chi2": float(stat), "p_value": float(p), "mismatch": bool(p < SRM_ALPHA)}


def interleave_preference(credited: pd.DataFrame, teams: tuple[str, str] = ("a", "b"), alpha: float = 0.05) -> dict[str, float | int | str | None]:
    """Per user, the team whose items they acted on more often (credited events with a team);
    users with as many of each, or none, are ties. Returns the wins, the share of the second
    team among decided users with its 1 - ``alpha`` (Wilson) interval, and the two-sided
    binomial p-value against one half."""
    from scipy.stats import binomtest

    acted = credited.loc[credited["team"].isin(teams)]
    per = acted.groupby(["user_id", "team"]).size().unstack(fill_value=0).reindex(columns=list(teams), fill_value=0)
    wins_a = int((per[teams[0]] > per[teams[1]]).sum())
    wins_b = int((per[teams[1]] > per[teams[0]]).sum())
    ties = int((per[teams[0]] == per[teams[1]]).sum())
    decided = wins_a + wins_b
    if not decided:
        return {"wins": {teams[0]: 0, teams[1]: 0}, "ties": ties, "share": None, "ci_low": None, "ci_high": None,
                "p_value": 1.0, "preferred": None}
    test = binomtest(wins_b, decided, 0.5)
    ci = test.proportion_ci(1 - alpha, method="wilson")
    preferred = None if test.pvalue >= alpha else (teams[1] if wins_b > wins_a else teams[0])
    return {"wins": {teams[0]: wins_a, teams[1]: wins_b}, "ties": ties, "share": wins_b / decided,
            "ci_low": float(ci.low), "ci_high": float(ci.high), "p_value": float(test.pvalue), "preferred": preferred}
