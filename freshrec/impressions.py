"""Recommendation ids and the impression log: which list was shown to whom, from which version,
and when; the ground that attribution and experiments stand on.

* Every list :class:`freshrec.client.RecsClient` returns (the API's answers, ``freshrec recs
  --json``) carries a ``recommendation_id``: ``r-`` and 32 hex digits, random, unique per answer,
  opaque to clients.
* The API logs every list it serves as an impression (:class:`ImpressionLog`): one JSON line
  ``{"recommendation_id", "served_at", "version", "kind", "key", "source", "item_ids"}`` where
  ``kind`` is ``user``, ``similar``, ``popular`` or ``query`` and ``key`` the user (as the lake
  holds it: the pseudonym when FRESHREC_PSEUDONYMISE is on), item, category or query. The lines
  go through the event API's durable path (:class:`freshrec.realtime.Segments`): segment files
  under ``$FRESHREC_HOME/api/impressions``, fsync'd in groups every FLUSH_S (a crash loses at
  most the last FLUSH_S of impressions, never a list's answer), renamed into
  ``landing/impressions`` like event segments.
* Each micro-batch folds those files into ``lake/impressions`` (:func:`fold_impressions`:
  Parquet, partitioned by ``served_date``, one file per segment, so a rerun rewrites the same
  file) and removes them from the landing zone.
* :func:`resolve` finds what a ``recommendation_id`` stood for, from the lake or from the files
  not folded yet. An event that carries it (its optional ``recommendation_id`` field) keeps it
  through clean into ``lake/events``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from freshrec.realtime import Segments
from freshrec.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "imp-"
FLUSH_S = 0.1
COLUMNS = ("recommendation_id", "served_at", "version", "kind", "key", "source", "item_ids", "experiment", "variant",
           "teams")


def _schema():
    import pyarrow as pa

    text, names = pa.string(), pa.list_(pa.string())
    return pa.schema([("recommendation_id", text), ("served_at", pa.timestamp("ns", tz="UTC")), ("version", text),
                      ("kind", text), ("key", text), ("source", text), ("item_ids", names), ("experiment", text),
                      ("variant", text), ("teams", names)])


def new_recommendation_id() -> str:
    return "r-" + uuid.uuid4().hex


def impression(result: dict[str, Any], kind: str, key: str | None) -> dict[str, Any]:
    """The impression line of one served list (a RecsClient result); in an experiment, also its
    ``experiment``, ``variant`` and, interleaved, the ``teams`` of its items (else null)."""
    items = result.get("items") or []
    return {"recommendation_id": result["recommendation_id"],
            "served_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "version": result.get("version"), "kind": kind, "key": key, "source": result.get("source"),
            "item_ids": [i["item_id"] for i in items], "experiment": result.get("experiment"),
            "variant": result.get("variant"), "teams": [i["team"] for i in items] if items and "team" in items[0] else None}


def impressions_landing(settings: Settings) -> Path:
    return settings.landing_dir / "impressions"


def impressions_path(settings: Settings) -> Path:
    return settings.lake_dir / "impressions"


class ImpressionLog:
    """Impression lines into segment files. Used on its own (``RecsClient(...,
    impressions=ImpressionLog(settings))``) each line is written and fsync'd at once; in
    ``freshrec serve`` (``buffered`` True) lines are buffered and :meth:`flush`, called every
    FLUSH_S by the server's housekeeping thread, appends them in one write and one fsync.
    :meth:`close` moves the open segment into the landing zone."""

    def __init__(self, settings: Settings) -> None:
        self.segments = Segments(settings.home / "api" / "impressions", impressions_landing(settings), PREFIX,
                                 settings.api_segment_events, settings.api_segment_seconds)
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._opened = False
        self.buffered = False

    def __call__(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._buffer.append(line)
        if not self.buffered:
            self.flush()

    def open(self) -> None:
        if not self._opened:
            self.segments.open()
            self._opened = True

    def flush(self) -> int:
        with self._lock:
            lines, self._buffer = self._buffer, []
        if lines:
            self.open()
            self.segments.write(("\n".join(lines) + "\n").encode("utf-8"), len(lines))
        return len(lines)

    def roll(self, force: bool = False) -> bool:
        return self.segments.roll(force)

    def close(self) -> None:
        self.flush()
        self.segments.roll(force=True)


def fold_impressions(settings: Settings) -> int:
    """Move the impression files of ``landing/impressions`` into ``lake/impressions`` (Parquet,
    ``served_date=YYYY-MM-DD/<file>.parquet``, written atomically), then remove them from the
    landing zone; returns the impressions folded. A rerun after a crash rewrites the same files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freshrec.fileio import atomic_path

    landing = impressions_landing(settings)
    total = 0
    for path in sorted(landing.glob(f"{PREFIX}*.jsonl")) if landing.is_dir() else []:
        frame = _frame(path)
        for date, part in frame.groupby(frame["served_at"].dt.strftime("%Y-%m-%d")):
            target = impressions_path(settings) / f"served_date={date}" / f"{path.stem}.parquet"
            with atomic_path(target) as tmp:
                pq.write_table(pa.Table.from_pandas(part.reset_index(drop=True), schema=_schema(), preserve_index=False), tmp)
        total += len(frame)
        path.unlink()
    if total:
        log.info("folded %d impression(s) into %s", total, impressions_path(settings))
    return total


def _frame(path: Path):
    """One impression file (JSON lines) as a frame of COLUMNS, a missing column null."""
    import pandas as pd

    frame = pd.read_json(path, lines=True, dtype=False) if path.stat().st_size else pd.DataFrame(columns=COLUMNS)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame[list(COLUMNS)].astype(object).where(frame[list(COLUMNS)].notna(), None)
    frame["served_at"] = pd.to_datetime(frame["served_at"], utc=True)
    return frame


def read_impressions(settings: Settings, experiment: str | None = None):
    """Every impression (of ``experiment`` only, when given) as a frame of COLUMNS: the lake's,
    then the files not folded yet (the landing zone's and the API's open segments)."""
    import pandas as pd
    import pyarrow.dataset as ds

    parts = []
    root = impressions_path(settings)
    files = sorted(str(p) for p in root.rglob("*.parquet")) if root.is_dir() else []
    if files:  # an explicit schema: files folded before a column existed read it as null
        table = ds.dataset(files, schema=_schema(), format="parquet").to_table(
            filter=None if experiment is None else ds.field("experiment") == experiment)
        parts.append(table.to_pandas())
    for folder in (impressions_landing(settings), settings.home / "api" / "impressions"):
        for path in sorted(folder.glob(f"{PREFIX}*.jsonl")) if folder.is_dir() else []:
            frame = _frame(path)
            parts.append(frame if experiment is None else frame.loc[frame["experiment"] == experiment])
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="datetime64[ns, UTC]" if c == "served_at" else object) for c in COLUMNS})
    frame = pd.concat(parts, ignore_index=True)
    frame["served_at"] = pd.to_datetime(frame["served_at"], utc=True)
    return frame.drop_duplicates("recommendation_id").reset_index(drop=True)


def resolve(settings: Settings, recommendation_id: str) -> dict[str, Any] | None:
    """What ``recommendation_id`` stood for: its impression (``version``, ``kind``, ``key``,
    ``served_at``, ``item_ids``, ...), from the lake or from files not folded yet; None if unknown."""
    import pyarrow.dataset as ds

    root = impressions_path(settings)
    if root.is_dir() and any(root.rglob("*.parquet")):
        table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table(
            filter=ds.field("recommendation_id") == recommendation_id)
        if table.num_rows:
            row = table.slice(0, 1).to_pylist()[0]
            row["served_at"] = row["served_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z")
            row.pop("served_date", None)
            return row
    for folder in (impressions_landing(settings), settings.home / "api" / "impressions"):
        for path in sorted(folder.glob(f"{PREFIX}*.jsonl")) if folder.is_dir() else []:
            for line in path.read_text(encoding="utf-8").splitlines():
                if recommendation_id in line:
                    record = json.loads(line)
                    if record.get("recommendation_id") == recommendation_id:
                        return record
    return None
