"""``freshrec forget USER_ID``: erase one user from every place freshrec keeps them.

Where a user lives, and how each place is erased:

* **landing files** (``landing/events``) and **files quarantined whole**
  (``lake/quarantine_files``): rewritten without the user's lines, atomically, gzip kept; the
  ledger is told the new size, so a rewritten file is not reported as changed. A line is the
  user's when its ``user_id`` (as the clean job reads it: trimmed text) is the id, or, for a line
  that is not JSON, when it names the id as its ``user_id`` value or CSV column;
* **the lake** (``lake/events``), **the features** (``user_index``, ``interactions``,
  ``sequences``, ``recent``) and **every kept version's tables** (``recs/*/user_topn``): every
  Parquet file with a ``user_id`` column holding the id is rewritten without those rows; the
  key-value copy of the features (``features/user_state.db``) loses the user's row and is vacuumed;
* **the quarantine** (``lake/quarantine``): the rows whose raw line is the user's;
* **the serving store**: the user's list, in every version (SQLite is then vacuumed, so no
  deleted page keeps a copy).

The recommenders (``recs/*/recommender.pkl``, the MLflow models) hold item statistics and
weights, no user ids; freshrec logs no MLflow datasets. Since the landing zone no longer holds
the user's events, the next batch cannot bring them back.

The erasure is recorded in the ledger's ``erasures`` table under a salted SHA-256 of the id
(the salt is this home's, kept in the ledger), never under the id itself. Everything runs under
the lake lock and the features lock, so no batch or micro-batch writes in between. Running it
twice is harmless: the second run finds nothing left.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from freshrec.fileio import atomic_path, atomic_write_bytes
from freshrec.intake import landing_files, quarantine_files_dir
from freshrec.ledger import Ledger
from freshrec.settings import Settings

log = logging.getLogger(__name__)

USER_TABLE_ROOTS = ("events", "features", "recs")


def _user_of_json(line: str) -> str | None:
    from freshrec.jobs.rules import _text, parse_line

    try:
        obj = parse_line(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    text = _text(obj.get("user_id"))
    return text.strip(" ") if text is not None else None


def _mentions(line: str, user_id: str) -> bool:
    """A line that cannot be parsed, naming ``user_id`` as its user_id value (quoted or not)."""
    pattern = r'"user_id"\s*:\s*"?\s*' + re.escape(user_id) + r'\s*"?\s*[,}]'
    return re.search(pattern, line) is not None


def _keep_lines(data: bytes, user_id: str, csv_file: bool) -> tuple[bytes, int]:
    """``data`` without the lines of ``user_id``; how many lines went. Other lines keep their
    exact bytes (undecodable ones included)."""
    lines = data.split(b"\n")
    column = None
    kept, dropped = [], 0
    for n, raw in enumerate(lines):
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if csv_file and n == 0:
            header = [c.strip().strip('"').lower() for c in next(csv.reader([text]), [])]
            column = header.index("user_id") if "user_id" in header else None
            kept.append(raw)
            continue
        if csv_file:
            fields = next(csv.reader([text]), [])
            owner = fields[column].strip(" ") if column is not None and column < len(fields) else None
            mine = owner == user_id
        else:
            owner = _user_of_json(text) if text.strip() else None
            mine = owner == user_id or (owner is None and _mentions(text, user_id))
        if mine:
            dropped += 1
        else:
            kept.append(raw)
    return b"\n".join(kept), dropped


def _read_any(path: Path) -> bytes:
    """A file's bytes, gunzipped as far as it can be (a corrupt gzip keeps what came before the fault)."""
    raw = path.read_bytes()
    if not path.name.lower().endswith(".gz"):
        return raw
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            while chunk := fh.read1(1 << 20):
                out.write(chunk)
    except (EOFError, OSError):
        pass
    return out.getvalue()


def _rewrite_text_file(path: Path, user_id: str) -> int:
    data = _read_any(path)
    if user_id.encode("utf-8") not in data:
        return 0
    kept, dropped = _keep_lines(data, user_id, path.name.lower().endswith((".csv", ".csv.gz")))
    if dropped:
        stat = path.stat()
        payload = gzip.compress(kept, mtime=0) if path.name.lower().endswith(".gz") else kept
        atomic_write_bytes(path, payload)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the landing time stays
    return dropped


def _parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if p.is_file() and not p.name.startswith("."))


def _drop_crc(path: Path) -> None:
    # Spark's local file system checks a file against its hidden .crc sibling: a rewritten file
    # would fail that check, and without the sibling it is simply read
    (path.parent / f".{path.name}.crc").unlink(missing_ok=True)


def _rewrite_parquet(path: Path, keep_mask_of) -> int:
    """Rewrite ``path`` keeping the rows ``keep_mask_of(table)`` marks; rows dropped."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path, partitioning=None)
    keep = keep_mask_of(table)
    if keep is None:
        return 0
    dropped = table.num_rows - int(pc.sum(pc.cast(keep, "int64")).as_py() or 0)
    if dropped:
        with atomic_path(path) as tmp:
            # microseconds: Spark reads no nanosecond timestamps
            pq.write_table(table.filter(keep), tmp, coerce_timestamps="us", allow_truncated_timestamps=True)
        _drop_crc(path)
    return dropped


def _user_rows(user_id: str):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def mask(path: Path):
        schema = pq.read_schema(path)
        if "user_id" not in schema.names:
            return None
        column = pq.read_table(path, columns=["user_id"], partitioning=None)["user_id"]
        hits = pc.equal(pc.cast(column, pa.string()), user_id)
        return hits if pc.any(hits).as_py() else None

    return mask


def _erase_user_tables(settings: Settings, user_id: str) -> dict[str, int]:
    """Rows of ``user_id`` dropped from every Parquet table with a user_id column."""
    import pyarrow.compute as pc

    find = _user_rows(user_id)
    out: dict[str, int] = {}
    roots = {"lake/events": settings.events_path, "features": settings.features_dir, "recs": settings.recs_dir}
    for label, root in roots.items():
        total = 0
        for path in _parquet_files(root) if root.is_dir() else []:
            hits = find(path)
            if hits is not None:
                total += _rewrite_parquet(path, lambda table, h=hits: pc.invert(h))
        out[label] = total
    return out


def _erase_quarantine_rows(settings: Settings, user_id: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    root = settings.quarantine_path
    for path in _parquet_files(root) if root.is_dir() else []:
        raws = pq.read_table(path, columns=["raw"], partitioning=None)["raw"].to_pylist()
        mine = [raw is not None and user_id in raw and (_user_of_json(raw) == user_id or _mentions(raw, user_id)
                                                       or _csv_row_of(raw, user_id)) for raw in raws]
        if any(mine):
            keep = pa.array([not m for m in mine])
            total += _rewrite_parquet(path, lambda table, k=keep: k)
    return total


def _csv_row_of(raw: str, user_id: str) -> bool:
    # a quarantined CSV row is kept as the JSON object of its canonical columns, all text
    try:
        obj = json.loads(raw)
    except ValueError:
        return False
    return isinstance(obj, dict) and str(obj.get("user_id", "")).strip(" ") == user_id


def _check_open_segments(settings: Settings, user_id: str, stored: str) -> None:
    """Refuse (before anything is erased) while a segment a running server still has open (its
    accepted events, its impressions) names the user: it moves into the landing zone within
    FRESHREC_API_SEGMENT_SECONDS, where forget can rewrite it."""
    from freshrec.errors import UserError

    api = settings.home / "api"
    for path in sorted(api.glob("*/*.jsonl")) if api.is_dir() else []:
        data = path.read_text(encoding="utf-8", errors="replace")
        if (user_id in data or stored in data) and any(
                _csv_row_of(line, user_id) or _impression_of(line, stored) for line in data.splitlines()):
            raise UserError(f"a running server holds the user's newest events or impressions in an open segment "
                            f"({path.name}); it moves into the landing zone within {settings.api_segment_seconds:g} s: "
                            "run `freshrec forget` again then")


def _impression_of(line: str, stored: str) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("kind") == "user" and obj.get("key") == stored


def _erase_impressions(settings: Settings, stored: str) -> int:
    """The lists served to the user: lake/impressions rows and landing/impressions lines."""
    import pyarrow.compute as pc

    from freshrec.impressions import impressions_landing, impressions_path

    total = 0
    landing = impressions_landing(settings)
    for path in sorted(landing.glob("*.jsonl")) if landing.is_dir() else []:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not _impression_of(line, stored)]
        if len(kept) != len(lines):
            atomic_write_bytes(path, "".join(kept).encode("utf-8"))
            total += len(lines) - len(kept)
    root = impressions_path(settings)
    for path in _parquet_files(root) if root.is_dir() else []:
        total += _rewrite_parquet(path, lambda table: pc.fill_null(pc.invert(pc.and_kleene(
            pc.equal(table["kind"], "user"), pc.equal(table["key"], stored))), True))
    return total


def _erase_api_events(settings: Settings, stored: str) -> int:
    """The user's rows in the event API's state (``freshrec.realtime``: accepted ids and events)."""
    import sqlite3
    from contextlib import closing

    db = settings.home / "api" / "events.db"
    if not db.is_file():
        return 0
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        with conn:
            removed = conn.execute("DELETE FROM api_events WHERE user_id = ?", (stored,)).rowcount
        if removed:  # no copy left in free pages or the write-ahead log
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return removed


def forget_user(settings: Settings, user_id: str, reason: str | None = None) -> dict[str, Any]:
    """Erase ``user_id`` everywhere (module docstring); returns what was removed where."""
    from freshrec.lake import features_lock, lake_lock
    from freshrec.serving import open_store
    from freshrec.userstate import forget_user_state

    user_id = str(user_id).strip(" ")
    if not user_id:
        from freshrec.errors import UserError

        raise UserError("give the user id to forget")
    if reason is not None:  # the audit keeps the reason, never the id
        reason = reason.replace(user_id, "<subject>")
    _check_open_segments(settings, user_id, settings.user_key(user_id))
    started = time.monotonic()
    ledger = Ledger(settings.state_db)
    removed: dict[str, int] = {}
    with lake_lock(settings, "forget"), features_lock(settings, "forget"):
        states = ledger.landing_states()
        landing, rewritten = 0, []
        for path in landing_files(settings.landing_events_dir):
            dropped = _rewrite_text_file(path, user_id)
            if dropped:
                landing += dropped
                rewritten.append(path)
        removed["landing"] = landing
        quarantined_files = 0
        qdir = quarantine_files_dir(settings)
        for path in sorted(qdir.rglob("*")) if qdir.is_dir() else []:
            if path.is_file() and not path.name.endswith(".reason.json"):
                quarantined_files += _rewrite_text_file(path, user_id)
        removed["quarantine_files"] = quarantined_files
        stored = settings.user_key(user_id)  # the id as the lake, the features and the store hold it
        removed.update(_erase_user_tables(settings, stored))
        removed["features/user_state.db"] = forget_user_state(settings, stored)
        removed["lake/quarantine"] = _erase_quarantine_rows(settings, user_id)
        removed["api_events"] = _erase_api_events(settings, stored)
        removed["impressions"] = _erase_impressions(settings, stored)
        # the rewritten landing files are what the next batch reads: not "changed" files
        for path in rewritten:
            if path.name in states and states[path.name]["state"] in ("taken", "claimed"):
                ledger.restat_landing(path.name, path.stat().st_size, path.stat().st_mtime_ns)
    try:
        with open_store(settings.serving) as store:
            removed["serving"] = store.forget_user(stored)
    except Exception:  # the files are erased; the store is retried by running forget again
        ledger.record_erasure(user_id, reason, removed, state="incomplete")
        raise
    record = ledger.record_erasure(user_id, reason, removed, state="complete")
    log.info("forget: %s erased (%s) in %.1fs", record["subject"], removed, time.monotonic() - started)
    return {"subject": record["subject"], "reason": reason, "removed": removed,
            "seconds": round(time.monotonic() - started, 2)}
