"""The SQL serving stores (SQLite, PostgreSQL): tables with a version column and a one-row
``live`` pointer table, one implementation of the backend primitives for both.

A read is one SELECT joining the pointer row to the list row, so it sees one version. Every
write transaction that changes or depends on the pointer reads it first inside the
transaction, and a dialect that needs it adds a lock clause (PostgreSQL: ``FOR UPDATE`` to
switch, ``FOR SHARE`` to retire or upsert), so commits, rollbacks, prunes and upserts
serialise on the pointer and never deadlock. Each thread reads through its own connection;
writes go through one connection per store and process, under a lock.

A dialect sets the placeholders, column types, key constraint and lock clauses, and supplies
the connection factory, the transaction, the schema migration and its error classes
(docs/serving.md shows the resulting layout of each).
"""

from __future__ import annotations

import json
import os
import threading
from abc import abstractmethod
from contextlib import AbstractContextManager, contextmanager
from datetime import timezone
from typing import Any, Iterator

from freshrec.serving.base import DETAILS, MAX_N, PublishError, ServingStore, VersionError, _Conflict, check_live

#: kind -> (table, key column); the item details are a table like the lists, never upserted
TABLES = {"user": ("user_recs", "user_id"), "similar": ("similar_items", "item_id"),
          "popular": ("popular_items", "category"), "query": ("query_items", "query"),
          DETAILS: ("item_details", "item_id")}
SCHEMA_VERSION = 2
RECORD_COLS = "seq, version, state, created_at, committed_at, live_at, replaced_at, meta, counts"


def _iso(value: Any) -> str | None:
    """A stored timestamp as ISO text: SQLite stores the text, PostgreSQL a timestamptz."""
    if value is None or isinstance(value, str):
        return value
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(value: Any) -> dict[str, Any]:
    """A stored JSON object: SQLite stores text, PostgreSQL a jsonb psycopg has decoded."""
    return value if isinstance(value, dict) else json.loads(value or "{}")


def _to_record(row: tuple) -> dict[str, Any]:
    seq, version, state, created_at, committed_at, live_at, replaced_at, meta, counts = row
    return {"version": version, "seq": seq, "state": state, "created_at": _iso(created_at),
            "committed_at": _iso(committed_at), "live_at": _iso(live_at), "replaced_at": _iso(replaced_at),
            "meta": _json(meta), "counts": _json(counts)}


class SqlStore(ServingStore):
    #: placeholder of a parameter, and of a JSON value (PostgreSQL casts it to jsonb)
    PARAM: str
    JSON_PARAM: str
    #: column types per dialect: "seq" (the identity column), "time", "json"; "key": the
    #: constraint on (version, key) of the list tables
    TYPES: dict[str, str]
    #: appended to the SELECT of the pointer ("update": to switch it, "share": to depend on it)
    #: and, "update", of a version row
    LOCK: dict[str, str]
    #: "item_id IN the list of ids" with one parameter, which :meth:`_ids` makes from the ids
    IDS_IN: str
    #: a broken read connection: reconnect once and retry
    _reconnect_errors: tuple[type[BaseException], ...] = ()
    #: a key written twice into one version
    _duplicate_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, display_url: str, schema: str | None = None) -> None:
        self.display_url = display_url
        self._t = f"{schema}." if schema else ""
        self._sql = self._statements()
        self._local = threading.local()
        self._wlock = threading.RLock()
        self._wconn_obj: Any = None
        self._wconn_pid = 0
        self._schema_ready = False

    # -- dialect -------------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any:
        """A new autocommit connection."""

    def _open_reader(self) -> Any:
        """A new read connection, or None while there is nothing to read."""
        return self._connect()

    @abstractmethod
    def _transaction(self, conn: Any) -> AbstractContextManager[Any]:
        """One write transaction on ``conn``: committed on success, rolled back on an exception."""

    @abstractmethod
    def _migrate(self, conn: Any) -> None:
        """Create what :meth:`_ddl` lists, once per store object, before the first write."""

    @abstractmethod
    def _missing_table(self, exc: Exception) -> bool:
        """A read before the first publish created the tables."""

    def _time(self, text: str) -> Any:
        """A timestamp (ISO text) as the dialect's parameter."""
        return text

    def _insert_rows(self, c: Any, kind: str, version: str, rows: list[tuple[str, str]]) -> None:
        c.cursor().executemany(self._sql["insert", kind], [(version, k, v) for k, v in rows])

    @abstractmethod
    def _ids(self, item_ids: list[str]) -> Any:
        """The parameter of :attr:`IDS_IN`."""

    # -- SQL -----------------------------------------------------------------------------
    def _statements(self) -> dict[Any, str]:
        t, p, j = self._t, self.PARAM, self.JSON_PARAM
        sql: dict[Any, str] = {
            "live": f"SELECT version FROM {t}live WHERE id = 1",
            "records": f"SELECT {RECORD_COLS} FROM {t}versions",
            "record": f"SELECT {RECORD_COLS} FROM {t}versions WHERE version = {p}",
            "state": f"SELECT state FROM {t}versions WHERE version = {p}",
            "forget": f"DELETE FROM {t}versions WHERE version = {p}",
            "create": f"INSERT INTO {t}versions (version, state, created_at, meta) VALUES ({p}, 'writing', {p}, {j})",
            "complete": f"UPDATE {t}versions SET state = 'complete', committed_at = {p}, counts = {j} WHERE version = {p}",
            "replaced": f"UPDATE {t}versions SET state = 'complete', replaced_at = {p} WHERE version = {p}",
            "made_live": f"UPDATE {t}versions SET state = 'live', live_at = {p} WHERE version = {p}",
            "point": f"UPDATE {t}live SET version = {p}, switched_at = {p} WHERE id = 1",
            "set_state": f"UPDATE {t}versions SET state = {p} WHERE version = {p}",
        }
        for kind, (table, col) in TABLES.items():
            sql["read_live", kind] = (f"SELECT l.version, t.value FROM {t}live AS l LEFT JOIN {t}{table} AS t "
                                      f"ON t.version = l.version AND t.{col} = {p} WHERE l.id = 1")
            sql["read_at", kind] = f"SELECT value FROM {t}{table} WHERE version = {p} AND {col} = {p}"
            sql["insert", kind] = f"INSERT INTO {t}{table} (version, {col}, value) VALUES ({p}, {p}, {j})"
            sql["upsert", kind] = sql["insert", kind] + f" ON CONFLICT (version, {col}) DO UPDATE SET value = excluded.value"
            sql["drop", kind] = f"DELETE FROM {t}{table} WHERE version = {p}"
            sql["delete_key", kind] = f"DELETE FROM {t}{table} WHERE {col} = {p}"
        # as text: decoded all at once (psycopg would decode each jsonb value on its own)
        sql["details"] = (f"SELECT item_id, CAST(value AS text) FROM {t}item_details "
                          f"WHERE version = {p} AND item_id {self.IDS_IN}")
        return sql

    def _ddl(self) -> list[str]:
        t, seq, time, js, key = self._t, *(self.TYPES[k] for k in ("seq", "time", "json", "key"))
        states = "'writing', 'complete', 'live', 'retired', 'aborted'"
        return [
            f"CREATE TABLE IF NOT EXISTS {t}versions (seq {seq}, version text NOT NULL UNIQUE, "
            f"state text NOT NULL CHECK (state IN ({states})), created_at {time} NOT NULL, committed_at {time}, "
            f"live_at {time}, replaced_at {time}, meta {js} NOT NULL DEFAULT '{{}}', counts {js} NOT NULL DEFAULT '{{}}')",
            f"CREATE TABLE IF NOT EXISTS {t}live (id integer PRIMARY KEY CHECK (id = 1), version text, switched_at {time})",
            f"INSERT INTO {t}live (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
            *(f"CREATE TABLE IF NOT EXISTS {t}{table} (version text NOT NULL, {col} text NOT NULL, value {js} NOT NULL, "
              f"{key} (version, {col}))" for table, col in TABLES.values()),
        ]

    # -- connections ---------------------------------------------------------------------
    def _rconn(self) -> Any:
        """This thread's read connection (a forked child opens its own), or None."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid() and not getattr(conn, "closed", False):
            return conn
        local.conn, local.pid = self._open_reader(), os.getpid()
        return local.conn

    def _drop_rconn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read, reconnecting once on a broken connection; [] before the schema exists."""
        for attempt in (0, 1):
            conn = self._rconn()
            if conn is None:
                return []
            try:
                return conn.execute(sql, params).fetchall()
            except Exception as exc:
                if self._missing_table(exc):
                    return []
                if attempt or not isinstance(exc, self._reconnect_errors):
                    raise
                self._drop_rconn()
        return []

    def _wconn(self) -> Any:
        conn = self._wconn_obj
        if conn is None or getattr(conn, "closed", False) or self._wconn_pid != os.getpid():
            conn = self._wconn_obj = self._connect()
            self._wconn_pid = os.getpid()
        if not self._schema_ready:
            self._migrate(conn)
            self._schema_ready = True
        return conn

    @contextmanager
    def _txn(self) -> Iterator[Any]:
        """A write transaction on the write connection, under the write lock."""
        with self._wlock:
            conn = self._wconn()
            with self._transaction(conn):
                yield conn

    def close(self) -> None:
        self._drop_rconn()
        with self._wlock:
            if self._wconn_obj is not None:
                self._wconn_obj.close()
                self._wconn_obj = None

    # -- inside a write transaction ------------------------------------------------------
    def _lock_live(self, c: Any, mode: str) -> str | None:
        return c.execute(self._sql["live"] + self.LOCK[mode]).fetchone()[0]

    def _state(self, c: Any, version: str, lock: bool = True) -> str | None:
        row = c.execute(self._sql["state"] + (self.LOCK["update"] if lock else ""), (version,)).fetchone()
        return None if row is None else row[0]

    def _require_state(self, c: Any, version: str, state: str, lock: bool = True) -> None:
        found = self._state(c, version, lock)
        if found != state:
            raise VersionError(f"version {version} is {found or 'unknown'}, expected {state}")

    def _point_live(self, c: Any, version: str, old: str | None, now: str) -> None:
        if old == version:
            return
        at = self._time(now)
        if old is not None:
            c.execute(self._sql["replaced"], (at, old))
        c.execute(self._sql["made_live"], (at, version))
        c.execute(self._sql["point"], (version, at))

    # -- primitives ----------------------------------------------------------------------
    def _read(self, kind: str, key: str, version: str | None, n: int = MAX_N) -> tuple[str | None, Any]:
        if version is None:
            rows = self._fetch(self._sql["read_live", kind], (key,))
            return (rows[0][0], rows[0][1]) if rows else (None, None)
        rows = self._fetch(self._sql["read_at", kind], (version, key))
        return version, rows[0][0] if rows else None

    def _read_details(self, version: str, item_ids: list[str]) -> list[Any]:
        found = dict(self._fetch(self._sql["details"], (version, self._ids(item_ids))))
        return [found.get(i) for i in item_ids]

    def _live(self) -> str | None:
        rows = self._fetch(self._sql["live"])
        return rows[0][0] if rows else None

    def _records(self) -> list[dict[str, Any]]:
        return [_to_record(r) for r in self._fetch(self._sql["records"])]

    def _record(self, version: str) -> dict[str, Any] | None:
        rows = self._fetch(self._sql["record"], (version,))
        return _to_record(rows[0]) if rows else None

    def _create_version(self, version: str, meta: dict[str, Any], created_at: str) -> None:
        with self._txn() as c:
            found = self._state(c, version)
            if found is not None:
                if found not in ("retired", "aborted"):
                    raise VersionError(f"version {version} already exists (state: {found})")
                c.execute(self._sql["forget"], (version,))
            c.execute(self._sql["create"], (version, self._time(created_at), json.dumps(meta)))

    def _write_rows(self, version: str, kind: str, rows: list[tuple[str, str]]) -> None:
        try:
            with self._txn() as c:
                self._require_state(c, version, "writing", lock=False)
                self._insert_rows(c, kind, version, rows)
        except self._duplicate_errors:
            raise PublishError(f"duplicate {TABLES[kind][1]} in the {kind} lists of version {version}") from None

    def _finish(self, version: str, counts: dict[str, int], activate: bool, now: str) -> None:
        with self._txn() as c:
            old = self._lock_live(c, "update")
            self._require_state(c, version, "writing")
            c.execute(self._sql["complete"], (self._time(now), json.dumps(counts), version))
            if activate:
                self._point_live(c, version, old, now)

    def _switch(self, target: str, expected_live: str | None, now: str) -> None:
        with self._txn() as c:
            old = self._lock_live(c, "update")
            if old != expected_live:
                raise _Conflict()
            self._require_state(c, target, "complete")
            self._point_live(c, target, old, now)

    def _retire(self, version: str, state: str, from_state: str) -> bool:
        with self._txn() as c:
            live = self._lock_live(c, "share")
            if live == version or self._state(c, version) != from_state:
                return False
            c.execute(self._sql["set_state"], (state, version))
            return True

    def _drop_data(self, version: str) -> None:
        for kind in TABLES:
            with self._txn() as c:
                c.execute(self._sql["drop", kind], (version,))

    def _delete_key(self, kind: str, key: str) -> int:
        with self._txn() as c:
            deleted = c.execute(self._sql["delete_key", kind], (key,)).rowcount
        self._compact()
        return int(deleted)

    def _compact(self) -> None:  # noqa: B027 - only where deleted rows would linger in our own files
        """Rewrite the store's files so deleted rows leave no copy behind."""

    def _upsert_into(self, kind: str, rows: list[tuple[str, str]], version: str) -> None:
        with self._txn() as c:
            state = self._state(c, version, lock=True)
            if state not in ("complete", "live"):
                raise VersionError(f"version {version} is {state or 'unknown'}: its lists cannot be refreshed")
            c.cursor().executemany(self._sql["upsert", kind], [(version, k, v) for k, v in rows])

    def _upsert(self, kind: str, rows: list[tuple[str, str]], expected_version: str | None) -> str:
        with self._txn() as c:
            live = check_live(self._lock_live(c, "share"), expected_version)
            c.cursor().executemany(self._sql["upsert", kind], [(live, k, v) for k, v in rows])
            return live
