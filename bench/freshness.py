"""Landing -> served freshness of the two incremental paths: prints one JSON object.

    .venv/bin/python bench/freshness.py                                   # 200k-event history, temporary home
    .venv/bin/python bench/freshness.py --history-events 1000000 --home-root /tmp/freshrec-fresh

Measured from the outside, as a shopper would see it: every landing file carries the events of
one user never seen before, and a poller reads that user's list from the serving store every
``--poll-s`` seconds; a file counts as served when the user's list turns ``personal``. Its
latency is that moment minus the moment the file appeared in the landing zone (atomic rename).

- ``airflow``: the micro-batch DAG. Each of ``--runs`` scheduling intervals of ``--schedule-s``
  seconds lands ``--files-per-run`` files at uniformly random moments, then starts one run of
  ``freshrec_incremental`` at the interval's end as the scheduler would: a fresh process running
  the DAG (``freshrec run incremental``, ``dag.test`` on the SQLite metadata DB), which pays for
  Airflow's start and Spark's start every time. One run with nothing
  to do goes first, so the metadata DB migration is not counted. ``projected_default_schedule``
  adds the measured run time to a uniform wait over FRESHREC_MICROBATCH_MINUTES (5 by default).
- ``watch``: ``freshrec run incremental --watch --every W`` in one long-lived process. After a
  warm-up file is served, ``--watch-files`` files land at random moments over
  ``--watch-duration-s`` seconds.

The pipeline's own figures (the ledger's landing -> served per micro-batch, what ``freshrec
status`` shows) are reported beside the outside ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from incremental_cost import (  # noqa: E402
    BUILT_MARKER,
    MICROBATCH_WINDOW_S,
    REPO,
    bench_root,
    bench_settings,
    load_avg,
    log,
    print_report,
    run_worker,
    snapshot,
)


def percentiles(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"n": len(values), "p50_s": round(float(p50), 2), "p95_s": round(float(p95), 2), "max_s": round(max(values), 2)}


class Poller:
    """Reads the lists of the marker users until each is personal; records when."""

    def __init__(self, settings, poll_s: float) -> None:
        self.settings, self.poll_s = settings, poll_s
        self.pending: dict[str, float] = {}  # user -> landed at (epoch seconds)
        self.latency: dict[str, float] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Poller":
        self.thread.start()
        return self

    def expect(self, user: str, landed_at: float) -> None:
        with self.lock:
            self.pending[user] = landed_at

    def _run(self) -> None:
        from freshrec.client import RecsClient

        with RecsClient(self.settings.serving) as client:
            while not self.done.is_set():
                with self.lock:
                    todo = dict(self.pending)
                for user, landed in todo.items():
                    if client.recs(user, 1)["source"] == "personal":
                        seen = time.time()
                        with self.lock:
                            self.latency[user] = seen - landed
                            self.pending.pop(user, None)
                time.sleep(self.poll_s)

    def wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def land(settings, info: dict[str, Any], k: int, events: int, marker: str) -> float:
    """Land file ``k``: ``events`` synthetic events in the ``k``-th five-minute window after the
    history, plus a first visit of user ``marker``; returns when the file appeared."""
    from freshrec.generate import generate_window
    from freshrec.landing import atomic_write_jsonl

    start = datetime.fromisoformat(info["history_end"]) + timedelta(seconds=k * MICROBATCH_WINDOW_S)
    rows = generate_window(events, int(info["seed"]) * 1000 + 17 + k, start, MICROBATCH_WINDOW_S,
                           n_users=info["user_universe"], n_items=info["item_universe"])
    items = [r["item_id"] for r in rows if r.get("item_id")][:3]
    rows += [{"event_id": f"{marker}-{j}", "ts": (start + timedelta(seconds=j)).isoformat().replace("+00:00", "Z"),
              "user_id": marker, "session_id": f"{marker}-s", "event_type": etype, "item_id": item}
             for j, (etype, item) in enumerate(zip(("view", "view", "add_to_cart"), items, strict=False))]
    atomic_write_jsonl(settings.landing_events_dir, f"fresh-{k:04d}.jsonl", rows)
    return time.time()


def ledger_view(settings, since: str) -> dict[str, Any]:
    from freshrec.ledger import Ledger

    mbs = [m for m in Ledger(settings.state_db).recent_microbatches(1000) if m.get("files") and m["finished_at"] >= since]
    p95s = [m["landing_to_served_p95_s"] for m in mbs if m.get("landing_to_served_p95_s") is not None]
    return {"microbatches": len(mbs), "files": sum(m["files"] for m in mbs),
            "landing_to_served_p50_s_median": statistics.median(m["landing_to_served_p50_s"] for m in mbs) if mbs else None,
            "landing_to_served_p95_s_max": max(p95s) if p95s else None,
            "microbatch_seconds_median": statistics.median(m["seconds"] for m in mbs) if mbs else None}


def cli(settings, *args: str, **popen: Any):
    from freshrec.settings import settings_to_env

    env = {**os.environ, **settings_to_env(settings), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "freshrec.cli", *args], env=env, cwd=REPO, **popen)


def measure_airflow(settings, info: dict[str, Any], args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    from freshrec.ledger import utcnow_iso

    log("airflow: a first run with nothing to do (metadata DB)")
    t = time.time()
    if cli(settings, "run", "incremental", stdout=subprocess.DEVNULL).wait() != 0:
        raise RuntimeError("the first `freshrec run incremental` failed")
    first_run_s = time.time() - t
    since = utcnow_iso()
    poller = Poller(settings, args.poll_s).start()
    run_s: list[float] = []
    k = 0
    try:
        for r in range(args.runs):
            start = time.time()
            moments = sorted(rng.uniform(0, args.schedule_s) for _ in range(args.files_per_run))
            for at in moments:
                time.sleep(max(0.0, start + at - time.time()))
                k += 1
                poller.expect(f"fresh-a{k}", land(settings, info, k, args.file_events, f"fresh-a{k}"))
            time.sleep(max(0.0, start + args.schedule_s - time.time()))
            t = time.time()
            rc = cli(settings, "run", "incremental", stdout=subprocess.DEVNULL).wait()
            run_s.append(time.time() - t)
            log(f"airflow: run {r + 1}/{args.runs}: {len(moments)} files, exit {rc}, {run_s[-1]:.1f}s")
            if rc != 0:
                raise RuntimeError(f"`freshrec run incremental` exited {rc}")
        if not poller.wait_all(60):
            raise RuntimeError(f"never served: {sorted(poller.pending)}")
    finally:
        poller.stop()
    latencies = list(poller.latency.values())
    median_run = statistics.median(run_s)
    default_schedule_s = settings.microbatch_minutes * 60
    return {
        "schedule_s": args.schedule_s, "runs": args.runs, "files": k, "file_events": args.file_events,
        "landing_to_served": percentiles(latencies),
        "run_seconds": {"first_with_db_setup": round(first_run_s, 1), "median": round(median_run, 1),
                        "each": [round(x, 1) for x in run_s]},
        "projected_default_schedule": {
            "schedule_s": default_schedule_s,
            "p50_s": round(0.5 * default_schedule_s + median_run, 1), "p95_s": round(0.95 * default_schedule_s + median_run, 1),
            "how": "a file waits uniform(0, schedule) for the next run, then one run's measured median time"},
        "pipeline_reported": ledger_view(settings, since),
    }


def measure_watch(settings, info: dict[str, Any], args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    from freshrec.ledger import utcnow_iso

    err_path = Path(tempfile.mkstemp(prefix="freshrec-watch-", suffix=".log")[1])
    with err_path.open("w") as err:
        watcher = cli(settings, "run", "incremental", "--watch", "--every", f"{args.watch_every:g}",
                      stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    poller = Poller(settings, args.poll_s).start()
    k = 100  # event times 100 five-minute windows after the history, clear of the airflow path's
    try:
        t = time.time()
        poller.expect("fresh-warmup", land(settings, info, k, 20, "fresh-warmup"))
        if not poller.wait_all(300):
            raise RuntimeError(f"the warm-up file was not served within 300 s; see {err_path}")
        warmup_s = time.time() - t
        log(f"watch: warm-up file served {warmup_s:.1f}s after landing (Spark and the query start)")
        since = utcnow_iso()
        with poller.lock:
            poller.latency.clear()
        start = time.time()
        for at in sorted(rng.uniform(0, args.watch_duration_s) for _ in range(args.watch_files)):
            time.sleep(max(0.0, start + at - time.time()))
            k += 1
            poller.expect(f"fresh-w{k}", land(settings, info, k, args.file_events, f"fresh-w{k}"))
        if not poller.wait_all(args.watch_every * 4 + 120):
            raise RuntimeError(f"never served: {sorted(poller.pending)}; see {err_path}")
    finally:
        poller.stop()
        watcher.send_signal(signal.SIGTERM)
        try:
            rc = watcher.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(watcher.pid, signal.SIGKILL)
            rc = watcher.wait()
    if rc != 0:
        raise RuntimeError(f"the watcher exited {rc}; see {err_path}")
    err_path.unlink(missing_ok=True)
    return {
        "every_s": args.watch_every, "duration_s": args.watch_duration_s, "files": args.watch_files,
        "file_events": args.file_events, "warmup_served_s": round(warmup_s, 1),
        "landing_to_served": percentiles(list(poller.latency.values())),
        "pipeline_reported": ledger_view(settings, since),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history-events", type=int, default=200_000, help="size of the published synthetic history")
    parser.add_argument("--home-root", type=Path, default=None, help="keep the built history here and reuse it next time")
    parser.add_argument("--file-events", type=int, default=2_000, help="synthetic events per landing file (plus 3 of its marker user)")
    parser.add_argument("--schedule-s", type=float, default=60.0, help="airflow: seconds between two runs (files land in between)")
    parser.add_argument("--runs", type=int, default=3, help="airflow: scheduling intervals measured")
    parser.add_argument("--files-per-run", type=int, default=3)
    parser.add_argument("--watch-every", type=float, default=15.0, help="watch: the processing-time trigger")
    parser.add_argument("--watch-duration-s", type=float, default=180.0)
    parser.add_argument("--watch-files", type=int, default=12)
    parser.add_argument("--poll-s", type=float, default=0.25)
    parser.add_argument("--paths", default="airflow,watch", help="which paths to measure")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    started = time.perf_counter()
    rng = random.Random(args.seed)
    with bench_root(args.home_root, "freshrec-bench-fresh-") as root:
        base = root / f"history-{args.history_events}"
        out: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        out["config"].update({"cpus": os.cpu_count(), "load_avg_start": load_avg()})
        if not (base / BUILT_MARKER).is_file():
            shutil.rmtree(base, ignore_errors=True)
            log(f"building a {args.history_events:,}-event published history under {base}")
            run_worker(["--build-worker", str(base), str(args.history_events)])
        info = json.loads((base / BUILT_MARKER).read_text())
        for path in [p.strip() for p in args.paths.split(",") if p.strip()]:
            run_home = root / f"run-{path}"
            snapshot(base, run_home)
            settings = bench_settings(run_home)
            log(f"measuring the {path} path")
            out[path] = {"airflow": measure_airflow, "watch": measure_watch}[path](settings, info, args, rng)
            shutil.rmtree(run_home, ignore_errors=True)
        if "watch" in out:
            out["target"] = "watch landing_to_served p95 <= 60 s"
            out["target_met"] = (out["watch"]["landing_to_served"]["p95_s"] or 1e9) <= 60
    print_report(out, started)


if __name__ == "__main__":
    main()
