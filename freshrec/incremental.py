"""The micro-batch path: new landing files -> the lake -> the lists of the users who just acted.

:func:`incremental_step` takes the landing files no run has taken yet, through the same
:func:`freshrec.intake.take_files` as the batch ``clean``: only complete files (one modified
moments ago that looks unfinished waits for a later run), never one for its age, and an
unreadable file is moved aside by name instead of failing the others. The ledger remembers, per file, which micro-batch claimed it
and when it was done: a micro-batch that did not finish (a crash, a SIGKILL, a failed task) is
replayed with the same files and the same batch id on the next start. Everything a micro-batch
writes is keyed on that batch id and replaced on a replay, so a replay adds nothing twice.

(Spark's streaming file source was used here before; it marks a file as seen the first time it
lists it, so a file still being written, a zero-byte file filled in later, or a file copied in
with an mtime older than seven days was skipped silently.)

One micro-batch, :func:`process_microbatch`:

1. under the lake lock, take the files; the same ``clean_raw`` as the batch (quarantine and
   per-file counts), with the lake's event ids of the same dates as known duplicates; append
   to the lake;
2. keep the micro-batch's item events in ``features/recent`` (the users' sequences since the
   last batch);
3. re-score exactly the users of the micro-batch with the live version's recommender and
   upsert their lists; refresh the popular lists;
4. record counts and freshness (landing -> served, newest event -> served) in the ledger, and
   mark the files taken.

Each micro-batch also folds the API's impression files (``landing/impressions``) into
``lake/impressions`` (``freshrec.impressions``).

One run at a time: a second ``freshrec run incremental`` (or DAG run) while one is running
returns at once, successfully, saying so; the next run takes whatever is new. A batch and a
micro-batch still run side by side (the lake lock orders their writes).
``freshrec run incremental`` replays what did not finish, takes whatever is new in one
micro-batch and stops (a scheduled run never chases a stream of files); ``--watch`` repeats
that every ``watch_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from freshrec.ledger import Ledger
from freshrec.settings import Settings

log = logging.getLogger(__name__)

BUSY = "another run is in progress"


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


def _claim(settings: Settings, ledger: Ledger) -> tuple[str, Any]:
    """The batch id and the intake of the next micro-batch: an unfinished one replayed with its
    own files, else the new files (call under the lake lock)."""
    from freshrec.intake import Intake, take_files

    claims = ledger.open_claims()
    if claims:
        batch_id, names = next(iter(claims.items()))
        paths = [p for p in (settings.landing_events_dir / n for n in names) if p.is_file()]
        if paths:
            log.info("micro-batch %s did not finish: replaying it with its %d file(s)", batch_id, len(paths))
            return batch_id, Intake(files=[(p, p.stat().st_mtime) for p in paths], replay=True)
        ledger.finish_claim(batch_id)  # its files are gone from the landing zone: nothing to replay
    batch_id = ledger.next_microbatch_id()
    intake = take_files(settings, batch_id, "micro")
    if intake.files or intake.quarantined:
        ledger.use_microbatch_id(batch_id)
    return batch_id, intake


def process_microbatch(settings: Settings, spark, now: datetime | None = None) -> dict[str, Any]:
    """Take the new landing files, clean them into the lake and refresh their users' lists.
    The summary has ``files`` 0 when there was nothing new to read."""
    from pyspark.sql import functions as F

    from freshrec.impressions import fold_impressions
    from freshrec.jobs.clean import clean_raw, parse_raw, read_landing
    from freshrec.lake import RECENT_COLUMNS, append_increment, drop_increment, has_table, lake_lock, write_recent
    from freshrec.realtime import accepted_events
    from freshrec.rescore import refresh_popular_step, refresh_users_step

    started = time.time()
    now = now or datetime.now(timezone.utc)
    ledger = Ledger(settings.state_db)
    with lake_lock(settings, "micro-batch"):
        impressions = fold_impressions(settings)  # the API's served lists, into lake/impressions
        batch_id, intake = _claim(settings, ledger)
        todo = intake.files
        if not todo:
            summary = {"batch_id": None, "files": 0, "rows": 0, "users": 0, "impressions": impressions, **intake.summary()}
            if intake.quarantined:
                summary.update(batch_id=batch_id, **_counts(intake.counts))
                ledger.record_microbatch(batch_id, summary)
            log.info("micro-batch: nothing new to read %s", intake.summary() or "")
            return summary
        drop_increment(settings, batch_id)
        raw = read_landing(spark, [p for p, _ in todo])
        known = None
        if has_table(settings.events_path):
            valid = parse_raw(raw, now, settings.min_event_ts, settings.max_future_skew_hours,
                              settings.max_id_length).where("reason IS NULL")
            dates = [r[0] for r in valid.select(F.to_date("ts")).distinct().collect()]
            # a re-sent event has the same time, so only the partitions of these dates can hold it
            known = spark.read.parquet(str(settings.events_path)).where(F.col("event_date").isin(dates)).select("event_id")
        result = clean_raw(raw, now=now, min_event_ts=settings.min_event_ts,
                           max_future_skew_hours=settings.max_future_skew_hours, known_event_ids=known,
                           max_id_length=settings.max_id_length, pseudonym_key=settings.pseudonym_key_bytes)
        try:
            lake_files = append_increment(settings, batch_id, result.clean, result.quarantine)
            per_file = [r.asDict() for r in result.per_file.collect()]
            events = result.clean.select(*RECENT_COLUMNS).toPandas()
        finally:
            result.release()
        ledger.record_file_counts(per_file, batch_id)
        write_recent(settings, batch_id, events.loc[events["item_id"].notna()])

    users = sorted(events["user_id"].astype(str).unique())
    # with their events the event API accepted since, or the list the real-time path served would go back
    refreshed = refresh_users_step(settings, users, accepted_events(settings, users))
    served = time.time()  # the users' new lists are readable from here on
    popular = refresh_popular_step(settings) if refreshed.get("version") else {"skipped": "nothing published yet"}

    reports = _experiment_reports(settings)
    counts = _counts(per_file + intake.counts)
    landing = {p.name: t for p, t in todo}
    l50, l95 = _percentiles([served - landing.get(r["source_file"], started) for r in per_file],
                            [int(r["read"]) for r in per_file])
    newest = events.groupby("user_id")["ts"].max() if len(events) else []
    newest_s = [served - ts.timestamp() for ts in _as_utc(newest)]
    e50, e95 = _percentiles(newest_s)
    summary = {
        "batch_id": batch_id, "files": len(todo), **intake.summary(), "replay": intake.replay, "lake_files": lake_files,
        "impressions": impressions,
        **counts, "rows": counts["read"], "users": refreshed.get("users", 0), "version": refreshed.get("version"),
        "refresh": refreshed.get("skipped") or "ok", "popular_lists": popular.get("lists", 0),
        "experiment_versions": refreshed.get("variants", {}), "experiment_reports": reports,
        "landing_to_served_p50_s": l50, "landing_to_served_p95_s": l95,
        "event_to_served_p50_s": e50, "event_to_served_p95_s": e95,
        "seconds": round(time.time() - started, 2),
    }
    ledger.record_microbatch(batch_id, summary)
    ledger.finish_claim(batch_id)
    log.info("micro-batch %s: %s", batch_id, summary)
    return summary


def _experiment_reports(settings: Settings) -> list[str]:
    """Refresh the reports of the running experiments older than FRESHREC_EXPERIMENT_REPORT_MINUTES
    (their names). A report that fails is logged: it never fails the micro-batch that served the lists."""
    from freshrec.experiment_report import report_step

    try:
        return sorted(report_step(settings, min_interval_s=60.0 * settings.experiment_report_minutes))
    except Exception as exc:  # noqa: BLE001 - the lists are served; the report is retried next time
        log.warning("experiment reports not refreshed: %s", exc)
        return []


def _counts(per_file: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(int(r[k]) for r in per_file) for k in ("read", "clean", "quarantined", "duplicates")}


def _as_utc(series) -> list[datetime]:
    import pandas as pd

    if len(series) == 0:
        return []
    return list(pd.to_datetime(pd.Series(series), utc=True))


def incremental_step(settings: Settings, watch_seconds: float | None = None,
                     on_batch: Callable[[dict[str, Any]], None] | None = None,
                     stop: threading.Event | None = None) -> dict[str, Any]:
    """Process the new landing files: until nothing is left, then stop (``watch_seconds`` None,
    the DAG task), or every ``watch_seconds`` until ``stop`` is set (``freshrec run incremental
    --watch``). While another run holds the home, returns at once with ``skipped``.

    A stop waits for the micro-batch in progress to finish, so a Ctrl-C does not throw away
    work; one cut short anyway (a SIGKILL) is replayed on the next start."""
    from freshrec.lake import run_lock
    from freshrec.spark import get_spark

    settings.ensure_dirs()
    started = time.monotonic()
    done: list[dict[str, Any]] = []
    stop = stop or threading.Event()
    with run_lock(settings, "incremental") as held:
        if not held:
            log.info("incremental: %s; the next run takes the new files", BUSY)
            return {"microbatches": 0, "files": 0, "rows": 0, "users": 0, "skipped": BUSY, "seconds": 0.0, "batch_ids": []}
        spark = get_spark(settings)
        waiting: dict[str, Any] = {}
        while not stop.is_set():
            summary = process_microbatch(settings, spark)
            waiting = {k: summary[k] for k in ("pending_files", "changed_files") if k in summary}
            if summary["batch_id"] is not None:
                done.append(summary)
                if on_batch is not None:
                    on_batch(summary)
            if summary.get("replay"):
                continue  # a replay goes first, then the new files
            if watch_seconds is None:
                break  # one pass over what was new: a scheduled run never chases a stream of files
            if summary["files"]:
                continue  # watching: more may have landed meanwhile
            stop.wait(max(watch_seconds, 0.5))
    totals = {k: sum(int(d.get(k) or 0) for d in done) for k in ("files", "rows", "users")}
    return {"microbatches": len(done), **totals, "seconds": round(time.monotonic() - started, 1),
            "batch_ids": [d["batch_id"] for d in done], **waiting}
