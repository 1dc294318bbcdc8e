"""Writes to the lake that the batch and the micro-batches share.

The batch ``clean`` step rebuilds ``lake/events`` from every landing file; a micro-batch adds the
clean rows of a few new files. Both hold :func:`lake_lock` while they write, so a rebuild never
deletes rows a micro-batch added in the meantime, and a micro-batch never writes into a
partition a rebuild is replacing.

A micro-batch's files carry its batch id in their names (``inc-<batch id>-<n>.parquet`` inside
the ``event_date=`` partitions) and appear by ``os.replace``, so readers see whole files only;
:func:`drop_increment` removes whatever an interrupted attempt of the same batch left, which
makes the append idempotent: a rerun of a batch id replaces its files instead of adding to them.

``features/recent/batch_id=<id>/`` holds the item events of each micro-batch since the last
batch ``matrices`` step. Re-scoring reads a user's batch sequence plus these rows; ``matrices``
folds them into the batch tables and deletes the partitions it covered.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from freshrec.fileio import atomic_path, fsync_path
from freshrec.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

INCREMENT_PREFIX = "inc-"
RECENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "ts", "category"]


def has_table(path: Path) -> bool:
    """Whether ``path`` holds a Parquet table (files or partitions; Spark's markers and hidden
    temporaries do not count)."""
    return path.is_dir() and any(p.name.endswith(".parquet") or p.is_dir() for p in path.iterdir()
                                 if not p.name.startswith(("_", ".")))


@contextlib.contextmanager
def _flock(path: Path, holder: str, exclusive: bool = True) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s waits for %s", holder, path.name)
            started = time.monotonic()
            fcntl.flock(fh, mode)
            log.info("%s got %s after %.1fs", holder, path.name, time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lake_lock(settings: Settings, holder: str) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the lake: one writer at a time (any process on this machine)."""
    return _flock(settings.lake_dir / ".lock", holder)


@contextlib.contextmanager
def run_lock(settings: Settings, name: str) -> Iterator[bool]:
    """Try to become the only ``name`` run of this home (any process on this machine): yields
    True while held, False at once when another run holds it. The lock dies with its process."""
    path = settings.home / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def model_lock(settings: Settings, holder: str) -> contextlib.AbstractContextManager[None]:
    """Held by a full batch's train step; an online refresh (``run_lock(settings, "model")``,
    the same file) declines while it is held, and a train waits for a running refresh."""
    return _flock(settings.home / ".model.lock", holder)


def features_lock(settings: Settings, holder: str, shared: bool = False) -> contextlib.AbstractContextManager[None]:
    """``matrices`` rewrites the batch feature tables holding this exclusively; re-scoring reads
    them holding it shared, so it never sees a table half rewritten."""
    return _flock(settings.features_dir / ".lock", holder, exclusive=not shared)


def _increment_files(settings: Settings, batch_id: str) -> list[Path]:
    if not settings.events_path.is_dir():
        return []
    return sorted(settings.events_path.glob(f"event_date=*/{INCREMENT_PREFIX}{batch_id}-*.parquet"))


def drop_increment(settings: Settings, batch_id: str) -> int:
    """Remove what an earlier attempt of micro-batch ``batch_id`` wrote; how many lake files."""
    files = _increment_files(settings, batch_id)
    for path in files:
        path.unlink(missing_ok=True)
    for path in (settings.quarantine_path / f"batch_id={batch_id}", recent_dir(settings) / f"batch_id={batch_id}"):
        shutil.rmtree(path, ignore_errors=True)
    return len(files)


def append_increment(settings: Settings, batch_id: str, clean: "DataFrame", quarantine: "DataFrame") -> int:
    """Add a micro-batch's clean rows and quarantine to the lake; returns the files added.

    Spark writes into a hidden staging folder first; the files then move into place one by
    one under names that carry ``batch_id``. Call under :func:`lake_lock`, after
    :func:`drop_increment`."""
    staging = settings.lake_dir / ".staging" / batch_id
    shutil.rmtree(staging, ignore_errors=True)
    clean.repartition("event_date").write.mode("overwrite").partitionBy("event_date").parquet(str(staging / "events"))
    quarantine.coalesce(1).write.mode("overwrite").parquet(str(staging / "quarantine"))
    fsync_path(staging)  # on disk before the renames make them part of the lake
    moved = 0
    for n, src in enumerate(sorted((staging / "events").glob("event_date=*/*.parquet"))):
        dest = settings.events_path / src.parent.name / f"{INCREMENT_PREFIX}{batch_id}-{n:05d}.parquet"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        moved += 1
    q_files = sorted((staging / "quarantine").glob("*.parquet"))
    if q_files and any(_has_rows(p) for p in q_files):
        dest = settings.quarantine_path / f"batch_id={batch_id}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging / "quarantine", dest)
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def _has_rows(path: Path) -> bool:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows > 0


def recent_dir(settings: Settings) -> Path:
    return settings.features_dir / "recent"


def write_recent(settings: Settings, batch_id: str, rows: "pd.DataFrame") -> None:
    """Keep a micro-batch's item events (RECENT_COLUMNS) until the next ``matrices`` folds them in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(recent_dir(settings) / f"batch_id={batch_id}") as tmp:
        tmp.mkdir()
        pq.write_table(pa.Table.from_pandas(rows[RECENT_COLUMNS], preserve_index=False), tmp / "part-0.parquet")


def recent_partitions(settings: Settings) -> list[Path]:
    d = recent_dir(settings)
    return sorted(p for p in d.glob("batch_id=*") if p.is_dir()) if d.is_dir() else []


def read_recent(settings: Settings, users: list[str] | None = None) -> "pd.DataFrame":
    """The item events of every micro-batch since the last ``matrices`` (optionally of ``users``)."""
    import pandas as pd
    import pyarrow.dataset as ds

    parts = recent_partitions(settings)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="datetime64[us, UTC]" if c == "ts" else object) for c in RECENT_COLUMNS})
    dataset = ds.dataset([str(p / "part-0.parquet") for p in parts], format="parquet")
    flt = ds.field("user_id").isin(users) if users is not None else None
    return dataset.to_table(columns=RECENT_COLUMNS, filter=flt).to_pandas()


#: users are sampled by xxhash64 of their id into this many buckets; a sample is buckets 0..k-1
SAMPLE_BUCKETS = 1024


def read_training_events(settings: Settings, end: "pd.Timestamp | None" = None) -> "pd.DataFrame":
    """The lake's events a model learns from, before ``end`` (all when None), bounded:

    - only the last ``train_window_days`` days before the newest of them (0: the whole lake);
    - at most ``train_max_events`` events (0: no cap). A window that holds more is sampled by
      user in Spark: each user falls in one of 1,024 buckets by xxhash64 of their id and
      ``model_seed``, and the lowest buckets are kept while they fit (one at least). Users are
      kept whole, the same ones on every read, and only the sample reaches the driver.

    Below the cap the events are read straight from Parquet (models.data.read_lake_events)."""
    import pandas as pd
    import pyarrow.dataset as ds

    from freshrec.models.data import read_lake_events, ts_filter

    path = settings.events_path
    end = None if end is None else _utc(end)
    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    start = None
    if settings.train_window_days > 0:
        newest = _newest_event(dataset, end)
        start = None if newest is None else newest - pd.Timedelta(days=settings.train_window_days)
    if not settings.train_max_events:
        return read_lake_events(path, start, end)
    n_events = dataset.count_rows(filter=ts_filter(dataset, start, end))
    if n_events <= settings.train_max_events:
        return read_lake_events(path, start, end)
    return _sampled_events(settings, dataset, start, end, n_events)


def _newest_event(dataset, end: "pd.Timestamp | None") -> "pd.Timestamp | None":
    """The newest event before ``end``, scanning the ``ts`` column batch by batch (bounded memory)."""
    import pyarrow.compute as pc

    from freshrec.models.data import ts_filter

    newest = None
    for batch in dataset.to_batches(columns=["ts"], filter=ts_filter(dataset, None, end)):
        top = pc.max(batch.column(0)).as_py()
        if top is not None and (newest is None or top > newest):
            newest = top
    return None if newest is None else _utc(newest)


def _sampled_events(settings: Settings, dataset, start: "pd.Timestamp | None", end: "pd.Timestamp | None",
                    n_events: int) -> "pd.DataFrame":
    import pyarrow as pa
    from pyspark.sql import functions as F

    from freshrec.models.data import EVENT_COLUMNS
    from freshrec.spark import get_spark

    events = get_spark(settings).read.parquet(str(settings.events_path))
    for bound, keep in ((start, lambda ts, b: ts >= b), (end, lambda ts, b: ts < b)):
        if bound is not None:  # the session's time zone is UTC: naive UTC literals
            events = events.where(keep(F.col("ts"), F.lit(bound.tz_localize(None).to_pydatetime())))
    columns = [c for c in EVENT_COLUMNS if c in events.columns]
    bucket = F.pmod(F.xxhash64(F.lit(settings.model_seed), F.col("user_id")), F.lit(SAMPLE_BUCKETS))
    events = events.select(*columns).withColumn("_bucket", bucket)
    sizes = dict(events.groupBy("_bucket").count().collect())
    kept, total = 0, 0
    while kept < SAMPLE_BUCKETS and (kept == 0 or total + sizes.get(kept, 0) <= settings.train_max_events):
        total += sizes.get(kept, 0)
        kept += 1
    table = events.where(F.col("_bucket") < kept).select(*columns).toArrow()
    log.info("training events: %d of the %d in the window, the users of %d of %d buckets (FRESHREC_TRAIN_MAX_EVENTS=%d)",
             table.num_rows, n_events, kept, SAMPLE_BUCKETS, settings.train_max_events)
    return table.cast(pa.schema([dataset.schema.field(c) for c in columns])).to_pandas()


def _utc(value) -> "pd.Timestamp":
    import pandas as pd

    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")

