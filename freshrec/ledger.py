"""A small SQLite ledger of per-file counts and run records, kept under FRESHREC_HOME.

Counts are stored per landing file and replaced on every (re)processing of that file, so a
rerun never counts a row twice and the cumulative totals always reconcile:
read = clean + quarantined + duplicates.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

COUNT_KEYS = ("read", "clean", "quarantined", "duplicates")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_counts (
    source_file TEXT PRIMARY KEY,
    read INTEGER NOT NULL, clean INTEGER NOT NULL, quarantined INTEGER NOT NULL, duplicates INTEGER NOT NULL,
    batch_id TEXT NOT NULL, updated_at TEXT NOT NULL,
    CHECK (read = clean + quarantined + duplicates)
);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT, finished_at TEXT,
    state TEXT NOT NULL, detail TEXT
);
CREATE TABLE IF NOT EXISTS microbatches (
    batch_id TEXT PRIMARY KEY, finished_at TEXT NOT NULL, detail TEXT NOT NULL
);
"""


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.executescript(_SCHEMA)
        return conn

    def record_file_counts(self, rows: Iterable[Mapping[str, Any]], batch_id: str, replace_all: bool = False) -> None:
        """Store counts for each source file in one transaction.

        ``replace_all`` is for a full rebuild: files absent from ``rows`` are removed too.
        """
        now = utcnow_iso()
        with closing(self._connect()) as conn, conn:
            if replace_all:
                conn.execute("DELETE FROM file_counts")
            conn.executemany(
                "INSERT OR REPLACE INTO file_counts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r["source_file"], int(r["read"]), int(r["clean"]), int(r["quarantined"]), int(r["duplicates"]), batch_id, now)
                 for r in rows],
            )

    def totals(self) -> dict[str, int]:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT COALESCE(SUM(read),0), COALESCE(SUM(clean),0), COALESCE(SUM(quarantined),0), "
                               "COALESCE(SUM(duplicates),0) FROM file_counts").fetchone()
        return dict(zip(COUNT_KEYS, (int(v) for v in row), strict=False))

    def file_counts(self) -> dict[str, dict[str, int]]:
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT source_file, read, clean, quarantined, duplicates FROM file_counts").fetchall()
        return {r[0]: dict(zip(COUNT_KEYS, r[1:], strict=False)) for r in rows}

    def file_batches(self) -> dict[str, str]:
        """Which batch last counted each landing file."""
        with closing(self._connect()) as conn:
            return dict(conn.execute("SELECT source_file, batch_id FROM file_counts").fetchall())

    def record_microbatch(self, batch_id: str, detail: Mapping[str, Any]) -> None:
        """One micro-batch's summary and freshness (replaced when the batch id is rerun)."""
        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR REPLACE INTO microbatches VALUES (?, ?, ?)",
                         (batch_id, utcnow_iso(), json.dumps(detail, default=str)))

    def recent_microbatches(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest micro-batches first, each ``{"batch_id", "finished_at", **detail}``."""
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT batch_id, finished_at, detail FROM microbatches "
                                "ORDER BY finished_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [{"batch_id": r[0], "finished_at": r[1], **json.loads(r[2])} for r in rows]

    def record_run(self, run_key: str, kind: str, state: str, started_at: str | None = None,
                   finished_at: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_key) DO UPDATE SET "
                "state=excluded.state, started_at=COALESCE(excluded.started_at, runs.started_at), "
                "finished_at=excluded.finished_at, detail=COALESCE(excluded.detail, runs.detail)",
                (run_key, kind, started_at, finished_at, state, json.dumps(detail, default=str) if detail is not None else None),
            )

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT run_key, kind, started_at, finished_at, state, detail FROM runs "
                                "ORDER BY COALESCE(finished_at, started_at) DESC LIMIT ?", (limit,)).fetchall()
        return [{"run_key": r[0], "kind": r[1], "started_at": r[2], "finished_at": r[3], "state": r[4],
                 "detail": json.loads(r[5]) if r[5] else None} for r in rows]
