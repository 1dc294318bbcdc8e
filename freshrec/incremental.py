"""The micro-batch path: new landing files -> the lake -> the lists of the users who just acted.

:func:`incremental_step` runs a Spark Structured Streaming query over the landing folder. Its
checkpoint (``$FRESHREC_HOME/checkpoints/incremental``) is what remembers which files were
processed, exactly once: a file is handed to :func:`process_microbatch` in one epoch, and an
epoch that did not finish (a crash, a SIGKILL, a failed task) is replayed with the same files
and the same batch id on the next start. Everything an epoch writes is keyed on that batch id
and replaced on a replay, so a replay adds nothing twice.

One epoch, :func:`process_microbatch`:

1. under the lake lock, the same ``clean_raw`` as the batch (quarantine and per-file counts),
   with the lake's event ids of the same dates as known duplicates; append to the lake;
2. keep the micro-batch's item events in ``features/recent`` (the users' sequences since the
   last batch);
3. re-score exactly the users of the micro-batch with the live version's recommender and
   upsert their lists; refresh the popular lists;
4. record counts and freshness (landing -> served, newest event -> served) in the ledger.

``availableNow`` (the Airflow task, ``freshrec run incremental``) takes whatever is new and
stops; ``--watch`` keeps the same query running with a processing-time trigger.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import numpy as np

from freshrec.ledger import Ledger
from freshrec.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "incremental"
STOP_GRACE_S = 120.0
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"


def _percentiles(values: Any, weights: Any = None) -> tuple[float | None, float | None]:
    """p50 and p95 of ``values`` (each counted ``weights`` times), rounded to 0.01 s."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None, None
    if weights is not None:
        values = np.repeat(values, np.asarray(weights, dtype=np.int64))
        if values.size == 0:
            return None, None
    p50, p95 = np.percentile(values, [50, 95])
    return round(float(p50), 2), round(float(p95), 2)


def _landing_path(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def _stream_tag(checkpoint: Path) -> str:
    """A short id of the streaming query (kept in its checkpoint): batch ids stay unique even if
    the checkpoint is ever deleted and epochs count from 0 again."""
    try:
        return json.loads((checkpoint / "metadata").read_text().splitlines()[0])["id"][:8]
    except (OSError, ValueError, KeyError, IndexError):
        return "stream"


def process_microbatch(settings: Settings, spark, batch_id: str, files: list[tuple[Path, float]],
                       now: datetime | None = None) -> dict[str, Any]:
    """Clean ``files`` (path, landing time as epoch seconds) into the lake and refresh their users."""
    from pyspark.sql import functions as F

    from freshrec.jobs.clean import clean_raw, parse_raw, read_landing
    from freshrec.lake import RECENT_COLUMNS, append_increment, drop_increment, has_table, lake_lock, write_recent
    from freshrec.rescore import refresh_popular_step, refresh_users_step
    from freshrec.schemas import LANDING_SUFFIXES

    started = time.time()
    now = now or datetime.now(timezone.utc)
    ledger = Ledger(settings.state_db)
    with lake_lock(settings, f"micro-batch {batch_id}"):
        counted = ledger.file_batches()
        # a file the batch clean already counted is in the lake: the stream only saw it late
        todo = [(p, t) for p, t in files if p.name.lower().endswith(LANDING_SUFFIXES)
                and not p.name.startswith((".", "_")) and counted.get(p.name, batch_id) == batch_id]
        drop_increment(settings, batch_id)
        if not todo:
            summary = {"batch_id": batch_id, "files": 0, "skipped_files": len(files), "rows": 0, "users": 0}
            log.info("micro-batch %s: nothing new (%d file(s) already in the lake)", batch_id, len(files))
            return summary
        raw = read_landing(spark, [p for p, _ in todo])
        known = None
        if has_table(settings.events_path):
            valid = parse_raw(raw, now, settings.min_event_ts, settings.max_future_skew_hours).where("reason IS NULL")
            dates = [r[0] for r in valid.select(F.to_date("ts")).distinct().collect()]
            # a re-sent event has the same time, so only the partitions of these dates can hold it
            known = spark.read.parquet(str(settings.events_path)).where(F.col("event_date").isin(dates)).select("event_id")
        result = clean_raw(raw, now=now, min_event_ts=settings.min_event_ts,
                           max_future_skew_hours=settings.max_future_skew_hours, known_event_ids=known)
        try:
            lake_files = append_increment(settings, batch_id, result.clean, result.quarantine)
            per_file = [r.asDict() for r in result.per_file.collect()]
            events = result.clean.select(*RECENT_COLUMNS).toPandas()
        finally:
            result.release()
        ledger.record_file_counts(per_file, batch_id)
        write_recent(settings, batch_id, events.loc[events["item_id"].notna()])

    users = sorted(events["user_id"].astype(str).unique())
    refreshed = refresh_users_step(settings, users)
    served = time.time()  # the users' new lists are readable from here on
    popular = refresh_popular_step(settings) if refreshed.get("version") else {"skipped": "nothing published yet"}

    counts = {k: sum(int(r[k]) for r in per_file) for k in ("read", "clean", "quarantined", "duplicates")}
    landing = {p.name: t for p, t in todo}
    l50, l95 = _percentiles([served - landing.get(r["source_file"], started) for r in per_file],
                            [int(r["read"]) for r in per_file])
    newest = events.groupby("user_id")["ts"].max() if len(events) else []
    newest_s = [served - ts.timestamp() for ts in _as_utc(newest)]
    e50, e95 = _percentiles(newest_s)
    summary = {
        "batch_id": batch_id, "files": len(todo), "skipped_files": len(files) - len(todo), "lake_files": lake_files,
        **counts, "rows": counts["read"], "users": refreshed.get("users", 0), "version": refreshed.get("version"),
        "refresh": refreshed.get("skipped") or "ok", "popular_lists": popular.get("lists", 0),
        "landing_to_served_p50_s": l50, "landing_to_served_p95_s": l95,
        "event_to_served_p50_s": e50, "event_to_served_p95_s": e95,
        "seconds": round(time.time() - started, 2),
    }
    ledger.record_microbatch(batch_id, summary)
    log.info("micro-batch %s: %s", batch_id, summary)
    return summary


def _as_utc(series) -> list[datetime]:
    import pandas as pd

    if len(series) == 0:
        return []
    return list(pd.to_datetime(pd.Series(series), utc=True))


def incremental_step(settings: Settings, watch_seconds: float | None = None,
                     on_batch: Callable[[dict[str, Any]], None] | None = None,
                     stop: threading.Event | None = None) -> dict[str, Any]:
    """Process the new landing files: once and stop (``watch_seconds`` None, the DAG task), or
    every ``watch_seconds`` until ``stop`` is set (``freshrec run incremental --watch``).

    A stop waits for the micro-batch in progress to finish (up to ``STOP_GRACE_S``), so a
    Ctrl-C does not throw away work; one cut short anyway is replayed on the next start."""
    from freshrec.spark import get_spark

    settings.ensure_dirs()
    spark = get_spark(settings)
    checkpoint = settings.checkpoints_dir / CHECKPOINT_NAME
    done: list[dict[str, Any]] = []

    def each(df, epoch_id: int) -> None:
        files = [(_landing_path(r["path"]), r["modificationTime"].timestamp())
                 for r in df.select("path", "modificationTime").collect()]
        summary = process_microbatch(settings, spark, f"{_stream_tag(checkpoint)}-{epoch_id:06d}", files)
        done.append(summary)
        if on_batch is not None:
            on_batch(summary)

    # only the path and the landing time are selected: the contents are read by the clean
    source = (spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA)
              .load(str(settings.landing_events_dir)))
    writer = source.select("path", "modificationTime").writeStream.foreachBatch(each).option(
        "checkpointLocation", str(checkpoint)).queryName("freshrec_incremental")
    started = time.monotonic()
    if watch_seconds is None:
        writer.trigger(availableNow=True).start().awaitTermination()
    else:
        stop = stop or threading.Event()
        query = writer.trigger(processingTime=f"{max(watch_seconds, 1.0):g} seconds").start()
        try:
            # short waits, so a stop is noticed within a second (a signal handler only sets it)
            while not stop.is_set() and not query.awaitTermination(1):
                pass
            grace = time.monotonic() + STOP_GRACE_S
            while query.isActive and query.status["isTriggerActive"] and time.monotonic() < grace:
                time.sleep(0.2)
        finally:
            query.stop()
        failure = query.exception()
        if failure is not None:
            raise failure
    totals = {k: sum(int(d.get(k) or 0) for d in done) for k in ("files", "rows", "users")}
    return {"microbatches": len(done), **totals, "seconds": round(time.monotonic() - started, 1),
            "batch_ids": [d["batch_id"] for d in done]}
