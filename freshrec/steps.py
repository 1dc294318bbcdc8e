"""Pipeline steps: the I/O around the pure jobs. DAG tasks call these and nothing else.

Each step takes Settings explicitly, is idempotent (outputs are overwritten, id maps only
grow by ids they lack) and returns a small JSON-able summary for logs and XCom.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from freshrec.errors import QualityGateError, UserError
from freshrec.ledger import Ledger
from freshrec.settings import Settings

log = logging.getLogger(__name__)


def _exists(path: Path) -> bool:
    return path.is_dir() and any(p.name.endswith(".parquet") or p.is_dir() for p in path.iterdir() if not p.name.startswith(("_", ".")))


def clean_step(settings: Settings, batch_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Clean every landing file into lake/events; quarantine bad rows; record per-file counts.

    A full rebuild from the immutable landing zone: the lake is rewritten with dynamic
    partition overwrite and the ledger's per-file counts are replaced, so a rerun changes
    nothing and counts never double.
    """
    from pyspark.sql import functions as F

    from freshrec.spark import get_spark
    from jobs.clean import clean_raw, landing_files, read_landing

    files = landing_files(settings.landing_events_dir)
    if not files:
        raise UserError(f"no landing files under {settings.landing_events_dir}: run `freshrec import` or `freshrec generate` first")
    spark = get_spark(settings)
    result = clean_raw(read_landing(spark, files), now=now or datetime.now(timezone.utc),
                       min_event_ts=settings.min_event_ts, max_future_skew_hours=settings.max_future_skew_hours)
    try:
        # One file per date instead of one per (date, shuffle partition).
        (result.clean.repartition("event_date").write.mode("overwrite").partitionBy("event_date")
         .parquet(str(settings.events_path)))
        # The quarantine of a full rebuild replaces the whole table: it is derived from the
        # same landing files, so nothing is lost and nothing piles up twice.
        (result.quarantine.withColumn("batch_id", F.lit(batch_id)).write.mode("overwrite")
         .option("partitionOverwriteMode", "static").partitionBy("batch_id").parquet(str(settings.quarantine_path)))
        per_file = [r.asDict() for r in result.per_file.collect()]  # one row per landing file
    finally:
        result.release()
    Ledger(settings.state_db).record_file_counts(per_file, batch_id, replace_all=True)
    counts = {k: sum(int(r[k]) for r in per_file) for k in ("read", "clean", "quarantined", "duplicates")}
    log.info("clean %s: %s over %d files", batch_id, counts, len(files))
    return {"batch_id": batch_id, "files": len(files), **counts}


def validate_step(settings: Settings, batch_id: str) -> dict[str, Any]:
    """Run the Great Expectations suite on lake/events; raise QualityGateError on failure."""
    from freshrec.quality import validate_events
    from freshrec.spark import get_spark

    counts = Ledger(settings.state_db).totals()
    if not _exists(settings.events_path):
        # Every row was quarantined: there is nothing to validate, and nothing fit to publish.
        raise QualityGateError(
            f"no clean events: all {counts['quarantined']:,} of {counts['read']:,} rows read were quarantined; "
            f"see the reasons in {settings.quarantine_path}")
    spark = get_spark(settings)
    events = spark.read.parquet(str(settings.events_path))
    return validate_events(events, settings, batch_id, counts)


def read_catalogue(settings: Settings):
    """The optional item catalogue from landing/items, or None."""
    from freshrec.spark import get_spark
    from jobs.clean import landing_files
    from jobs.matrices import normalise_catalogue

    files = landing_files(settings.landing_items_dir)
    if not files:
        return None
    spark = get_spark(settings)
    csvs = [str(p) for p in files if ".csv" in p.name.lower()]
    jsons = [str(p) for p in files if ".csv" not in p.name.lower()]
    frames = []
    if jsons:
        frames.append(normalise_catalogue(spark.read.json(jsons)))
    if csvs:
        frames.append(normalise_catalogue(spark.read.option("header", True).csv(csvs)))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def matrices_step(settings: Settings) -> dict[str, Any]:
    """Id maps (append-only), interactions, recent sequences and item stats under features/."""
    from freshrec.spark import get_spark
    from jobs.matrices import interactions, item_stats, new_id_rows, recent_sequences

    spark = get_spark(settings)
    if not _exists(settings.events_path):
        raise UserError(f"no clean events at {settings.events_path}: run the clean step first")
    events = spark.read.parquet(str(settings.events_path)).cache()
    feats = settings.features_dir
    indexes = {}
    added = {}
    for key, name, source in (("user_id", "user_index", events), ("item_id", "item_index", events.where("item_id IS NOT NULL"))):
        path = feats / name
        existing = spark.read.parquet(str(path)) if _exists(path) else None
        new = new_id_rows(source, existing, key).cache()
        added[name] = new.count()
        if added[name]:
            new.coalesce(1).write.mode("append").parquet(str(path))
        new.unpersist()
        indexes[name] = spark.read.parquet(str(path))

    user_index, item_index = indexes["user_index"], indexes["item_index"]
    outputs = {
        "interactions": interactions(events, settings.event_weights, settings.decay_half_life_days, user_index, item_index),
        "sequences": recent_sequences(events, settings.sequence_length, item_index, user_index),
        "item_stats": item_stats(events, settings.event_weights, settings.decay_half_life_days, settings.trending_window_days,
                                 item_index, read_catalogue(settings)),
    }
    rows = {}
    for name, df in outputs.items():
        df.write.mode("overwrite").option("partitionOverwriteMode", "static").parquet(str(feats / name))
        rows[name] = spark.read.parquet(str(feats / name)).count()
    events.unpersist()
    summary = {"new_users": added["user_index"], "new_items": added["item_index"], **{f"{k}_rows": v for k, v in rows.items()}}
    log.info("matrices: %s", summary)
    return summary
