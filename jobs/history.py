"""A user's last L item events and the items kept out of their list, defined once.

Training (``models.data``: ``normalize_events`` and ``Histories``), the batch features
(``jobs.matrices.recent_sequences`` and ``jobs.score.user_inputs``, the Spark twins of
:func:`last_events` and :func:`seen_pairs`) and micro-batch re-scoring (:func:`scoring_frame`)
read a user's events in one order and exclude by one rule, so a model is served the sequences
it was trained on.

The order (``EVENT_ORDER``) is total: time at full precision, then the event id. The lake holds
one row per event id (the clean step deduplicates on it) and features/sequences and
features/recent carry it, so every path breaks ties the same way, whatever order files or
partitions were read in: a data set with one timestamp per day (Ta-Feng) ties a whole day's
basket on time. Item id and event type come last only for frames without event ids
(experiments and tests on in-memory logs).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.schemas import ITEM_EVENT_TYPES

#: a user's events, oldest first: the sort keys after ``user_id``
EVENT_ORDER = ("ts", "event_id", "item_id", "event_type")
#: FRESHREC_EXCLUDE_SEEN -> which interaction-count rows are "seen" (a SQL predicate that
#: Spark's ``where`` and pandas' ``query`` both read)
SEEN_RULE = {"all": "n_events > 0", "purchased": "n_purchase > 0"}
COUNT_COLUMNS = ["user_id", "item_id", "n_events", "n_purchase"]
#: columns of features/sequences that re-scoring reads (arrays, one row per user; ``freshrec.userstate``)
SEQUENCE_COLUMNS = ["user_id", "event_ids", "item_ids", "event_types", "ts"]
SCORING_COLUMNS = ["user_id", "item_ids", "event_types", "t", "exclude"]


def scoring_schema() -> pa.Schema:
    """SCORING_COLUMNS with their Arrow types: what ``jobs.score.score_arrow`` reads, as Spark's
    ``jobs.score.user_inputs`` gives them and ``score_frame`` builds them from pandas."""
    strings = pa.list_(pa.string())
    return pa.schema([("user_id", pa.string()), ("item_ids", strings), ("event_types", strings),
                      ("t", pa.list_(pa.int64())), ("exclude", strings)])


def epoch_seconds(ts: pd.Series) -> np.ndarray:
    """Whole epoch seconds of timestamps (any unit, naive = UTC) or of epoch milliseconds."""
    if pd.api.types.is_numeric_dtype(ts):  # epoch milliseconds, as in the canonical log
        return ts.to_numpy(dtype=np.int64) // 1000
    since = pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")
    return (since // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def item_events(events: pd.DataFrame) -> pd.DataFrame:
    """The item events of ``events`` (searches and rows without an item dropped) with string ids,
    one row per event id, sorted by user then ``EVENT_ORDER``. ``ts`` keeps its precision:
    it orders the events within a second."""
    missing = {"user_id", "item_id", "event_type", "ts"} - set(events.columns)
    if missing:
        raise ValueError(f"events lack column(s): {', '.join(sorted(missing))}")
    df = events.loc[events["event_type"].isin(ITEM_EVENT_TYPES) & events["item_id"].notna()]
    ids = {c: df[c].astype(str) for c in ("user_id", "item_id", "event_type", "event_id") if c in df}
    ts = df["ts"] if pd.api.types.is_numeric_dtype(df["ts"]) else pd.to_datetime(df["ts"], utc=True)
    df = df.assign(**ids, ts=ts).reset_index(drop=True)
    if not len(df):
        return df
    # Arrow sorts strings by their UTF-8 bytes, as Spark does, and stably; pandas' multi-key
    # sort_values first sorts every key's distinct values: seconds for millions of event ids
    keys = ["user_id", *[c for c in EVENT_ORDER if c in df]]
    order = pc.sort_indices(pa.Table.from_pandas(df[keys], preserve_index=False),
                            sort_keys=[(k, "ascending") for k in keys]).to_numpy()
    if "event_id" in df:  # an event read twice (a batch table and a micro-batch): its copies are adjacent
        ids = df["event_id"].to_numpy()[order]
        order = order[np.concatenate([[True], ids[1:] != ids[:-1]])]
    return df.iloc[order].reset_index(drop=True)


def last_events(events: pd.DataFrame, length: int) -> pd.DataFrame:
    """Each user's last ``length`` item events (:func:`item_events`), oldest first."""
    ev = item_events(events)
    return ev.loc[ev.groupby("user_id", sort=False).cumcount(ascending=False) < length].reset_index(drop=True)


def event_counts(events: pd.DataFrame) -> pd.DataFrame:
    """Item events as interaction-count rows (one event each), so SEEN_RULE reads them as it
    reads features/interactions."""
    return pd.DataFrame({"user_id": events["user_id"].to_numpy(), "item_id": events["item_id"].to_numpy(),
                         "n_events": 1, "n_purchase": (events["event_type"] == "purchase").to_numpy(dtype=np.int64)})


def seen_pairs(counts: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The (user_id, item_id) pairs FRESHREC_EXCLUDE_SEEN ``mode`` keeps out of the users'
    lists: interaction-count rows (features/interactions, :func:`event_counts`, or both) that
    pass SEEN_RULE; none for ``none``."""
    if mode == "none":
        return counts.iloc[:0][["user_id", "item_id"]]
    return counts.query(SEEN_RULE[mode])[["user_id", "item_id"]].drop_duplicates()


def scoring_frame(users: Sequence[str], events: pd.DataFrame, counts: pd.DataFrame, length: int,
                  mode: str) -> pd.DataFrame:
    """What ``jobs.score.score_frame`` reads for ``users`` (in that order): each user's last
    ``length`` item events of ``events`` (item_ids, event_types, t epoch seconds) and the items
    ``counts`` make them exclude (``exclude``, sorted). A user without events gets empty arrays."""
    seq = last_events(events, length)
    seq = seq.assign(t=epoch_seconds(seq["ts"]))
    groups = dict(tuple(seq.groupby("user_id", sort=False)))
    excluded = {u: np.sort(g["item_id"].to_numpy(dtype=object)) for u, g in
                seen_pairs(counts.astype({"user_id": str, "item_id": str}), mode).groupby("user_id", sort=False)}
    empty = seq.iloc[:0]
    return pd.DataFrame({
        "user_id": list(users),
        "item_ids": [groups.get(u, empty)["item_id"].to_numpy(dtype=object) for u in users],
        "event_types": [groups.get(u, empty)["event_type"].to_numpy(dtype=object) for u in users],
        "t": [groups.get(u, empty)["t"].to_numpy(dtype=np.int64) for u in users],
        "exclude": [excluded.get(u, np.zeros(0, object)) for u in users],
    }, columns=SCORING_COLUMNS)
