"""Each user's batch state in key-value form: ``features/user_state.db``, keyed by user.

The batch writes a user's last FRESHREC_SEQUENCE_LENGTH item events to features/sequences and
their interaction counts to features/interactions, as Parquet. Re-scoring a few users (the
real-time path every ~150 ms, the micro-batch every few minutes) needs only those users' rows,
but a Parquet scan filtered on ``user_id`` reads every row group of a table whose size grows
with the history. So ``matrices`` also writes the two tables into one SQLite file, one row per
user (their last events and the items they have seen, with counts: compressed JSON), and
re-scoring reads the rows of its users by key: its cost follows the number of users
re-scored, not the size of the history.

The file is rebuilt whole by every ``matrices``, under the exclusive features lock, written
under a temporary name and renamed into place, so a reader sees the old state or the new one.
``freshrec forget`` deletes a user's row. A home whose batch ran before this file existed (or
before its layout, ``VERSION``) gets it built from the Parquet tables on first use
(:func:`ensure_user_state`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Sequence

from freshrec.settings import Settings

#: the SQLite limit on bound parameters is 32,766 (3.32+); a chunk stays far below it
CHUNK = 500
#: one row per user: their last events (features/sequences: event ids, item ids, event types,
#: epoch microseconds) and the items they have seen with their counts (features/interactions:
#: item ids, n_events, n_purchase), each a zlib-compressed JSON array of arrays
SCHEMA = """
CREATE TABLE users (user_id TEXT PRIMARY KEY, events BLOB, seen BLOB) WITHOUT ROWID;
PRAGMA user_version = 2;
"""
#: the file's layout (``PRAGMA user_version``): a file of another layout is rebuilt on first use
VERSION = 2
BATCH_ROWS = 20_000


def _pack(arrays: list) -> bytes:
    return zlib.compress(json.dumps(arrays, separators=(",", ":")).encode("utf-8"), 1)


def _unpack(blob: bytes | None, width: int) -> list:
    return json.loads(zlib.decompress(blob)) if blob is not None else [[] for _ in range(width)]


def state_path(settings: Settings) -> Path:
    return settings.features_dir / "user_state.db"


def select_in(conn: sqlite3.Connection, sql: str, values: Sequence, *params) -> list[tuple]:
    """Rows of ``sql`` (whose one ``{marks}`` is an IN list) for every value, in chunks of CHUNK;
    ``params`` bind after the list."""
    rows: list[tuple] = []
    values = list(values)
    for start in range(0, len(values), CHUNK):
        chunk = values[start:start + CHUNK]
        rows += conn.execute(sql.format(marks=",".join("?" * len(chunk))), [*chunk, *params]).fetchall()
    return rows


def _lists(column) -> tuple[list, Any]:
    """A list column of a record batch as (its values as Python objects, row offsets from 0)."""
    offsets = column.offsets.to_numpy()
    return column.flatten().to_pylist(), offsets - offsets[0]


def _rows(user_ids: list[str], columns: list) -> Iterator[tuple[str, list]]:
    """(user, [each column's values of that user's row]) of list columns."""
    lists = [_lists(c) for c in columns]
    for r, user in enumerate(user_ids):
        yield user, [values[offsets[r]:offsets[r + 1]] for values, offsets in lists]


def _sequence_rows(settings: Settings) -> Iterator[list[tuple]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from freshrec.jobs.history import SEQUENCE_COLUMNS
    from freshrec.lake import has_table

    path = settings.features_dir / "sequences"
    if not has_table(path):
        return
    for batch in ds.dataset(str(path), format="parquet").to_batches(columns=SEQUENCE_COLUMNS, batch_size=BATCH_ROWS):
        ts = batch.column("ts")  # timestamps (naive = UTC) as epoch microseconds
        micros = pa.ListArray.from_arrays(ts.offsets, pc.cast(pc.cast(ts.values, pa.timestamp("us"), safe=False), pa.int64()))
        columns = [batch.column("event_ids"), batch.column("item_ids"), batch.column("event_types"), micros]
        yield [(u, _pack(arrays)) for u, arrays in _rows(batch.column("user_id").to_pylist(), columns)]


def _seen_rows(settings: Settings) -> Iterator[list[tuple]]:
    """features/interactions grouped by user (Arrow's hash aggregation: one pass, in memory)."""
    import pyarrow.dataset as ds

    from freshrec.lake import has_table

    path = settings.features_dir / "interactions"
    if not has_table(path):
        return
    table = ds.dataset(str(path), format="parquet").to_table(columns=["user_id", "item_id", "n_events", "n_purchase"])
    grouped = table.group_by("user_id").aggregate([("item_id", "list"), ("n_events", "list"), ("n_purchase", "list")])
    for batch in grouped.to_batches(max_chunksize=BATCH_ROWS):
        columns = [batch.column("item_id_list"), batch.column("n_events_list"), batch.column("n_purchase_list")]
        yield [(u, _pack(arrays), len(arrays[0])) for u, arrays in _rows(batch.column("user_id").to_pylist(), columns)]


def build_user_state(settings: Settings) -> dict[str, int]:
    """Write features/user_state.db from features/sequences and features/interactions (call it
    under the exclusive features lock, right after writing them); returns the row counts."""
    from freshrec.fileio import fsync_path, temp_name

    final = state_path(settings)
    tmp = temp_name(final)
    counts = {"sequences": 0, "seen": 0}
    try:
        with closing(sqlite3.connect(tmp)) as conn:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")  # a new file: fsync'd whole before the rename
            conn.executescript(SCHEMA)
            for rows in _sequence_rows(settings):
                conn.executemany("INSERT INTO users (user_id, events) VALUES (?, ?)", rows)
                counts["sequences"] += len(rows)
            for rows in _seen_rows(settings):
                conn.executemany("INSERT INTO users (user_id, seen) VALUES (?, ?) "
                                 "ON CONFLICT (user_id) DO UPDATE SET seen = excluded.seen", [r[:2] for r in rows])
                counts["seen"] += sum(r[2] for r in rows)
            conn.commit()
        fsync_path(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def _current(path: Path) -> bool:
    """Whether ``path`` is a user state file of this layout (VERSION)."""
    if not path.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    except sqlite3.Error:
        return False


def ensure_user_state(settings: Settings) -> None:
    """Build features/user_state.db once for a home whose last ``matrices`` predates it, or
    predates its layout."""
    from freshrec.lake import features_lock, has_table

    if _current(state_path(settings)) or not has_table(settings.features_dir / "sequences"):
        return
    with features_lock(settings, "user state"):
        if not _current(state_path(settings)):
            build_user_state(settings)


def user_state(settings: Settings, users: Sequence[str]):
    """``users``' batch state: (their features/sequences events, one row per event: user_id,
    event_id, item_id, event_type, ts; their features/interactions count rows). Call it
    under the shared features lock, after :func:`ensure_user_state`; empty frames before any batch."""
    import numpy as np
    import pandas as pd

    from freshrec.jobs.history import COUNT_COLUMNS

    event_columns = ["user_id", "event_id", "item_id", "event_type", "ts"]
    rows: list[tuple] = []
    path = state_path(settings)
    if path.is_file():
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            rows = select_in(conn, "SELECT user_id, events, seen FROM users WHERE user_id IN ({marks})", users)
    events = {c: [] for c in event_columns}
    seen = {c: [] for c in COUNT_COLUMNS}
    for user, packed_events, packed_seen in rows:
        arrays = _unpack(packed_events, 4)
        events["user_id"] += [user] * len(arrays[1])
        for column, values in zip(event_columns[1:], arrays, strict=True):
            events[column] += values
        arrays = _unpack(packed_seen, 3)
        seen["user_id"] += [user] * len(arrays[0])
        for column, values in zip(COUNT_COLUMNS[1:], arrays, strict=True):
            seen[column] += values
    return (pd.DataFrame({**{c: np.asarray(events[c], dtype=object) for c in event_columns[:-1]},
                          "ts": pd.to_datetime(np.asarray(events["ts"], dtype=np.int64), unit="us", utc=True)}),
            pd.DataFrame({"user_id": np.asarray(seen["user_id"], dtype=object), "item_id": np.asarray(seen["item_id"], dtype=object),
                          "n_events": np.asarray(seen["n_events"], dtype=np.int64),
                          "n_purchase": np.asarray(seen["n_purchase"], dtype=np.int64)}, columns=COUNT_COLUMNS))


def forget_user_state(settings: Settings, user_id: str) -> int:
    """Delete ``user_id``'s row (``freshrec forget``, under the features lock); the file is
    vacuumed so no free page keeps a copy. Returns the rows removed (0 or 1)."""
    path = state_path(settings)
    if not path.is_file():
        return 0
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        with conn:
            removed = conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount
        if removed:
            conn.execute("VACUUM")
    return removed
