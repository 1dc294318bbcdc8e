"""PostgreSQL serving store: the SQL store (sql.py) in one schema of a PostgreSQL database.

All tables live in one schema (``freshrec`` by default; ``?schema=`` in the URL changes it, and
is removed before connecting). Lists are ``jsonb`` values. Publishing COPYs the new version's
rows in batches. Every transaction that changes or depends on the pointer locks the ``live``
row first (``FOR UPDATE`` to switch it, ``FOR SHARE`` to retire a version or upsert into the
live one), so those steps serialise on it and never deadlock; readers see a switch all at once
(MVCC). Read connections are autocommit, one per thread (statements are prepared after a few
uses).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

from freshrec.serving.base import store_url
from freshrec.serving.sql import SCHEMA_VERSION, TABLES, SqlStore

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresStore(SqlStore):
    PARAM = "%s"
    JSON_PARAM = "%s::jsonb"
    TYPES = {"seq": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "time": "timestamptz", "json": "jsonb",
             "key": "PRIMARY KEY"}
    LOCK = {"update": " FOR UPDATE", "share": " FOR SHARE"}
    IDS_IN = "= ANY(%s)"  # a text[] parameter
    _connection_errors = (psycopg.OperationalError, psycopg.InterfaceError)
    _reconnect_errors = (psycopg.OperationalError,)
    _duplicate_errors = (pg_errors.UniqueViolation,)

    def __init__(self, url: str | URL, schema: str | None = None) -> None:
        self.url, self.schema, shown = store_url(url, "schema", schema, "freshrec", SCHEMA_RE,
                                                 "use lower-case letters, digits and '_'")
        super().__init__(shown, schema=self.schema)

    def _ids(self, item_ids: list[str]) -> list[str]:
        return item_ids

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=5)

    def _transaction(self, conn: psycopg.Connection) -> Any:
        return conn.transaction()

    def _migrate(self, conn: psycopg.Connection) -> None:
        s = self.schema
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"freshrec-serving-schema:{s}",))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            for statement in self._ddl():
                conn.execute(statement)
            conn.execute(f"COMMENT ON SCHEMA {s} IS 'freshrec serving store, layout version {SCHEMA_VERSION} (docs/serving.md)'")

    def _missing_table(self, exc: Exception) -> bool:
        return isinstance(exc, pg_errors.UndefinedTable)

    def _time(self, text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    def _insert_rows(self, c: psycopg.Connection, kind: str, version: str, rows: list[tuple[str, str]]) -> None:
        table, col = TABLES[kind]
        with c.cursor().copy(f"COPY {self.schema}.{table} (version, {col}, value) FROM STDIN") as copy:
            for k, v in rows:
                copy.write_row((version, k, v))

    # -- test and bench helper -----------------------------------------------------------
    def destroy(self) -> None:
        """Drop this store's schema with everything in it (tests, benchmarks)."""
        with self._wlock:
            conn = self._wconn_obj if self._wconn_obj is not None and not self._wconn_obj.closed else self._connect()
            conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self._schema_ready = False
        self.close()
