"""The in-memory shapes every recommender reads: a catalogue of items and per-user histories.

Everything in models/ works on a pandas DataFrame of clean events with at least the columns
``user_id, item_id, event_type, ts`` (``event_id``, ``category`` and ``price`` optional), i.e. the
columns of lake/events (docs/tables.md). Strings are turned into integer codes once, here; the recommenders
only ever see integer arrays, so they stay fast and testable without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from freshrec.jobs.history import epoch_seconds, item_events

# 0 is padding in every sequence tensor, so codes start at 1.
EVENT_CODES = {"view": 1, "add_to_cart": 2, "remove_from_cart": 3, "purchase": 4}
EVENT_NAMES = np.array(["", *EVENT_CODES], dtype=object)  # code -> event type
# remove_from_cart is kept in sequences (it is information) but never counts as a positive signal.
POSITIVE_EVENT_TYPES = ("view", "add_to_cart", "purchase")
# event_id orders a user's events that share a timestamp (jobs.history.EVENT_ORDER)
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts", "category", "price")
SECONDS_PER_DAY = 86_400


def normalize_events(events: pd.DataFrame) -> pd.DataFrame:
    """Item events in the one order every path reads a user's events in.

    Keeps the item events (searches and rows without an item are dropped), one per event id,
    casts ids to strings, ``ts`` to int64 epoch seconds (column ``t``) and orders each user's
    events by ``jobs.history.EVENT_ORDER`` (time, then event id), so ties never depend on the
    input order and match features/sequences and the micro-batch's sequences.
    """
    df = item_events(events)
    out = pd.DataFrame({
        "user_id": df["user_id"].to_numpy(),
        "item_id": df["item_id"].to_numpy(),
        "event_type": df["event_type"].to_numpy(),
        "t": epoch_seconds(df["ts"]),
        "category": (df["category"].astype("string").fillna("").astype(str).to_numpy()
                     if "category" in df else np.full(len(df), "", dtype=object)),
        "price": (pd.to_numeric(df["price"], errors="coerce").to_numpy(dtype=np.float64)
                  if "price" in df else np.full(len(df), np.nan)),
    })
    out["etype"] = out["event_type"].map(EVENT_CODES).astype(np.int8)
    return out


@dataclass(frozen=True)
class Catalogue:
    """The items a recommender may return, with the features that describe a new item."""

    item_ids: np.ndarray  # str, sorted, unique
    category: np.ndarray  # str, "" when unknown
    price: np.ndarray  # float64, nan when unknown

    @classmethod
    def from_events(cls, events: pd.DataFrame, items: pd.DataFrame | None = None) -> "Catalogue":
        """Items seen in ``events`` (normalized), plus those of an optional item table.

        An item's category is its most frequent non-empty one and its price the median of its
        positive prices; an item table (item_id, category, price) wins where it has a value.
        """
        ev = events if "t" in events else normalize_events(events)
        frames = [ev[["item_id", "category", "price"]]]
        if items is not None and len(items):
            table = pd.DataFrame({
                "item_id": items["item_id"].astype(str),
                "category": items["category"].astype("string").fillna("").astype(str) if "category" in items else "",
                "price": pd.to_numeric(items["price"], errors="coerce") if "price" in items else np.nan,
            })
            frames.append(table)
        allrows = pd.concat(frames, ignore_index=True)
        ids = np.array(sorted(allrows["item_id"].unique()), dtype=object)
        cat = allrows.loc[allrows["category"] != ""]
        cat = cat.groupby(["item_id", "category"]).size().reset_index(name="n")
        cat = cat.sort_values(["item_id", "n", "category"], ascending=[True, False, True]).drop_duplicates("item_id")
        price = allrows.loc[allrows["price"] > 0].groupby("item_id")["price"].median()
        if items is not None and len(items):
            over = table.set_index("item_id")
            cat_map = dict(zip(cat["item_id"], cat["category"], strict=True))
            cat_map.update({k: v for k, v in over["category"].items() if v})
            price = price.to_dict()
            price.update({k: v for k, v in over["price"].items() if np.isfinite(v) and v >= 0})
        else:
            cat_map = dict(zip(cat["item_id"], cat["category"], strict=True))
            price = price.to_dict()
        return cls(
            item_ids=ids,
            category=np.array([cat_map.get(i, "") for i in ids], dtype=object),
            price=np.array([price.get(i, np.nan) for i in ids], dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    @cached_property
    def index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    @cached_property
    def categories(self) -> np.ndarray:
        """Distinct non-empty categories, sorted; category code c means categories[c]."""
        return np.array(sorted(set(self.category) - {""}), dtype=object)

    @cached_property
    def category_code(self) -> np.ndarray:
        """Per item: index into ``categories``, -1 when unknown."""
        lookup = {c: i for i, c in enumerate(self.categories)}
        return np.array([lookup.get(c, -1) for c in self.category], dtype=np.int64)

    @cached_property
    def _positions(self) -> pd.Index:
        return pd.Index(self.item_ids, dtype=object)

    def lookup(self, item_ids: Iterable[str]) -> np.ndarray:
        """Catalogue index of each id, -1 for items outside the catalogue (one vectorised hash
        lookup: scoring matches every event of every user this way)."""
        ids = item_ids if isinstance(item_ids, np.ndarray) and item_ids.dtype == object else np.array(list(item_ids), dtype=object)
        return self._positions.get_indexer(ids).astype(np.int64)


@dataclass(frozen=True)
class Histories:
    """Each user's item events, oldest first, as flat arrays cut by ``offsets`` (CSR layout).

    ``now`` is the moment each user is scored at (the split cutoff in evaluation, the wall
    clock when serving): recency features are measured from it.
    """

    user_ids: np.ndarray  # str, one per user
    offsets: np.ndarray  # int64, len(user_ids) + 1
    item: np.ndarray  # int64 catalogue index, -1 when the item is outside the catalogue
    etype: np.ndarray  # int8 EVENT_CODES
    t: np.ndarray  # int64 epoch seconds
    category: np.ndarray  # str per event ("" unknown): lets a model embed an item it has never seen
    price: np.ndarray  # float64 per event
    now: np.ndarray  # int64 epoch seconds, one per user

    @classmethod
    def from_events(cls, events: pd.DataFrame, catalogue: Catalogue, users: Sequence[str] | None = None,
                    now: int | np.ndarray | None = None, max_len: int | None = None) -> "Histories":
        """Histories of ``users`` (default: every user in ``events``, sorted) from ``events``.

        Each user's events keep their order in ``events``: normalized events (``t`` column) are
        in ``normalize_events``' order already, others are normalized here. A user without
        events gets an empty history (a new user). ``max_len`` keeps only each user's most
        recent events, like features/sequences does.
        """
        ev = events if "t" in events else normalize_events(events)
        if users is None:
            users = np.array(sorted(ev["user_id"].unique()), dtype=object)
        users = np.asarray(users, dtype=object)
        pos = {u: i for i, u in enumerate(users)}
        row = ev["user_id"].map(pos)
        keep = row.notna().to_numpy()
        ev = ev.loc[keep]
        row = row.loc[keep].to_numpy(dtype=np.int64)
        order = np.argsort(row, kind="stable")
        ev = ev.iloc[order]
        row = row[order]
        counts = np.bincount(row, minlength=len(users))
        if max_len is not None:
            # rank from the end within each user; keep the last max_len
            ends = np.cumsum(counts)
            from_end = ends[row] - np.arange(len(row)) - 1
            sel = from_end < max_len
            ev, row = ev.iloc[sel], row[sel]
            counts = np.bincount(row, minlength=len(users))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        t = ev["t"].to_numpy(dtype=np.int64)
        if now is None:
            now_arr = np.full(len(users), int(t.max()) + 1 if len(t) else 0, dtype=np.int64)
        else:
            now_arr = np.broadcast_to(np.asarray(now, dtype=np.int64), (len(users),)).copy()
        return cls(
            user_ids=users,
            offsets=offsets,
            item=catalogue.lookup(ev["item_id"].to_numpy()),
            etype=ev["etype"].to_numpy(dtype=np.int8),
            t=t,
            category=ev["category"].to_numpy(dtype=object),
            price=ev["price"].to_numpy(dtype=np.float64),
            now=now_arr,
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def row_of_event(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.user_ids), dtype=np.int64), self.lengths)

    def subset(self, rows: np.ndarray) -> "Histories":
        """The histories of the users at ``rows`` (positions), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        idx = concat_ranges(starts, lengths)
        return Histories(
            user_ids=self.user_ids[rows],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            item=self.item[idx], etype=self.etype[idx], t=self.t[idx],
            category=self.category[idx], price=self.price[idx], now=self.now[rows],
        )

    def filter(self, keep: np.ndarray, now: int | np.ndarray | None = None) -> "Histories":
        """The same users with only the events where ``keep`` is true (optionally a new ``now``)."""
        keep = np.asarray(keep, dtype=bool)
        counts = np.bincount(self.row_of_event[keep], minlength=len(self))
        return Histories(
            user_ids=self.user_ids,
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            item=self.item[keep], etype=self.etype[keep], t=self.t[keep],
            category=self.category[keep], price=self.price[keep],
            now=self.now if now is None else np.broadcast_to(np.asarray(now, dtype=np.int64), (len(self),)).copy(),
        )

    def interaction_matrix(self, n_items: int, weights: dict[str, float] | None = None):
        """Sparse users x items matrix of summed event weights (negatives clipped at 0)."""
        import scipy.sparse as sp

        w = event_weight_array(weights)[self.etype]
        ok = (self.item >= 0) & (w > 0)
        m = sp.csr_matrix((w[ok], (self.row_of_event[ok], self.item[ok])), shape=(len(self), n_items), dtype=np.float64)
        m.sum_duplicates()
        return m


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    seg_offset = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - seg_offset, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def event_weight_array(weights: dict[str, float] | None = None) -> np.ndarray:
    """Weight per event code (index = code); remove_from_cart and unknown types weigh 0."""
    default = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
    w = dict(default if weights is None else weights)
    arr = np.zeros(max(EVENT_CODES.values()) + 1, dtype=np.float64)
    for name, code in EVENT_CODES.items():
        arr[code] = max(0.0, float(w.get(name, 0.0)))
    return arr


def read_lake_events(path: Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Read lake/events Parquet (only the columns models need), optionally within [start, end)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    cols = [c for c in EVENT_COLUMNS if c in dataset.schema.names]
    return dataset.to_table(columns=cols, filter=ts_filter(dataset, start, end)).to_pandas()


def ts_filter(dataset, start: pd.Timestamp | None, end: pd.Timestamp | None):
    """The pyarrow filter ``start <= ts < end`` (None: no bound) in the column's own type
    (Spark writes naive UTC)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    ts_type = dataset.schema.field("ts").type

    def bound(value: pd.Timestamp | str) -> pa.Scalar:
        value = pd.Timestamp(value)
        if value.tzinfo is not None and ts_type.tz is None:
            value = value.tz_convert("UTC").tz_localize(None)
        return pa.scalar(value.to_pydatetime(), type=ts_type)

    flt = None
    if start is not None:
        flt = ds.field("ts") >= bound(start)
    if end is not None:
        cond = ds.field("ts") < bound(end)
        flt = cond if flt is None else flt & cond
    return flt


def unique_columns(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct tuples of equal-length integer ``columns``, sorted by the first column, then the
    next: ``np.unique(np.stack(columns), axis=1)`` without its sort of a structured dtype, which
    is about 3x slower than one lexsort."""
    order = np.lexsort(columns[::-1])
    ordered = [np.asarray(c)[order] for c in columns]
    new = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        new[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in ordered])
    return tuple(c[new] for c in ordered)


@dataclass(frozen=True)
class Ragged:
    """A list of int arrays in CSR layout (targets and exclusions per user)."""

    offsets: np.ndarray  # int64, n + 1
    values: np.ndarray  # int64

    @classmethod
    def from_pairs(cls, rows: np.ndarray, values: np.ndarray, n: int, unique: bool = True) -> "Ragged":
        rows = np.asarray(rows, dtype=np.int64)
        values = np.asarray(values, dtype=np.int64)
        if unique and len(rows):
            rows, values = unique_columns(rows, values)
        else:
            order = np.lexsort((values, rows))
            rows, values = rows[order], values[order]
        counts = np.bincount(rows, minlength=n)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values)

    @classmethod
    def empty(cls, n: int) -> "Ragged":
        return cls(np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def subset(self, rows: np.ndarray) -> "Ragged":
        rows = np.asarray(rows, dtype=np.int64)
        starts, lengths = self.offsets[rows], self.lengths[rows]
        return Ragged(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), self.values[concat_ranges(starts, lengths)])

    def tolist(self) -> list[list[int]]:
        return [self[i].tolist() for i in range(len(self))]
