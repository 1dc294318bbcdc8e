"""A shopper simulator for experiments: what shoppers do with the lists they are shown, when one
variant's lists are truly better by a set lift.

A shown list is a row of positions, each holding an item that is relevant to the shopper or
not (their planted taste). The control's lists hold relevant items with probability
``relevant_share`` at each position, the treatment's with ``relevant_share x (1 + lift)``. A
shopper examines rank r (0 first) with probability 1 / (1 + r / 3) (position bias), views an
examined item with probability ``view_p`` when it is relevant (``noise_p`` when not), both times
their activity, adds a viewed relevant item to the cart with ``cart_p`` and buys a carted item
with ``buy_p``. Shoppers differ: activity is Gamma-distributed with mean 1 and shape
``activity_shape`` (0.3: most shoppers rarely act, a few act a lot, as in every shop's log).
An experiment runs for days, and shoppers come back: over it, a shopper is shown
1 + Poisson((``visits_mean`` - 1) x activity) lists, a fresh one of their variant each visit, so
the active shoppers also return most (``visits_mean`` 1: one list each). That spread between
shoppers is what an A/B test must average away and what interleaving, which compares both
variants within each shopper, does not see. So the
better lists sell more, in proportion to the lift, and every action is on one shown position:
what attribution (A/B) and team credit (interleaving) need. Vectorised over shoppers and
deterministic for a numpy Generator.

:func:`shop_through_api` puts the same shoppers in front of a running ``freshrec serve``: they
get their lists from the real API, act on the items whose category they like, and post their
events back with the list's ``recommendation_id`` (``make demo``'s experiment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShopperConfig:
    list_length: int = 10
    relevant_share: float = 0.3  # the control's lists
    view_p: float = 0.12
    noise_p: float = 0.01
    cart_p: float = 0.4
    buy_p: float = 0.5
    price: float = 20.0
    activity_shape: float = 0.3  # Gamma shape of the shoppers' activity (mean 1); smaller: more spread
    visits_mean: float = 1.0  # lists a shopper is shown over the experiment, on average (at least 1 each)


def activity(rng: np.random.Generator, n: int, config: ShopperConfig) -> np.ndarray:
    """Each shopper's activity multiplier (mean 1)."""
    return rng.gamma(config.activity_shape, 1.0 / config.activity_shape, n)


def visits(rng: np.random.Generator, active: np.ndarray, config: ShopperConfig) -> np.ndarray:
    """For shoppers of activity ``active``: the row of each list shown over the experiment, as
    the index of its shopper (1 + Poisson((visits_mean - 1) x activity) rows per shopper)."""
    count = 1 + rng.poisson(max(config.visits_mean - 1.0, 0.0) * active)
    return np.repeat(np.arange(len(active)), count)


def shown_lists(rng: np.random.Generator, n: int, quality: float | np.ndarray, config: ShopperConfig) -> np.ndarray:
    """(n, list_length) booleans: is the item at each position relevant to its shopper;
    ``quality`` is the probability of a relevant item (one value, or one per shopper)."""
    q = np.minimum(np.broadcast_to(np.asarray(quality, float), (n,)), 1.0)[:, None]
    return rng.random((n, config.list_length)) < q


def act(rng: np.random.Generator, relevant: np.ndarray, config: ShopperConfig, active: np.ndarray) -> dict[str, np.ndarray]:
    """What each shopper (of activity ``active``) does at each position of their list:
    ``views``, ``carts`` and ``purchases``, (n, list_length) booleans each."""
    ranks = np.arange(relevant.shape[1])
    examined = rng.random(relevant.shape) < 1.0 / (1.0 + ranks / 3.0)
    view_p = np.minimum(np.where(relevant, config.view_p, config.noise_p) * active[:, None], 1.0)
    views = examined & (rng.random(relevant.shape) < view_p)
    carts = views & relevant & (rng.random(relevant.shape) < config.cart_p)
    purchases = carts & (rng.random(relevant.shape) < config.buy_p)
    return {"views": views, "carts": carts, "purchases": purchases}


def ab_users(rng: np.random.Generator, n: int, lift: float, config: ShopperConfig, salt: str,
             split: tuple[float, float] = (50, 50), lost_treatment_share: float = 0.0):
    """An A/B test of ``n`` shoppers: each assigned by ``experiment_stats.assign`` (``salt``,
    ``split``), shown the lists of their variant on each visit (:func:`visits`) and acting on
    them; returns ``experiment_stats.per_user``'s rows. The impressions and events of
    ``lost_treatment_share`` of the treatment's shoppers go missing (a logging fault the
    sample-ratio check must catch)."""
    import pandas as pd

    from freshrec.experiment_stats import assign, per_user

    users = np.array([f"s{i}" for i in range(n)], dtype=object)
    variant = np.array([assign(salt, u, ["control", "treatment"], split) for u in users], dtype=object)
    quality = np.where(variant == "treatment", config.relevant_share * (1 + lift), config.relevant_share)
    active = activity(rng, n, config)
    shopper = visits(rng, active, config)
    actions = act(rng, shown_lists(rng, len(shopper), quality[shopper], config), config, active[shopper])
    served = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(shopper)), unit="s")
    logged = ~((variant == "treatment") & (rng.random(n) < lost_treatment_share))[shopper]
    impressions = pd.DataFrame({"recommendation_id": [f"r{i}" for i in range(len(shopper))], "user_id": users[shopper],
                                "served_at": served, "variant": variant[shopper]})[logged]
    rows = []
    for name, etype in (("views", "view"), ("carts", "add_to_cart"), ("purchases", "purchase")):
        row, _ = np.nonzero(actions[name] & logged[:, None])
        who = shopper[row]
        rows.append(pd.DataFrame({"variant": variant[who], "user_id": users[who], "event_type": etype,
                                  "price": config.price, "quantity": 1}))
    return per_user(impressions, pd.concat(rows, ignore_index=True))


def interleaved_credits(rng: np.random.Generator, n: int, lift: float, config: ShopperConfig, salt: str):
    """An interleaving test of ``n`` shoppers: on each visit (:func:`visits`) a shopper is shown
    the team-draft interleaving (``experiment_stats.team_draft``) of a control list and a
    treatment list and acts on it; returns one row per action, ``user_id, team`` (``a`` control,
    ``b`` treatment)."""
    import pandas as pd

    from freshrec.experiment_stats import team_draft

    length = config.list_length
    active = activity(rng, n, config)
    shopper = visits(rng, active, config)
    rows_n = len(shopper)
    control = shown_lists(rng, rows_n, config.relevant_share, config)
    treatment = shown_lists(rng, rows_n, config.relevant_share * (1 + lift), config)
    a_ids, b_ids = [f"a{k}" for k in range(length)], [f"b{k}" for k in range(length)]
    merged = np.zeros((rows_n, length), bool)
    team = np.empty((rows_n, length), dtype=object)
    for r in range(rows_n):
        for pos, (item, side) in enumerate(team_draft(a_ids, b_ids, length, f"{salt}:{r}")):
            merged[r, pos] = (control if side == "a" else treatment)[r, int(item[1:])]
            team[r, pos] = side
    actions = act(rng, merged, config, active[shopper])
    rows = []
    for name in ("views", "carts", "purchases"):
        row, pos = np.nonzero(actions[name])
        rows.append(pd.DataFrame({"user_id": [f"s{i}" for i in shopper[row]], "team": team[row, pos]}))
    return pd.concat(rows, ignore_index=True)


def shop_through_api(url: str, users: list[str], likes: dict[str, set[str]], rng: np.random.Generator,
                     config: ShopperConfig = ShopperConfig(), api_key: str | None = None) -> dict[str, dict[str, int]]:
    """Shoppers with known tastes (``likes``: the categories each user likes) on a running
    ``freshrec serve`` at ``url``: each GETs their list (``config.list_length`` items, with
    details) through the real API, examines positions with the same position bias as
    :func:`act`, views an examined item with ``view_p`` when its category is one they like
    (``noise_p`` otherwise, both times their activity), carts a viewed liked item with
    ``cart_p`` and buys a carted one with ``buy_p``; the events, carrying the list's
    ``recommendation_id``, are POSTed back to the event API. Returns the actions per variant
    the server assigned (``{variant: {"users", "views", "carts", "purchases"}}``)."""
    from datetime import datetime, timezone

    import httpx

    from freshrec.sender import send_events

    run = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
    active = activity(rng, len(users), config)
    events, counts = [], {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for k, user in enumerate(users):
            answer = http.get(f"/v1/users/{user}/recommendations", params={"n": config.list_length})
            answer.raise_for_status()
            got = answer.json()
            stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # after the list was served
            items = got["items"]
            liked = np.array([i.get("category") in likes.get(user, set()) for i in items], bool)
            acted = act(rng, liked[None, :], config, active[k:k + 1]) if len(items) else None
            tally = counts.setdefault(got.get("variant") or "live", {"users": 0, "views": 0, "carts": 0, "purchases": 0})
            tally["users"] += 1
            for name, etype in (("views", "view"), ("carts", "add_to_cart"), ("purchases", "purchase")):
                for pos in np.nonzero(acted[name][0])[0] if acted is not None else []:
                    item = items[pos]
                    events.append({"event_id": f"shop-{run}-{k}-{etype}-{pos}", "ts": stamp, "user_id": user,
                                   "session_id": f"shop-{run}-{k}", "event_type": etype, "item_id": item["item_id"],
                                   "recommendation_id": got["recommendation_id"],
                                   **({"price": item.get("price") or config.price, "quantity": 1} if etype == "purchase" else {})})
                    tally[name] += 1
    if events:
        send_events(url, events, api_key=api_key)
    return counts
