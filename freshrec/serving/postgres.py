"""PostgreSQL serving store: tables with a version column, a one-row ``live`` pointer table.

All tables live in one schema (``freshrec`` by default; ``?schema=`` in the URL changes it, and
is removed before connecting). Lists are ``jsonb`` values. A read is one SELECT joining the
pointer row to the list row, so it sees one snapshot. Publishing COPYs the new version's rows
in batches, then switches the pointer and the version states in one transaction. Every
transaction that changes or depends on the pointer locks the ``live`` row first (FOR UPDATE or
FOR SHARE), so commits, rollbacks, prunes and upserts serialise on it and never deadlock.

Each thread uses its own autocommit read connection (statements are prepared after a few
uses); writes go through one connection per store, under a lock.
"""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from freshrec.serving.base import PublishError, ServingError, ServingStore, VersionError, _Conflict, check_live

TABLES = {"user": ("user_recs", "user_id"), "similar": ("similar_items", "item_id"),
          "popular": ("popular_items", "category"), "query": ("query_items", "query")}
SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SCHEMA_VERSION = 1


def split_schema(url: str) -> tuple[str, str | None]:
    """Take freshrec's own ``schema`` query parameter out of a postgres URL (libpq rejects it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class PostgresStore(ServingStore):
    _connection_errors = (psycopg.OperationalError, psycopg.InterfaceError)

    def __init__(self, url: str, schema: str | None = None) -> None:
        url, url_schema = split_schema(url)
        schema = schema or url_schema or "freshrec"
        if not SCHEMA_RE.match(schema):
            raise ServingError(f"malformed schema name {schema!r}: use lower-case letters, digits and '_'")
        self.url = url
        self.schema = schema
        self.display_url = _redact(url) + ("" if schema == "freshrec" else f" (schema {schema})")
        s = schema
        self._sql_live = {kind: f"SELECT l.version, t.value FROM {s}.live AS l LEFT JOIN {s}.{table} AS t "
                                f"ON t.version = l.version AND t.{col} = %s WHERE l.id = 1"
                          for kind, (table, col) in TABLES.items()}
        self._sql_at = {kind: f"SELECT value FROM {s}.{table} WHERE version = %s AND {col} = %s"
                        for kind, (table, col) in TABLES.items()}
        self._record_cols = "seq, version, state, created_at, committed_at, live_at, replaced_at, meta, counts"
        self._local = threading.local()
        self._wlock = threading.RLock()
        self._wconn_obj: psycopg.Connection | None = None
        self._wconn_pid = 0
        self._schema_ready = False

    # -- connections ---------------------------------------------------------------------
    def _rconn(self) -> psycopg.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid() and not conn.closed:
            return conn
        local.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        local.pid = os.getpid()
        return local.conn

    def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read, reconnecting once on a broken connection; [] before the schema exists."""
        for attempt in (0, 1):
            try:
                return self._rconn().execute(sql, params).fetchall()
            except pg_errors.UndefinedTable:
                return []
            except psycopg.OperationalError:
                self._drop_rconn()
                if attempt:
                    raise
        return []

    def _drop_rconn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    def _wconn(self) -> psycopg.Connection:
        if self._wconn_obj is None or self._wconn_obj.closed or self._wconn_pid != os.getpid():
            self._wconn_obj = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            self._wconn_pid = os.getpid()
        if not self._schema_ready:
            self._migrate(self._wconn_obj)
            self._schema_ready = True
        return self._wconn_obj

    def _migrate(self, conn: psycopg.Connection) -> None:
        s = self.schema
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"freshrec-serving-schema:{s}",))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {s}.versions (
                    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    version      text NOT NULL UNIQUE,
                    state        text NOT NULL CHECK (state IN ('writing', 'complete', 'live', 'retired', 'aborted')),
                    created_at   timestamptz NOT NULL,
                    committed_at timestamptz,
                    live_at      timestamptz,
                    replaced_at  timestamptz,
                    meta         jsonb NOT NULL DEFAULT '{{}}',
                    counts       jsonb NOT NULL DEFAULT '{{}}'
                )""")
            conn.execute(f"""
                CREATE TABLE IF NOT EXISTS {s}.live (
                    id          int PRIMARY KEY CHECK (id = 1),
                    version     text,
                    switched_at timestamptz
                )""")
            conn.execute(f"INSERT INTO {s}.live (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
            for table, col in TABLES.values():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.{table} (version text NOT NULL, {col} text NOT NULL, "
                             f"value jsonb NOT NULL, PRIMARY KEY (version, {col}))")
            conn.execute(f"COMMENT ON SCHEMA {s} IS 'freshrec serving store, layout version {SCHEMA_VERSION} (docs/serving.md)'")

    def close(self) -> None:
        self._drop_rconn()
        with self._wlock:
            if self._wconn_obj is not None:
                self._wconn_obj.close()
                self._wconn_obj = None

    class _Txn:
        def __init__(self, store: "PostgresStore") -> None:
            self.store = store

        def __enter__(self) -> psycopg.Connection:
            self.store._wlock.acquire()
            try:
                self.conn = self.store._wconn()
                self.tx = self.conn.transaction()
                self.tx.__enter__()
            except BaseException:
                self.store._wlock.release()
                raise
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.tx.__exit__(exc_type, exc, tb)
            finally:
                self.store._wlock.release()

    def _txn(self) -> "PostgresStore._Txn":
        return PostgresStore._Txn(self)

    def _lock_live(self, c: psycopg.Connection, mode: str = "UPDATE") -> str | None:
        return c.execute(f"SELECT version FROM {self.schema}.live WHERE id = 1 FOR {mode}").fetchone()[0]

    def _state(self, c: psycopg.Connection, version: str, lock: bool = True) -> str | None:
        row = c.execute(f"SELECT state FROM {self.schema}.versions WHERE version = %s" + (" FOR UPDATE" if lock else ""),
                        (version,)).fetchone()
        return None if row is None else row[0]

    def _require_state(self, c: psycopg.Connection, version: str, state: str) -> None:
        found = self._state(c, version)
        if found != state:
            raise VersionError(f"version {version} is {found or 'unknown'}, expected {state}")

    def _point_live(self, c: psycopg.Connection, version: str, old: str | None, now: str) -> None:
        s = self.schema
        if old == version:
            return
        if old is not None:
            c.execute(f"UPDATE {s}.versions SET state = 'complete', replaced_at = %s WHERE version = %s", (_ts(now), old))
        c.execute(f"UPDATE {s}.versions SET state = 'live', live_at = %s WHERE version = %s", (_ts(now), version))
        c.execute(f"UPDATE {s}.live SET version = %s, switched_at = %s WHERE id = 1", (version, _ts(now)))

    # -- primitives ----------------------------------------------------------------------
    def _read(self, kind: str, key: str, version: str | None) -> tuple[str | None, Any]:
        if version is None:
            rows = self._fetch(self._sql_live[kind], (key,))
            return (None, None) if not rows else (rows[0][0], rows[0][1])
        rows = self._fetch(self._sql_at[kind], (version, key))
        return version, rows[0][0] if rows else None

    def _live(self) -> str | None:
        rows = self._fetch(f"SELECT version FROM {self.schema}.live WHERE id = 1")
        return rows[0][0] if rows else None

    def _to_record(self, row: tuple) -> dict[str, Any]:
        seq, version, state, created_at, committed_at, live_at, replaced_at, meta, counts = row
        return {"version": version, "seq": seq, "state": state, "created_at": _iso(created_at),
                "committed_at": _iso(committed_at), "live_at": _iso(live_at), "replaced_at": _iso(replaced_at),
                "meta": meta or {}, "counts": counts or {}}

    def _records(self) -> list[dict[str, Any]]:
        return [self._to_record(r) for r in self._fetch(f"SELECT {self._record_cols} FROM {self.schema}.versions")]

    def _record(self, version: str) -> dict[str, Any] | None:
        rows = self._fetch(f"SELECT {self._record_cols} FROM {self.schema}.versions WHERE version = %s", (version,))
        return self._to_record(rows[0]) if rows else None

    def _create_version(self, version: str, meta: dict[str, Any], created_at: str) -> None:
        s = self.schema
        with self._txn() as c:
            found = self._state(c, version)
            if found is not None:
                if found not in ("retired", "aborted"):
                    raise VersionError(f"version {version} already exists (state: {found})")
                c.execute(f"DELETE FROM {s}.versions WHERE version = %s", (version,))
            c.execute(f"INSERT INTO {s}.versions (version, state, created_at, meta) VALUES (%s, 'writing', %s, %s::jsonb)",
                      (version, _ts(created_at), json.dumps(meta)))

    def _write_rows(self, version: str, kind: str, rows: list[tuple[str, str]]) -> None:
        table, col = TABLES[kind]
        try:
            with self._txn() as c:
                if self._state(c, version, lock=False) != "writing":
                    raise VersionError(f"version {version} is no longer being written")
                with c.cursor().copy(f"COPY {self.schema}.{table} (version, {col}, value) FROM STDIN") as copy:
                    for k, v in rows:
                        copy.write_row((version, k, v))
        except pg_errors.UniqueViolation:
            raise PublishError(f"duplicate {col} in the {kind} lists of version {version}") from None

    def _finish(self, version: str, counts: dict[str, int], activate: bool, now: str) -> None:
        s = self.schema
        with self._txn() as c:
            old = self._lock_live(c)
            self._require_state(c, version, "writing")
            c.execute(f"UPDATE {s}.versions SET state = 'complete', committed_at = %s, counts = %s::jsonb WHERE version = %s",
                      (_ts(now), json.dumps(counts), version))
            if activate:
                self._point_live(c, version, old, now)

    def _switch(self, target: str, expected_live: str | None, now: str) -> None:
        with self._txn() as c:
            old = self._lock_live(c)
            if old != expected_live:
                raise _Conflict()
            self._require_state(c, target, "complete")
            self._point_live(c, target, old, now)

    def _retire(self, version: str, state: str, from_state: str) -> bool:
        with self._txn() as c:
            live = self._lock_live(c, "SHARE")
            if live == version or self._state(c, version) != from_state:
                return False
            c.execute(f"UPDATE {self.schema}.versions SET state = %s WHERE version = %s", (state, version))
            return True

    def _drop_data(self, version: str) -> None:
        for table, _ in TABLES.values():
            with self._txn() as c:
                c.execute(f"DELETE FROM {self.schema}.{table} WHERE version = %s", (version,))

    def _upsert(self, kind: str, rows: list[tuple[str, str]], expected_version: str | None) -> str:
        table, col = TABLES[kind]
        with self._txn() as c:
            live = check_live(self._lock_live(c, "SHARE"), expected_version)
            with c.cursor() as cur:
                cur.executemany(f"INSERT INTO {self.schema}.{table} (version, {col}, value) VALUES (%s, %s, %s::jsonb) "
                                f"ON CONFLICT (version, {col}) DO UPDATE SET value = EXCLUDED.value",
                                [(live, k, v) for k, v in rows])
            return live

    def _delete_keys(self, kind: str, key: str, versions: list[str]) -> int:
        table, col = TABLES[kind]
        with self._txn() as c:
            cur = c.execute(f"DELETE FROM {self.schema}.{table} WHERE version = ANY(%s) AND {col} = %s", (versions, key))
            return cur.rowcount

    # -- test and bench helper -----------------------------------------------------------
    def destroy(self) -> None:
        """Drop this store's schema with everything in it (tests, benchmarks)."""
        with self._wlock:
            conn = self._wconn_obj if self._wconn_obj is not None and not self._wconn_obj.closed else \
                psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self._schema_ready = False
        self.close()
