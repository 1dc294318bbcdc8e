"""Small readers of public data sets and synthetic logs into the canonical event columns.

For experiments, tests and bench/ only: the pipeline reads lake/events (models.data.read_lake_events)
that `freshrec import` fills. These read a whole file into pandas at once (seconds for Ta-Feng)
with the importers' mappings, so a model experiment needs no landing zone or Spark.
Each reader returns a DataFrame with user_id, item_id, event_type, ts (UTC), category, price, quantity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from freshrec.importers import OTTO_EVENTS, RETAILROCKET_EVENTS, TAFENG_COLUMNS


def load_tafeng(path: Path) -> pd.DataFrame:
    """Ta-Feng: every row a purchase of AMOUNT units; unit price = SALES_PRICE / AMOUNT."""
    raw = pd.read_csv(path, usecols=list(TAFENG_COLUMNS))
    amount = raw["AMOUNT"].clip(lower=1)
    return pd.DataFrame({
        "user_id": raw["CUSTOMER_ID"].astype(str),
        "item_id": raw["PRODUCT_ID"].astype(str),
        "event_type": "purchase",
        "ts": pd.to_datetime(raw["TRANSACTION_DT"], format="%m/%d/%Y", utc=True),
        "category": raw["PRODUCT_SUBCLASS"].astype(str),
        "price": raw["SALES_PRICE"] / amount,
        "quantity": amount,
    })


def load_retailrocket(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path)
    return pd.DataFrame({
        "user_id": raw["visitorid"].astype(str),
        "item_id": raw["itemid"].astype(str),
        "event_type": raw["event"].map(RETAILROCKET_EVENTS),
        "ts": pd.to_datetime(raw["timestamp"], unit="ms", utc=True),
        "category": None,
        "price": np.nan,
        "quantity": 1,
    }).dropna(subset=["event_type"])


def load_otto(path: Path) -> pd.DataFrame:
    """OTTO sessions; a session is the user."""
    rows = []
    with open(path) as fh:
        for line in fh:
            session = json.loads(line)
            for ev in session["events"]:
                rows.append((str(session["session"]), str(ev["aid"]), OTTO_EVENTS[ev["type"]], ev["ts"]))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])
    df["ts"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    df["category"] = None
    df["price"] = np.nan
    df["quantity"] = 1
    return df


def synthetic_sequential(n_users: int = 300, n_items: int = 200, n_categories: int = 10, days: int = 60,
                         events_per_user: int = 30, repeat_prob: float = 0.4, seed: int = 0) -> pd.DataFrame:
    """Shoppers with a favourite category and a personal basket they re-buy, who otherwise walk
    along item chains (after item i, item i+1 of the same category is likely next): a log where
    both a user's own items and the order of events carry signal."""
    rng = np.random.default_rng(seed)
    per_cat = n_items // n_categories
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        fav = rng.integers(n_categories)
        staples = rng.choice(n_items, size=3, replace=False)
        t = rng.uniform(0, days / 4)
        item = int(fav * per_cat + rng.integers(per_cat))
        for _ in range(events_per_user):
            t += rng.exponential(days / events_per_user / 1.2)
            if t >= days:
                break
            r = rng.random()
            if r < repeat_prob:
                item = int(rng.choice(staples))
            elif r < 0.9:
                cat = item // per_cat
                item = int(cat * per_cat + (item % per_cat + 1) % per_cat)
            else:
                item = int(fav * per_cat + rng.integers(per_cat))
            kind = "purchase" if rng.random() < 0.5 else "add_to_cart"
            rows.append((f"u{u}", f"i{item}", kind, start + pd.Timedelta(days=t), f"c{item // per_cat}", 1.0 + item % 17))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "category", "price"])


def synthetic_latent(n_users: int = 400, n_items: int = 300, dim: int = 8, events_per_user: int = 25,
                     days: int = 60, seed: int = 0) -> pd.DataFrame:
    """MovieLens-like: users with latent tastes who each consume distinct items at random times,
    with no sequential structure and no repeats (what a random split benchmark looks like)."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_users, dim))
    items = rng.normal(size=(n_items, dim))
    bias = rng.normal(scale=1.0, size=n_items)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    rows = []
    for u in range(n_users):
        logits = items @ users[u] + bias
        p = np.exp(logits - logits.max())
        p /= p.sum()
        chosen = rng.choice(n_items, size=min(events_per_user, n_items), replace=False, p=p)
        times = np.sort(rng.uniform(0, days, size=len(chosen)))
        for i, t in zip(chosen, times, strict=True):
            rows.append((f"u{u}", f"m{i}", "purchase", start + pd.Timedelta(days=float(t)), f"g{i % 12}", 10.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "category", "price"])
