"""SQLite serving store: versioned rows keyed (version, key), a one-row ``live`` pointer.

WAL mode, so readers never wait for the publisher. A read is one SELECT joining the pointer row
to the list row, i.e. one implicit read transaction: it sees one version. Publishing writes the
new version's rows in short batched transactions, then switches the pointer and the version
states in one transaction. Each thread (and process) uses its own read connection.

Reading never creates the database file: before the first publish every read answers
"nothing published".
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from freshrec.serving.base import PublishError, ServingStore, VersionError, _Conflict, check_live

TABLES = {"user": ("user_recs", "user_id"), "similar": ("similar_items", "item_id"),
          "popular": ("popular_items", "category"), "query": ("query_items", "query")}
SCHEMA_VERSION = 1
DELETE_CHUNK = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL UNIQUE,
    state        TEXT NOT NULL CHECK (state IN ('writing', 'complete', 'live', 'retired', 'aborted')),
    created_at   TEXT NOT NULL,
    committed_at TEXT,
    live_at      TEXT,
    replaced_at  TEXT,
    meta         TEXT NOT NULL DEFAULT '{}',
    counts       TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS live (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    version     TEXT,
    switched_at TEXT
);
INSERT OR IGNORE INTO live (id, version, switched_at) VALUES (1, NULL, NULL);
""" + "".join(
    f"CREATE TABLE IF NOT EXISTS {table} (version TEXT NOT NULL, {col} TEXT NOT NULL, value TEXT NOT NULL, "
    f"UNIQUE (version, {col}));\n"
    for table, col in TABLES.values()
)

_READ_LIVE = {kind: f"SELECT l.version, t.value FROM live AS l LEFT JOIN {table} AS t "
                    f"ON t.version = l.version AND t.{col} = ? WHERE l.id = 1"
              for kind, (table, col) in TABLES.items()}
_READ_AT = {kind: f"SELECT value FROM {table} WHERE version = ? AND {col} = ?" for kind, (table, col) in TABLES.items()}
_RECORD_COLS = "seq, version, state, created_at, committed_at, live_at, replaced_at, meta, counts"


def _record(row: tuple) -> dict[str, Any]:
    seq, version, state, created_at, committed_at, live_at, replaced_at, meta, counts = row
    return {"version": version, "seq": seq, "state": state, "created_at": created_at, "committed_at": committed_at,
            "live_at": live_at, "replaced_at": replaced_at, "meta": json.loads(meta or "{}"), "counts": json.loads(counts or "{}")}


class SqliteStore(ServingStore):
    _connection_errors = ()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if str(path) in ("", ":memory:"):
            raise VersionError("an in-memory SQLite serving store cannot be shared between connections; give a file path")
        self.display_url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._wlock = threading.RLock()
        self._wconn_obj: sqlite3.Connection | None = None
        self._wconn_pid = 0
        self._schema_ready = False

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _rconn(self) -> sqlite3.Connection | None:
        """This thread's read connection, or None while the database does not exist."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if not self.path.exists():
            return None
        local.conn = self._connect()
        local.pid = os.getpid()
        return local.conn

    def _wconn(self) -> sqlite3.Connection:
        if self._wconn_obj is None or self._wconn_pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._schema_ready = True
            self._wconn_obj, self._wconn_pid = conn, os.getpid()
        return self._wconn_obj

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        with self._wlock:
            if self._wconn_obj is not None:
                self._wconn_obj.close()
                self._wconn_obj = None

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._rconn()
        if conn is None:
            return []
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    class _Txn:
        """BEGIN IMMEDIATE ... COMMIT on the write connection, under the write lock."""

        def __init__(self, store: "SqliteStore") -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._wlock.acquire()
            try:
                self.conn = self.store._wconn()
                self.conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._wlock.release()
                raise
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                if exc is None:
                    try:
                        self.conn.execute("COMMIT")
                    except BaseException:
                        self.conn.execute("ROLLBACK")
                        raise
                else:
                    self.conn.execute("ROLLBACK")
            finally:
                self.store._wlock.release()

    def _txn(self) -> "SqliteStore._Txn":
        return SqliteStore._Txn(self)

    # -- primitives ----------------------------------------------------------------------
    def _read(self, kind: str, key: str, version: str | None) -> tuple[str | None, Any]:
        conn = self._rconn()
        if conn is None:
            return None, None
        try:
            if version is None:
                row = conn.execute(_READ_LIVE[kind], (key,)).fetchone()
                return (None, None) if row is None else (row[0], row[1])
            row = conn.execute(_READ_AT[kind], (version, key)).fetchone()
            return version, None if row is None else row[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None, None
            raise

    def _live(self) -> str | None:
        rows = self._query("SELECT version FROM live WHERE id = 1")
        return rows[0][0] if rows else None

    def _records(self) -> list[dict[str, Any]]:
        return [_record(r) for r in self._query(f"SELECT {_RECORD_COLS} FROM versions")]

    def _record(self, version: str) -> dict[str, Any] | None:
        rows = self._query(f"SELECT {_RECORD_COLS} FROM versions WHERE version = ?", (version,))
        return _record(rows[0]) if rows else None

    def _create_version(self, version: str, meta: dict[str, Any], created_at: str) -> None:
        with self._txn() as c:
            row = c.execute("SELECT state FROM versions WHERE version = ?", (version,)).fetchone()
            if row is not None:
                if row[0] not in ("retired", "aborted"):
                    raise VersionError(f"version {version} already exists (state: {row[0]})")
                c.execute("DELETE FROM versions WHERE version = ?", (version,))
            c.execute("INSERT INTO versions (version, state, created_at, meta) VALUES (?, 'writing', ?, ?)",
                      (version, created_at, json.dumps(meta)))

    def _write_rows(self, version: str, kind: str, rows: list[tuple[str, str]]) -> None:
        table, col = TABLES[kind]
        with self._txn() as c:
            _require_state(c, version, "writing")
            try:
                c.executemany(f"INSERT INTO {table} (version, {col}, value) VALUES (?, ?, ?)",
                              [(version, k, v) for k, v in rows])
            except sqlite3.IntegrityError:
                raise PublishError(f"duplicate {col} in the {kind} lists of version {version}") from None

    def _finish(self, version: str, counts: dict[str, int], activate: bool, now: str) -> None:
        with self._txn() as c:
            _require_state(c, version, "writing")
            c.execute("UPDATE versions SET state = 'complete', committed_at = ?, counts = ? WHERE version = ?",
                      (now, json.dumps(counts), version))
            if activate:
                _point_live(c, version, now)

    def _switch(self, target: str, expected_live: str | None, now: str) -> None:
        with self._txn() as c:
            live = c.execute("SELECT version FROM live WHERE id = 1").fetchone()[0]
            if live != expected_live:
                raise _Conflict()
            _require_state(c, target, "complete")
            _point_live(c, target, now)

    def _retire(self, version: str, state: str, from_state: str) -> bool:
        with self._txn() as c:
            live = c.execute("SELECT version FROM live WHERE id = 1").fetchone()[0]
            cur = c.execute("UPDATE versions SET state = ? WHERE version = ? AND state = ? AND version IS NOT ?",
                            (state, version, from_state, live))
            return cur.rowcount == 1

    def _drop_data(self, version: str) -> None:
        # In chunks, so a publish or an upsert never waits long for the write lock.
        for table, _ in TABLES.values():
            while True:
                with self._txn() as c:
                    cur = c.execute(f"DELETE FROM {table} WHERE rowid IN "
                                    f"(SELECT rowid FROM {table} WHERE version = ? LIMIT {DELETE_CHUNK})", (version,))
                if cur.rowcount < DELETE_CHUNK:
                    break

    def _upsert(self, kind: str, rows: list[tuple[str, str]], expected_version: str | None) -> str:
        table, col = TABLES[kind]
        with self._txn() as c:
            live = check_live(c.execute("SELECT version FROM live WHERE id = 1").fetchone()[0], expected_version)
            c.executemany(f"INSERT INTO {table} (version, {col}, value) VALUES (?, ?, ?) "
                          f"ON CONFLICT (version, {col}) DO UPDATE SET value = excluded.value",
                          [(live, k, v) for k, v in rows])
            return live

    def _delete_keys(self, kind: str, key: str, versions: list[str]) -> int:
        table, col = TABLES[kind]
        removed = 0
        with self._txn() as c:
            for version in versions:
                removed += c.execute(f"DELETE FROM {table} WHERE version = ? AND {col} = ?", (version, key)).rowcount
        return removed


def _require_state(c: sqlite3.Connection, version: str, state: str) -> None:
    row = c.execute("SELECT state FROM versions WHERE version = ?", (version,)).fetchone()
    if row is None or row[0] != state:
        found = "unknown" if row is None else row[0]
        raise VersionError(f"version {version} is {found}, expected {state}")


def _point_live(c: sqlite3.Connection, version: str, now: str) -> None:
    old = c.execute("SELECT version FROM live WHERE id = 1").fetchone()[0]
    if old == version:
        return
    if old is not None:
        c.execute("UPDATE versions SET state = 'complete', replaced_at = ? WHERE version = ?", (now, old))
    c.execute("UPDATE versions SET state = 'live', live_at = ? WHERE version = ?", (now, version))
    c.execute("UPDATE live SET version = ?, switched_at = ? WHERE id = 1", (version, now))
