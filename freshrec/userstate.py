"""Each user's batch state in key-value form: ``features/user_state.db``, keyed by user.

The batch writes a user's last FRESHREC_SEQUENCE_LENGTH item events to features/sequences and
their interaction counts to features/interactions, as Parquet. Re-scoring a few users (the
real-time path every ~150 ms, the micro-batch every few minutes) needs only those users' rows,
but a Parquet scan filtered on ``user_id`` reads every row group of a table whose size grows
with the history. So ``matrices`` also writes the two tables into one SQLite file, with
``user_id`` as the leading key of both, and re-scoring reads them by key: its cost follows the
number of users re-scored, not the size of the history.

The file is rebuilt whole by every ``matrices``, under the exclusive features lock, written
under a temporary name and renamed into place, so a reader sees the old state or the new one.
``freshrec forget`` deletes a user's rows. A home whose batch ran before this file existed gets
it built from the Parquet tables on first use (:func:`ensure_user_state`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterator, Sequence

from freshrec.settings import Settings

#: the SQLite limit on bound parameters is 32,766 (3.32+); a chunk stays far below it
CHUNK = 500
SCHEMA = """
CREATE TABLE sequences (user_id TEXT PRIMARY KEY, event_ids TEXT NOT NULL, item_ids TEXT NOT NULL,
                        event_types TEXT NOT NULL, ts_us TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE seen (user_id TEXT NOT NULL, item_id TEXT NOT NULL, n_events INTEGER NOT NULL,
                   n_purchase INTEGER NOT NULL, PRIMARY KEY (user_id, item_id)) WITHOUT ROWID;
"""
BATCH_ROWS = 50_000


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


def _micros(values) -> list[int]:
    """Timestamps (an Arrow list's values, naive = UTC) as epoch microseconds."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pc.cast(values, pa.timestamp("us")), pa.int64()).to_pylist()


def _sequence_rows(settings: Settings) -> Iterator[list[tuple]]:
    import pyarrow.dataset as ds

    from freshrec.jobs.history import SEQUENCE_COLUMNS
    from freshrec.lake import has_table

    path = settings.features_dir / "sequences"
    if not has_table(path):
        return
    for batch in ds.dataset(str(path), format="parquet").to_batches(columns=SEQUENCE_COLUMNS, batch_size=BATCH_ROWS):
        cols = batch.to_pydict()
        ts = [_micros(batch.column("ts")[i].values) for i in range(batch.num_rows)]
        yield [(u, json.dumps(e), json.dumps(i), json.dumps(t), json.dumps(s))
               for u, e, i, t, s in zip(cols["user_id"], cols["event_ids"], cols["item_ids"], cols["event_types"], ts)]


def _seen_rows(settings: Settings) -> Iterator[list[tuple]]:
    import pyarrow.dataset as ds

    from freshrec.lake import has_table

    path = settings.features_dir / "interactions"
    if not has_table(path):
        return
    columns = ["user_id", "item_id", "n_events", "n_purchase"]
    for batch in ds.dataset(str(path), format="parquet").to_batches(columns=columns, batch_size=BATCH_ROWS):
        cols = batch.to_pydict()
        yield list(zip(cols["user_id"], cols["item_id"], cols["n_events"], cols["n_purchase"]))


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
            for table, batches, marks in (("sequences", _sequence_rows(settings), "?,?,?,?,?"),
                                          ("seen", _seen_rows(settings), "?,?,?,?")):
                for rows in batches:
                    conn.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
                    counts[table] += len(rows)
            conn.commit()
        fsync_path(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def ensure_user_state(settings: Settings) -> None:
    """Build features/user_state.db once for a home whose last ``matrices`` predates it."""
    from freshrec.lake import features_lock, has_table

    if state_path(settings).is_file() or not has_table(settings.features_dir / "sequences"):
        return
    with features_lock(settings, "user state"):
        if not state_path(settings).is_file():
            build_user_state(settings)


def user_state(settings: Settings, users: Sequence[str]):
    """``users``' batch state: (their features/sequences events, one row per event: user_id,
    event_id, item_id, event_type, ts; their features/interactions count rows). Call it
    under the shared features lock, after :func:`ensure_user_state`; empty frames before any batch."""
    import numpy as np
    import pandas as pd

    from freshrec.jobs.history import COUNT_COLUMNS

    event_columns = ["user_id", "event_id", "item_id", "event_type", "ts"]
    sequences: list[tuple] = []
    seen: list[tuple] = []
    path = state_path(settings)
    if path.is_file():
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            sequences = select_in(conn, "SELECT user_id, event_ids, item_ids, event_types, ts_us FROM sequences "
                                  "WHERE user_id IN ({marks})", users)
            seen = select_in(conn, "SELECT user_id, item_id, n_events, n_purchase FROM seen WHERE user_id IN ({marks})",
                             users)
    parts = {c: [] for c in event_columns}
    for user, *arrays in sequences:
        event_ids, item_ids, event_types, ts = (json.loads(a) for a in arrays)
        parts["user_id"] += [user] * len(item_ids)
        for column, values in zip(event_columns[1:], (event_ids, item_ids, event_types, ts)):
            parts[column] += values
    events = pd.DataFrame({**{c: np.asarray(parts[c], dtype=object) for c in event_columns[:-1]},
                           "ts": pd.to_datetime(np.asarray(parts["ts"], dtype=np.int64), unit="us", utc=True)})
    return events, pd.DataFrame(seen, columns=COUNT_COLUMNS)


def forget_user_state(settings: Settings, user_id: str) -> int:
    """Delete ``user_id``'s rows (``freshrec forget``, under the features lock); the file is
    vacuumed so no free page keeps a copy. Returns the rows removed."""
    path = state_path(settings)
    if not path.is_file():
        return 0
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        with conn:
            removed = sum(conn.execute(f"DELETE FROM {t} WHERE user_id = ?", (user_id,)).rowcount
                          for t in ("sequences", "seen"))
        if removed:
            conn.execute("VACUUM")
    return removed
