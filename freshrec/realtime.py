"""The event collection API's engine (``POST /v1/events``) and the real-time path.

Events come in through :class:`EventLog`, are made durable, and reach the shopper's list in
about a second through :class:`RealtimeScorer`; the micro-batch stays the source of truth:

1. **Judging** (:func:`judge`): a body is a JSON array or NDJSON of canonical events, each judged
   by ``jobs.rules.validate_row``, the Python twin of the Spark clean step (same verdicts, same
   reason codes: tests/integration/test_rules_parity.py). A re-sent ``event_id`` (within the
   request, or already accepted) is a duplicate and is not written again.
2. **Durability** (:meth:`EventLog.append`): the accepted events' lines are appended to a segment
   file under ``$FRESHREC_HOME/api/segments`` and fsync'd before the request is answered; then
   their ids and item events go into ``$FRESHREC_HOME/api/events.db`` (the duplicate check and the
   users' recent state). A segment is renamed into ``landing/events`` (and the directory fsync'd)
   after ``FRESHREC_API_SEGMENT_EVENTS`` events or ``FRESHREC_API_SEGMENT_SECONDS`` seconds,
   where the micro-batch cleans it like any other landing file: the rows it reads reconcile with
   what the API accepted. A segment left by a crash is moved into the landing zone on the next
   start, cut after its last whole line (a line without its newline was never acknowledged);
   a segment another live server still writes is left alone (each holds a lock on its own).
3. **Real time** (:class:`RealtimeScorer`): a worker process that the server starts (and starts
   again if it dies, :class:`ScorerProcess`), so that scoring never competes with the reads for
   the server's GIL, watches ``events.db`` for accepted item events and, every
   ``FRESHREC_REALTIME_BATCH_MS``, re-scores their users with ``rescore.refresh_users_step``
   (the micro-batch's own function: the live version's recommender, nothing retrained), their
   sequence being the published features, the micro-batches since, and their events accepted
   since (``events.db``). Their lists are upserted into the live version. A failure here loses
   nothing: the events are on disk, and the micro-batch re-scores those users anyway.

Event -> served latency (from the durable append to the upsert of the user's list) is kept per
event in ``events.db``; ``/metrics`` and ``freshrec status`` report its p50/p95/p99
(:func:`latency_report`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from freshrec.fileio import fsync_dir, json_line
from freshrec.jobs.rules import reason_codes, validate_row
from freshrec.settings import Settings
from freshrec.userstate import select_in

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000  # events per request
MAX_BYTES = 5 * 1024 * 1024  # bytes per request body
LATENCY_KEEP = 20_000  # latency rows kept in events.db (the newest)
LATENCY_WINDOW = 1_000  # events the reported percentiles are over
SEGMENT_PREFIX = "api-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_events (
    event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, item_id TEXT, event_type TEXT NOT NULL,
    ts_us INTEGER NOT NULL, category TEXT, segment TEXT NOT NULL, accepted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS api_events_user ON api_events (user_id);
CREATE TABLE IF NOT EXISTS served (at REAL NOT NULL, seconds REAL NOT NULL);
"""


_RECENT_SELECT = "event_id, user_id, item_id, event_type, ts_us, category"


class BadBody(ValueError):
    """The body as a whole cannot be read (400)."""


class TooLarge(ValueError):
    """More than MAX_EVENTS events or MAX_BYTES bytes (413)."""


@dataclass
class Verdict:
    """What :func:`judge` made of one request: the accepted events (their landing lines and clean
    rows), the indexes of duplicates, and the rejected events with their reasons."""

    lines: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"accepted": len(self.rows), "duplicates": len(self.duplicates), "rejected": self.rejected}


def events_of(body: bytes, content_type: str | None = None) -> list[str]:
    """The events of a body, each as its JSON text: a JSON array, or NDJSON (one object per line,
    blank lines skipped); with ``content_type`` application/json it must
    be an array. Raises BadBody or TooLarge."""
    if len(body) > MAX_BYTES:
        raise TooLarge(f"the body is {len(body):,} bytes; at most {MAX_BYTES:,} are accepted per request")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadBody(f"the body is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise BadBody("the body is empty: send a JSON array, or NDJSON, of events")
    if (content_type or "").split(";")[0].strip().lower() == "application/json" and not text.lstrip().startswith("["):
        raise BadBody("an application/json body must be an array of events (send NDJSON as application/x-ndjson)")
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except ValueError as exc:
            raise BadBody(f"the body starts like a JSON array but is not one: {exc}") from None
        if not isinstance(array, list):
            raise BadBody("the body must be a JSON array of events, or NDJSON")
        lines = [json_line(e) if isinstance(e, Mapping) else json.dumps(e, allow_nan=True) for e in array]
    else:
        lines = [line.strip("\r") for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_EVENTS:
        raise TooLarge(f"the body holds {len(lines):,} events; at most {MAX_EVENTS:,} are accepted per request")
    return lines


def judge(lines: list[str], settings: Settings, known: "EventLog | None" = None,
          now: datetime | None = None) -> Verdict:
    """Judge each event as the clean step will (``validate_row``) and find the duplicates: a
    repeated ``event_id`` within ``lines``, or one ``known`` has accepted already."""
    now = now or datetime.now(timezone.utc)
    verdict = Verdict()
    index_of: dict[str, int] = {}
    for index, line in enumerate(lines):
        row, reasons = validate_row(line, now, settings.min_event_ts, settings.max_future_skew_hours,
                                    settings.max_id_length, settings.pseudonym_key_bytes)
        if row is None:
            verdict.rejected.append({"index": index, "reason": reason_codes(reasons)[0], "message": "; ".join(reasons)})
        elif row["event_id"] in index_of:
            verdict.duplicates.append(index)
        else:
            index_of[row["event_id"]] = index
            verdict.lines.append(line)
            verdict.rows.append(row)
    seen = known.known_ids(list(index_of)) if known is not None and index_of else set()
    if seen:
        keep = [i for i, row in enumerate(verdict.rows) if row["event_id"] not in seen]
        verdict.duplicates = sorted(verdict.duplicates + [index_of[e] for e in seen])
        verdict.lines = [verdict.lines[i] for i in keep]
        verdict.rows = [verdict.rows[i] for i in keep]
    return verdict


def _held(path: Path) -> bool:
    """Whether a live process holds the lock of segment ``path`` (it is still being written)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone meanwhile: nothing to recover
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def _micros(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


class Segments:
    """Append-only JSONL segment files under ``directory``, each renamed into ``landing`` (and the
    folder fsync'd) after ``max_lines`` lines or ``max_seconds`` seconds: the durable path of the
    event API (and of the impression log). The open segment is locked (``flock``) for as long
    as its process lives, so a starting process recovers only what a dead one left."""

    def __init__(self, directory: Path, landing: Path, prefix: str, max_lines: int, max_seconds: float) -> None:
        self.dir, self.landing, self.prefix = directory, landing, prefix
        self.max_lines, self.max_seconds = max_lines, max_seconds
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._segment: Path | None = None
        self._opened = 0.0
        self._count = 0

    def open(self) -> list[str]:
        """Create the folders and move into the landing zone what a dead process left, each
        segment cut after its last whole line (a line without its newline was never
        acknowledged); empty ones are removed. Returns the names moved."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.landing.mkdir(parents=True, exist_ok=True)
        moved = []
        with self._lock:
            for path in sorted(self.dir.glob(f"{self.prefix}*.jsonl")):
                if path == self._segment or _held(path):
                    continue  # ours, or another live process's
                data = path.read_bytes()
                whole = data[: data.rfind(b"\n") + 1]
                if len(whole) != len(data):
                    with path.open("r+b") as fh:
                        fh.truncate(len(whole))
                        os.fsync(fh.fileno())
                if not whole:
                    path.unlink()
                    continue
                self._publish(path)
                moved.append(path.name)
        if moved:
            log.info("moved %d segment(s) a previous process left into %s", len(moved), self.landing)
        return moved

    def write(self, data: bytes, lines: int) -> str:
        """Append ``data`` (whole lines) to the open segment and fsync it; returns the segment's name."""
        with self._lock:
            if self._fd is None:
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
                self._segment = self.dir / f"{self.prefix}{stamp}-{os.getpid()}.jsonl"
                self._fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the process dies, however it dies
                fsync_dir(self.dir)
                self._opened, self._count = time.monotonic(), 0
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
            name = self._segment.name
            self._count += lines
            if self._count >= self.max_lines:
                self._roll()
            return name

    def _publish(self, path: Path) -> None:
        os.replace(path, self.landing / path.name)
        fsync_dir(self.landing)
        fsync_dir(self.dir)

    def _roll(self) -> None:
        if self._fd is None or self._segment is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._publish(self._segment)
        self._fd, self._segment = None, None

    def roll(self, force: bool = False) -> bool:
        """Rename the open segment into the landing zone when it is old enough (or ``force``)."""
        with self._lock:
            due = self._fd is not None and (force or time.monotonic() - self._opened >= self.max_seconds)
            if due:
                self._roll()
            return due


class EventLog:
    """Durable appends of accepted events: segment files rolled into the landing zone, and
    ``events.db`` (accepted ids, the users' recent item events, event -> served latencies)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.home / "api"
        self.segments = Segments(self.dir / "segments", settings.landing_events_dir, SEGMENT_PREFIX,
                                 settings.api_segment_events, settings.api_segment_seconds)
        self.db = self.dir / "events.db"
        self._accept_lock = threading.Lock()
        self._ready = False

    @property
    def segments_dir(self) -> Path:
        return self.segments.dir

    def open(self) -> None:
        """Create the directories and events.db, and recover what a crashed process left (at the
        server's start, or before the first write); nothing is written under FRESHREC_HOME before."""
        with self._accept_lock:
            if self._ready:
                return
            self.segments.open()
            with closing(self._connect()) as conn:
                conn.executescript(_SCHEMA)
            self._ready = True

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def roll(self, force: bool = False) -> bool:
        return self.segments.roll(force)

    def accept(self, lines: list[str]) -> tuple[Verdict, float]:
        """Judge ``lines`` and write the accepted events durably, one request at a time (so two
        requests carrying the same event id never both accept it); returns the verdict and the
        time the events became durable."""
        self.open()
        with self._accept_lock:
            verdict = judge(lines, self.settings, known=self)
            return verdict, self.append(verdict)

    def append(self, verdict: Verdict) -> float:
        """Write ``verdict``'s accepted events durably; returns the time they became durable."""
        if not verdict.rows:
            return time.time()
        data = "".join(line + "\n" for line in verdict.lines).encode("utf-8")
        segment = self.segments.write(data, len(verdict.lines))  # fsync'd: durable from here
        durable = time.time()
        with closing(self._connect()) as conn, conn:
            conn.executemany(
                "INSERT OR IGNORE INTO api_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r["event_id"], r["user_id"], r["item_id"], r["event_type"], _micros(r["ts"]), r["category"],
                  segment, durable) for r in verdict.rows])
        return durable

    def close(self) -> None:
        """Roll the open segment into the landing zone (a graceful stop)."""
        self.segments.roll(force=True)

    # -- state ------------------------------------------------------------------------------
    def known_ids(self, event_ids: list[str]) -> set[str]:
        if not self.db.is_file():
            return set()
        with closing(self._connect()) as conn:
            return {r[0] for r in select_in(conn, "SELECT event_id FROM api_events WHERE event_id IN ({marks})", event_ids)}

    def record_served(self, accepted: list[float], served: float) -> None:
        with closing(self._connect()) as conn, conn:
            conn.executemany("INSERT INTO served VALUES (?, ?)", [(served, served - a) for a in accepted])
            conn.execute("DELETE FROM served WHERE rowid <= (SELECT MAX(rowid) FROM served) - ?", (LATENCY_KEEP,))

    def prune(self, before: float) -> int:
        """Forget accepted events older than ``before`` (Unix time): the micro-batch has had
        them long since; a re-send after that is caught by the clean step's own duplicate check."""
        with closing(self._connect()) as conn, conn:
            return conn.execute("DELETE FROM api_events WHERE accepted_at < ?", (before,)).rowcount


def accepted_events(settings: Settings, users: list[str]):
    """The item events the event API accepted for ``users`` (lake ids), in the columns of
    features/recent: what the real-time path and the micro-batch add to those users' sequences
    (none when the API never ran here)."""
    db = settings.home / "api" / "events.db"
    rows: list[tuple] = []
    if db.is_file():
        with closing(sqlite3.connect(db, timeout=30)) as conn:
            rows = select_in(conn, f"SELECT {_RECENT_SELECT} FROM api_events "
                             "WHERE user_id IN ({marks}) AND item_id IS NOT NULL", users)
    return _recent_frame(rows)


def accepted_since(settings: Settings, since: float):
    """The item events the event API accepted after ``since`` (Unix time), in the columns of
    features/recent (none when the API never ran here)."""
    db = settings.home / "api" / "events.db"
    if not db.is_file():
        return _recent_frame([])
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        rows = conn.execute(f"SELECT {_RECENT_SELECT} FROM api_events WHERE accepted_at >= ? AND item_id IS NOT NULL",
                            (since,)).fetchall()
    return _recent_frame(rows)


def _recent_frame(rows: list[tuple]):
    import pandas as pd

    from freshrec.lake import RECENT_COLUMNS

    frame = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "ts_us", "category"])
    frame["ts"] = pd.to_datetime(frame.pop("ts_us").astype("int64"), unit="us", utc=True)
    return frame[RECENT_COLUMNS]


def latency_report(settings: Settings) -> dict[str, Any] | None:
    """Event -> served seconds of the real-time path over its last LATENCY_WINDOW events (p50,
    p95, p99, the count and when the newest was served); None when it never served one."""
    db = settings.home / "api" / "events.db"
    if not db.is_file():
        return None
    try:
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            rows = conn.execute("SELECT at, seconds FROM served ORDER BY rowid DESC LIMIT ?", (LATENCY_WINDOW,)).fetchall()
    except sqlite3.Error:
        return None
    if not rows:
        return None
    seconds = np.array([r[1] for r in rows], dtype=float)
    p50, p95, p99 = (round(float(v), 3) for v in np.percentile(seconds, [50, 95, 99]))
    return {"event_to_served_p50_s": p50, "event_to_served_p95_s": p95, "event_to_served_p99_s": p99,
            "events": len(rows), "last_served_at": datetime.fromtimestamp(rows[0][0], timezone.utc).isoformat(timespec="seconds")}


PRUNE_EVERY_S = 3600.0
KEEP_EVENTS_S = 7 * 86_400.0


class Housekeeper:
    """A thread that, every ``every`` seconds, writes the buffered impressions, moves the
    segments that are due into the landing zone, starts the real-time worker again if it died,
    and hourly forgets accepted events older than KEEP_EVENTS_S."""

    def __init__(self, events: EventLog, impressions: Any, scorer: "ScorerProcess | None", every: float) -> None:
        self.events, self.impressions, self.scorer, self.every = events, impressions, scorer, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="freshrec-housekeeping", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        pruned = 0.0
        while not self._stop.wait(self.every):
            try:
                self.impressions.flush()
                self.impressions.roll()
                self.events.roll()
                if self.scorer is not None:
                    self.scorer.ensure()
                if time.time() - pruned > PRUNE_EVERY_S and self.events.db.is_file():
                    self.events.prune(time.time() - KEEP_EVENTS_S)
                    pruned = time.time()
            except (OSError, sqlite3.Error) as exc:  # a full disk: the next append reports it to its sender
                log.warning("event API housekeeping failed (tried again in %.1f s): %s", self.every, exc)


class RealtimeScorer:
    """The real-time path's loop, in a worker process of its own (:class:`ScorerProcess`), so
    that re-scoring never holds the serving process's GIL while it answers reads: it watches
    events.db for newly accepted item events, waits FRESHREC_REALTIME_BATCH_MS for more to join,
    then re-scores their users with ``refresh_users_step`` and records event -> served latencies.

    It goes on from where the previous worker of the home got to (up to CATCH_UP_EVENTS
    events back; older ones are the micro-batch's to re-score, like every accepted event). A
    failed re-score is tried again, with the users of the next events, up to RETRIES times."""

    POLL_S = 0.02
    RETRIES = 5  # a failed re-score is tried again this many times (backing off up to 2 s)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events = EventLog(settings)
        self.last_rowid = 0

    def _new(self) -> dict[str, list[float]]:
        """The users of the item events accepted since the last look, with their accept times."""
        if not self.events.db.is_file():
            return {}
        try:
            with closing(sqlite3.connect(self.events.db, timeout=30)) as conn:
                rows = conn.execute("SELECT rowid, user_id, accepted_at FROM api_events WHERE rowid > ? AND item_id IS NOT NULL "
                                    "ORDER BY rowid", (self.last_rowid,)).fetchall()
        except sqlite3.Error as exc:  # the server is creating the file this instant, or it is busy: look again
            log.info("events.db not readable yet: %s", exc)
            return {}
        pending: dict[str, list[float]] = {}
        for rowid, user, accepted in rows:
            pending.setdefault(user, []).append(accepted)
            self.last_rowid = max(self.last_rowid, rowid)
        return pending

    def run(self, stop: threading.Event, parent: int | None = None, after: int = 0) -> None:
        """Until ``stop`` is set or ``parent`` is gone, re-score the users of the events accepted
        after rowid ``after`` of api_events (the newest when the server started this worker)."""
        from freshrec.rescore import live_recommender

        self.last_rowid = after
        try:  # load the live version's recommender now, not on the first shopper's events
            live_recommender(self.settings)
        except Exception as exc:  # noqa: BLE001 - nothing published yet, or a store down: the first flush says so
            log.info("no live recommender to load yet: %s", exc)
        self._mark()
        batch = self.settings.realtime_batch_ms / 1000.0
        retry: dict[str, list[float]] = {}
        tries = 0
        while not stop.is_set() and (parent is None or os.getppid() == parent):
            pending = self._new()
            if not pending and not retry:
                stop.wait(self.POLL_S)
                continue
            stop.wait(batch)  # let the users of the next requests join this flush
            for source in (self._new(), retry):
                for user, times in source.items():
                    pending.setdefault(user, []).extend(times)
            failed = self.flush(pending).get("error") is not None
            if not failed:
                retry, tries = {}, 0
            elif tries < self.RETRIES:  # a store that blinked: the same users again, with the next ones
                retry, tries = pending, tries + 1
                stop.wait(min(2 ** tries * 0.1, 2.0))
            else:
                log.warning("giving up re-scoring %d user(s) after %d tries: the micro-batch re-scores them",
                            len(pending), tries + 1)
                retry, tries = {}, 0
            if not retry:
                self._mark()

    def _mark(self) -> None:
        """Say that this worker is ready, and how far it got (``pid last_rowid``): a worker
        started after this one dies goes on from there."""
        ready = ready_file(self.settings)
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(f"{os.getpid()} {self.last_rowid}")

    def flush(self, pending: dict[str, list[float]]) -> dict[str, Any]:
        """Re-score ``pending``'s users now and record event -> served latencies."""
        from freshrec.rescore import refresh_users_step

        users = sorted(pending)
        try:
            result = refresh_users_step(self.settings, users, accepted_events(self.settings, users))
        except Exception as exc:  # noqa: BLE001 - tried again, and the micro-batch re-scores these users anyway
            log.warning("real-time re-scoring of %d user(s) failed: %s", len(users), exc)
            return {"users": 0, "error": str(exc) or type(exc).__name__}
        if result.get("version") and not result.get("skipped"):
            self.events.record_served([t for u in users for t in pending[u]], time.time())
        return result


def ready_file(settings: Settings) -> Path:
    """Where a real-time worker writes its pid once it is ready (its recommender loaded)."""
    return settings.home / "api" / "realtime.ready"


def _progress(settings: Settings) -> int | None:
    """The last rowid the previous worker of this home re-scored, or None."""
    try:
        return int(ready_file(settings).read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None


class ScorerProcess:
    """Starts the real-time worker (``python -m freshrec.realtime``, the settings in its
    environment) and starts it again when it died; stops it with SIGTERM. The worker exits by
    itself when its parent is gone."""

    CATCH_UP_EVENTS = 10_000  # accepted events a new worker re-scores that its predecessor did not

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: Any = None
        self.restarts = 0

    def start(self) -> None:
        import subprocess
        import sys

        from freshrec.settings import settings_to_env

        after = 0
        db = self.settings.home / "api" / "events.db"
        if db.is_file():
            with closing(sqlite3.connect(db, timeout=30)) as conn:
                newest = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM api_events").fetchone()[0]
            # where the last worker got to (capped: after a long stop the micro-batch has the rest)
            done = _progress(self.settings)
            after = newest if done is None else max(done, newest - self.CATCH_UP_EVENTS)
        env = {**os.environ, **settings_to_env(self.settings)}
        self.proc = subprocess.Popen([sys.executable, "-m", "freshrec.realtime", "--parent", str(os.getpid()),
                                      "--after", str(after)], env=env, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Wait until the worker started last is ready to re-score (False after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.proc
            try:
                if proc is not None and ready_file(self.settings).read_text().split()[:1] == [str(proc.pid)]:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def ensure(self) -> None:
        """Start the worker again if it died (called by the housekeeper)."""
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("the real-time worker exited with %s; starting it again (the micro-batch re-scores what it missed)",
                        self.proc.returncode)
            self.restarts += 1
            self.start()

    def stop(self, timeout: float = 15.0) -> None:
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.proc = None


def _worker_main(argv: list[str] | None = None) -> int:
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="the real-time re-scoring worker of `freshrec serve`")
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--after", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="freshrec realtime: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    RealtimeScorer(Settings.load()).run(stop, args.parent, args.after)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main())
