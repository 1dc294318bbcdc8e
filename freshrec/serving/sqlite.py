"""SQLite serving store: the SQL store (sql.py) on a local file in WAL mode.

WAL mode, so readers never wait for the publisher. Each write is one ``BEGIN IMMEDIATE``
transaction: it takes the database's write lock before it reads the pointer, so a switch, a
prune or an upsert sees the pointer no other writer can move until it commits. Publishing writes
the new version's rows in short batched transactions; pruning deletes in chunks, so a publish or
an upsert never waits long for the write lock.

Reading never creates the database file: before the first publish every read answers
"nothing published".
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from freshrec.serving.base import VersionError
from freshrec.serving.sql import SCHEMA_VERSION, TABLES, SqlStore

DELETE_CHUNK = 5000


class SqliteStore(SqlStore):
    PARAM = JSON_PARAM = "?"
    TYPES = {"seq": "INTEGER PRIMARY KEY AUTOINCREMENT", "time": "TEXT", "json": "TEXT", "key": "UNIQUE"}
    LOCK = {"update": "", "share": ""}  # BEGIN IMMEDIATE already holds the whole database
    IDS_IN = "IN (SELECT value FROM json_each(?))"  # one parameter whatever the number of ids
    _duplicate_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if str(path) in ("", ":memory:"):
            raise VersionError("an in-memory SQLite serving store cannot be shared between connections; give a file path")
        self.path = Path(path)
        super().__init__(f"sqlite:///{self.path}")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _ids(self, item_ids: list[str]) -> str:
        return json.dumps(item_ids)

    def _open_reader(self) -> sqlite3.Connection | None:
        return self._connect() if self.path.exists() else None

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction(conn):
            for statement in self._ddl():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _missing_table(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)

    def _compact(self) -> None:
        # deleted rows stay in free pages and in the WAL until the database is rewritten
        with self._wlock:
            conn = self._wconn()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _drop_data(self, version: str) -> None:
        # in chunks, so a publish or an upsert never waits long for the write lock
        for table, _ in TABLES.values():
            while True:
                with self._txn() as c:
                    cur = c.execute(f"DELETE FROM {table} WHERE rowid IN "
                                    f"(SELECT rowid FROM {table} WHERE version = ? LIMIT {DELETE_CHUNK})", (version,))
                if cur.rowcount < DELETE_CHUNK:
                    break
