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
CREATE TABLE IF NOT EXISTS landing_files (
    name TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('claimed', 'taken', 'quarantined')),
    batch_id TEXT NOT NULL, code TEXT, message TEXT, path TEXT, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, mode TEXT NOT NULL, variants TEXT NOT NULL, split TEXT NOT NULL,
    traffic REAL NOT NULL, metric TEXT NOT NULL, salt TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'stopped')),
    created_at TEXT NOT NULL, stopped_at TEXT, versions TEXT NOT NULL DEFAULT '{}',
    sources TEXT NOT NULL DEFAULT '{}', run_id TEXT, report TEXT, decision TEXT
);
CREATE TABLE IF NOT EXISTS erasures (
    subject TEXT NOT NULL, reason TEXT, state TEXT NOT NULL, erased_at TEXT NOT NULL, detail TEXT NOT NULL
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
            if replace_all:  # the files quarantined whole are no longer in the landing zone: keep their counts
                conn.execute("DELETE FROM file_counts WHERE source_file NOT IN "
                             "(SELECT name FROM landing_files WHERE state = 'quarantined')")
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

    def whole_file_rows(self) -> int:
        """Rows counted for the landing files quarantined whole (freshrec.intake): the lines
        read before each fault, and the fault."""
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT COALESCE(SUM(read), 0) FROM file_counts WHERE source_file IN "
                               "(SELECT name FROM landing_files WHERE state = 'quarantined')").fetchone()
        return int(row[0])

    def file_counts(self) -> dict[str, dict[str, int]]:
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT source_file, read, clean, quarantined, duplicates FROM file_counts").fetchall()
        return {r[0]: dict(zip(COUNT_KEYS, r[1:], strict=False)) for r in rows}

    # -- landing files (freshrec.intake) ---------------------------------------------------

    def landing_states(self) -> dict[str, dict[str, Any]]:
        """Every landing file the pipeline has decided on: state, size, mtime_ns, batch_id, code."""
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT name, state, size, mtime_ns, batch_id, code, message, path, updated_at "
                                "FROM landing_files").fetchall()
        keys = ("state", "size", "mtime_ns", "batch_id", "code", "message", "path", "updated_at")
        return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}

    def record_landing(self, taken: Iterable[tuple[str, int, int]], quarantined: Iterable[Mapping[str, Any]],
                       batch_id: str, state: str) -> None:
        """Record files taken (or claimed) by ``batch_id`` as (name, size, mtime_ns), and files
        quarantined whole, in one transaction."""
        now = utcnow_iso()
        with closing(self._connect()) as conn, conn:
            conn.executemany("INSERT OR REPLACE INTO landing_files VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, ?)",
                             [(name, size, mtime, state, batch_id, now) for name, size, mtime in taken])
            conn.executemany("INSERT OR REPLACE INTO landing_files VALUES (?, ?, ?, 'quarantined', ?, ?, ?, ?, ?)",
                             [(q["name"], q["size"], q["mtime_ns"], batch_id, q["code"], q["message"], q["path"], now)
                              for q in quarantined])

    def restat_landing(self, name: str, size: int, mtime_ns: int) -> None:
        """A taken file was rewritten on purpose (``freshrec forget``): its new size and mtime."""
        with closing(self._connect()) as conn, conn:
            conn.execute("UPDATE landing_files SET size = ?, mtime_ns = ?, updated_at = ? WHERE name = ?",
                         (size, mtime_ns, utcnow_iso(), name))

    # -- erasures (freshrec.privacy) ---------------------------------------------------------

    def subject_hash(self, user_id: str) -> str:
        """A salted SHA-256 of a user id: this home's random salt, kept here, never the id."""
        import hashlib
        import secrets

        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('erasure_salt', ?)", (secrets.token_hex(16),))
            salt = conn.execute("SELECT value FROM meta WHERE key = 'erasure_salt'").fetchone()[0]
        return hashlib.sha256(f"{salt}:{user_id}".encode("utf-8")).hexdigest()

    def record_erasure(self, user_id: str, reason: str | None, detail: Mapping[str, Any], state: str) -> dict[str, Any]:
        record = {"subject": self.subject_hash(user_id), "reason": reason, "state": state, "erased_at": utcnow_iso(),
                  "detail": dict(detail)}
        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT INTO erasures VALUES (?, ?, ?, ?, ?)", (record["subject"], reason, state,
                                                                          record["erased_at"], json.dumps(detail)))
        return record

    def erasures(self) -> list[dict[str, Any]]:
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT subject, reason, state, erased_at, detail FROM erasures ORDER BY rowid").fetchall()
        return [{"subject": r[0], "reason": r[1], "state": r[2], "erased_at": r[3], "detail": json.loads(r[4])} for r in rows]

    def open_claims(self) -> dict[str, list[str]]:
        """Files claimed by micro-batches that never finished, by batch id (oldest first)."""
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT batch_id, name FROM landing_files WHERE state = 'claimed' "
                                "ORDER BY batch_id, name").fetchall()
        out: dict[str, list[str]] = {}
        for batch_id, name in rows:
            out.setdefault(batch_id, []).append(name)
        return out

    def finish_claim(self, batch_id: str) -> None:
        """A micro-batch finished: its claimed files are taken."""
        with closing(self._connect()) as conn, conn:
            conn.execute("UPDATE landing_files SET state = 'taken', updated_at = ? WHERE batch_id = ? AND state = 'claimed'",
                         (utcnow_iso(), batch_id))

    def next_microbatch_id(self) -> str:
        """The id the next micro-batch gets: this ledger's random tag and a sequence number (the
        tag keeps ids unique even if the ledger is ever lost and numbering starts again).
        :meth:`use_microbatch_id` spends it; until then every call returns the same id."""
        import uuid

        with closing(self._connect()) as conn, conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('stream_tag', ?)", (uuid.uuid4().hex[:8],))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('microbatch_seq', '0')")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        return f"{meta['stream_tag']}-{int(meta['microbatch_seq']) + 1:06d}"

    def use_microbatch_id(self, batch_id: str) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'microbatch_seq'", (str(int(batch_id.rsplit("-", 1)[1])),))

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
