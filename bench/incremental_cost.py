"""Cost of one micro-batch against the size of the history behind it: prints one JSON object.

    .venv/bin/python bench/incremental_cost.py                               # 1M and 10M events, temporary homes
    .venv/bin/python bench/incremental_cost.py --sizes 1000000,3000000 --home-root /tmp/freshrec-inc

For each history size it builds (or, with ``--home-root``, reuses) a published home without
training: ``generate_to_landing`` (synthetic, 30 days ending a day ago) -> ``clean_step`` ->
``matrices_step`` -> ``gate_step`` with a skipped train (publishes the champion or, in a fresh
home, the popularity baseline; ``--publish cooccurrence_knn`` publishes that baseline instead)
-> ``score_step`` -> ``publish_step``. Building runs in its own process.

Then, in a fresh process, on a copy of that home (data files hard-linked, databases copied, so
every run starts from the same published state):

- cold: Spark start, then ``incremental_step(settings)`` over a tiny first landing file (the
  live recommender loaded): what every Airflow run of
  ``freshrec_incremental`` pays, since each task is a fresh process;
- warm: ``--repeats`` more runs of ``incremental_step(settings)`` in the same process, each over
  a new landing file of ``--batch-events`` events from the same generator and universe (new
  event ids, timestamps just after the history's newest event, ``--new-users`` more user ids
  than the history has, so some users are new): the median is the micro-batch cost; per-stage
  seconds come from timing wrappers around the functions ``process_microbatch`` calls.

``ratio_<largest>_over_<smallest>`` divides the median warm micro-batch seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUILT_MARKER = ".bench-built.json"
HISTORY_DAYS = 30
MICROBATCH_WINDOW_S = 300  # the event-time span of one synthetic micro-batch file
LINKED_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".crc", ".pkl")  # never modified in place


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def bench_root(home_root: Path | None, prefix: str):
    """The folder the benchmark builds its homes in: --home-root, kept, or a temporary one removed at the end."""
    root = home_root or Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if home_root is None:
            shutil.rmtree(root, ignore_errors=True)


def print_report(out: dict, started: float) -> None:
    """The benchmark's JSON on stdout, with its wall time and the load average at the end."""
    out["config"]["wall_s"] = round(time.perf_counter() - started, 1)
    out["config"]["load_avg_end"] = load_avg()
    print(json.dumps(out, indent=2))


def bench_settings(home: Path):
    from freshrec.settings import Settings

    return Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=4)


def size_label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


# -- building a published history ------------------------------------------------------------

def build_home(home: Path, events: int, seed: int = 5, users: int | None = None, items: int | None = None,
               publish: str = "popularity", days: int = HISTORY_DAYS) -> dict[str, Any]:
    """Generate, clean, build the features of and publish a synthetic history under ``home``
    (no training); writes and returns the description kept in ``home/.bench-built.json``."""
    import pandas as pd

    from freshrec.generate import GenerateOptions, generate_to_landing
    from freshrec.spark import get_spark
    from freshrec.steps import clean_step, gate_step, matrices_step, publish_step, score_step

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the home's own (empty) registry: no champion to pick up
    settings = bench_settings(home)
    settings.ensure_dirs()
    setup: dict[str, float] = {}
    started = time.perf_counter()

    def stage(name: str, fn, *args):
        log(f"build {size_label(events)}: {name} ...")
        t = time.perf_counter()
        out = fn(*args)
        setup[name] = round(time.perf_counter() - t, 1)
        log(f"build {size_label(events)}: {name} {setup[name]:.1f}s")
        return out

    # 30 days ending a day before now: the micro-batches' events come just after the newest one
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=days + 1)
    stage("generate", generate_to_landing, settings,
          GenerateOptions(events=events, seed=seed, users=users, items=items, days=days, start=start.isoformat()))
    cleaned = stage("clean", clean_step, settings, "batch-1")
    stage("matrices", matrices_step, settings)
    gate = stage("gate", gate_step, settings, {"skipped": "bench: no training"}, {}, "batch-1")
    if publish != "popularity":
        gate = {**gate, "publish": {"kind": "baseline", "name": publish}}
    scored = stage("score", score_step, settings, "batch-1", gate)
    stage("publish", publish_step, settings, scored)
    setup["total"] = round(time.perf_counter() - started, 1)

    def universe(name: str, column: str) -> tuple[int, int]:
        ids = pd.read_parquet(settings.features_dir / name, columns=[column])[column].astype(str)
        return len(ids), int(ids.str[1:].astype("int64").max()) + 1  # ids are "u<n>" / "i<n>"

    users_seen, user_universe = universe("user_index", "user_id")
    items_seen, item_universe = universe("item_index", "item_id")
    info = {"events": events, "clean_events": cleaned["clean"], "users": users_seen, "items": items_seen,
            "user_universe": user_universe, "item_universe": item_universe, "seed": seed, "history_days": days,
            "history_end": cleaned["until"], "version": scored["version"], "published": scored["source"],
            "setup_seconds": setup, "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_avg_end": load_avg()}
    (home / BUILT_MARKER).write_text(json.dumps(info, indent=2))
    get_spark(settings).stop()
    return info


def snapshot(base: Path, run: Path) -> float:
    """``run`` = a copy of ``base``: immutable data files hard-linked, everything else copied."""
    started = time.perf_counter()
    shutil.rmtree(run, ignore_errors=True)

    def link_or_copy(src: str, dst: str) -> None:
        if src.endswith(LINKED_SUFFIXES):
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(base, run, copy_function=link_or_copy, ignore=shutil.ignore_patterns("checkpoints", "spark-warehouse",
                                                                                          "derby"))
    return round(time.perf_counter() - started, 1)


# -- synthetic micro-batch files -------------------------------------------------------------

def land_microbatch(settings, info: dict[str, Any], k: int, events: int, new_users: float, name: str) -> dict[str, Any]:
    """Write landing file ``name``: ``events`` synthetic events of the history's item universe and
    ``new_users`` more user ids, timestamps in the ``k``-th 5-minute window after the history."""
    from freshrec.generate import generate_window
    from freshrec.landing import atomic_write_jsonl

    start = datetime.fromisoformat(info["history_end"]) + timedelta(seconds=k * MICROBATCH_WINDOW_S)
    rows = generate_window(events, int(info["seed"]) * 1000 + 17 + k, start, MICROBATCH_WINDOW_S,
                           n_users=max(1, int(info["user_universe"] * (1 + new_users))), n_items=info["item_universe"])
    path, n = atomic_write_jsonl(settings.landing_events_dir, name, rows)
    return {"file": path.name, "events": n, "users": len({r["user_id"] for r in rows})}


# -- per-stage timing ------------------------------------------------------------------------

class Stages:
    """Timing wrappers around module attributes; ``take()`` returns the intervals since the last call."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []

    def _record(self, name: str, t0: float) -> None:
        self.spans.append((name, t0, time.perf_counter()))

    def wrap(self, owner: Any, attr: str, name: str | None = None) -> None:
        fn = getattr(owner, attr)
        label = name or attr

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._record(label, t0)

        setattr(owner, attr, timed)

    def wrap_lock(self, owner: Any, attr: str, name: str) -> None:
        """A lock context manager: the time from asking for it to leaving the block, per holder."""
        fn = getattr(owner, attr)

        @contextlib.contextmanager
        def timed(settings, holder: str, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                with fn(settings, holder, *args, **kwargs):
                    yield
            finally:
                self._record(f"{name}[{holder.split(' ')[0]}]", t0)

        setattr(owner, attr, timed)

    def take(self) -> list[tuple[str, float, float]]:
        spans, self.spans = self.spans, []
        return spans


def install_stages(settings) -> Stages:
    import freshrec.jobs.clean
    import freshrec.jobs.score

    import freshrec.incremental
    import freshrec.intake
    import freshrec.lake
    import freshrec.rescore
    from freshrec.ledger import Ledger
    from freshrec.serving import open_store

    stages = Stages()
    stages.wrap(freshrec.incremental, "process_microbatch")
    stages.wrap(freshrec.jobs.clean, "read_landing")
    stages.wrap(freshrec.jobs.clean, "clean_raw")
    for name in ("append_increment", "write_recent", "read_recent"):
        stages.wrap(freshrec.lake, name)
    stages.wrap_lock(freshrec.lake, "lake_lock", "lake_lock")
    stages.wrap_lock(freshrec.lake, "features_lock", "features_lock")
    for name in ("refresh_users_step", "refresh_popular_step", "_live_recommender"):
        stages.wrap(freshrec.rescore, name)
    stages.wrap(freshrec.jobs.score, "score_frame")
    stages.wrap(freshrec.jobs.score, "popular_lists")
    stages.wrap(freshrec.intake, "take_files")
    for name in ("record_file_counts", "record_microbatch"):
        stages.wrap(Ledger, name)
    with open_store(settings.serving) as store:
        store_cls = type(store)
    stages.wrap(store_cls, "upsert_user_recs")
    stages.wrap(store_cls, "upsert_lists")
    return stages


def split(spans: list[tuple[str, float, float]], total: float) -> dict[str, float]:
    """Seconds per stage of one ``incremental_step`` call (one micro-batch), with the gaps between
    wrapped calls named after what runs there."""
    def first(name: str) -> tuple[float, float] | None:
        return next(((a, b) for n, a, b in spans if n == name), None)

    def dur(name: str) -> float:
        return sum(b - a for n, a, b in spans if n == name)

    def gap(after: str, before: str) -> float | None:
        a, b = first(after), first(before)
        return b[0] - a[1] if a and b else None

    out: dict[str, float | None] = {
        "loop overhead (run lock, the last look for new files)": total - dur("process_microbatch"),
        "process_microbatch": dur("process_microbatch"),
        "  lake lock held (clean + append + recent)": dur("lake_lock[micro-batch]"),
        "    take_files (list, settle, check new files, claim)": dur("take_files"),
        "    read_landing": dur("read_landing"),
        "    known ids: dates of the batch (parse + collect)": gap("read_landing", "clean_raw"),
        "    clean_raw (plan)": dur("clean_raw"),
        "    append_increment (clean, dedup vs lake, write)": dur("append_increment"),
        "    per_file collect + toPandas": gap("append_increment", "record_file_counts"),
        "    ledger.record_file_counts": dur("record_file_counts"),
        "    write_recent": dur("write_recent"),
        "  refresh_users_step": dur("refresh_users_step"),
        "    _live_recommender": dur("_live_recommender"),
        "    features read (sequences + interactions + recent)": dur("features_lock[re-scoring]"),
        "      read_recent (of the users)": next((b - a for n, a, b in spans if n == "read_recent"), None),
        "    pandas sequences/exclusions": gap("features_lock[re-scoring]", "score_frame"),
        "    score_frame": dur("score_frame"),
        "    upsert_user_recs": dur("upsert_user_recs"),
        "  refresh_popular_step": dur("refresh_popular_step"),
        "    item_stats + recent read": dur("features_lock[popular]"),
        "    fold recent events into item stats (pandas)": gap("features_lock[popular]", "popular_lists"),
        "    popular_lists (pandas)": dur("popular_lists"),
        "    upsert_lists": dur("upsert_lists"),
        "  ledger.record_microbatch": dur("record_microbatch"),
    }
    return {k: round(v, 3) for k, v in out.items() if v is not None}


# -- one size, measured in a fresh process ---------------------------------------------------

def measure(home: Path, info: dict[str, Any], batch_events: int, repeats: int, warmup_events: int, new_users: float,
            spawned_at: float) -> dict[str, Any]:
    import logging

    import pandas as pd

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("freshrec").setLevel(logging.INFO)
    from freshrec.incremental import incremental_step
    from freshrec.spark import get_spark

    settings = bench_settings(home)
    known_users = set(pd.read_parquet(settings.features_dir / "user_index", columns=["user_id"])["user_id"].astype(str))
    stages = install_stages(settings)
    summaries: list[dict[str, Any]] = []

    def run_once(k: int, events: int) -> dict[str, Any]:
        landed = land_microbatch(settings, info, k, events, new_users, f"bench-mb-{k:03d}.jsonl")
        summaries.clear()
        stages.take()
        load = load_avg()
        t = time.perf_counter()
        out = incremental_step(settings, on_batch=summaries.append)
        wall = time.perf_counter() - t
        if out["microbatches"] != 1 or out["files"] != 1:
            raise RuntimeError(f"expected one micro-batch of one file, got {out}")
        mb = summaries[0]
        return {"wall_s": round(wall, 2), "process_microbatch_s": mb["seconds"], "rows": mb["rows"], "clean": mb["clean"],
                "duplicates": mb["duplicates"], "quarantined": mb["quarantined"], "users": mb["users"],
                "landing_to_served_p50_s": mb["landing_to_served_p50_s"],
                "stages_s": split(stages.take(), wall), "load_avg_before": load, "landed": landed}

    t = time.perf_counter()
    get_spark(settings)
    spark_start = time.perf_counter() - t
    log(f"measure {size_label(info['events'])}: Spark up in {spark_start:.1f}s; warm-up micro-batch ({warmup_events} events)")
    first = run_once(0, warmup_events)
    cold = {"spark_start_s": round(spark_start, 2), "first_microbatch_s": first["wall_s"], "first_microbatch_events": warmup_events,
            "process_start_to_first_served_s": round(time.time() - spawned_at, 2),
            "first_microbatch_stages_s": first["stages_s"]}
    runs = []
    for k in range(1, repeats + 1):
        run = run_once(k, batch_events)
        new = sum(1 for u in _file_users(settings, run["landed"]["file"]) if u not in known_users)
        run["landed"]["new_users"] = new
        runs.append(run)
        log(f"measure {size_label(info['events'])}: micro-batch {k}/{repeats}: {run['wall_s']:.1f}s "
            f"(process_microbatch {run['process_microbatch_s']:.1f}s, {run['users']} users, {new} new)")
    stage_names = list(runs[0]["stages_s"])
    return {
        "cold": cold,
        "microbatch_s_median": round(statistics.median(r["wall_s"] for r in runs), 2),
        "process_microbatch_s_median": round(statistics.median(r["process_microbatch_s"] for r in runs), 2),
        "stages_s_median": {n: round(statistics.median(r["stages_s"].get(n, 0.0) for r in runs), 3) for n in stage_names},
        "runs": runs,
    }


def _file_users(settings, name: str) -> set[str]:
    with open(settings.landing_events_dir / name, encoding="utf-8") as fh:
        return {json.loads(line)["user_id"] for line in fh if line.strip()}


# -- driver ------------------------------------------------------------------------------------

def run_worker(args: list[str]) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh interpreter; its stdout is one JSON object."""
    proc = subprocess.run([sys.executable, __file__, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args[:2])} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000", help="history sizes in events, comma-separated")
    parser.add_argument("--batch-events", type=int, default=10_000, help="events per measured micro-batch file")
    parser.add_argument("--repeats", type=int, default=5, help="measured micro-batches per size (median reported)")
    parser.add_argument("--warmup-events", type=int, default=20, help="events in the first (cold) micro-batch file")
    parser.add_argument("--new-users", type=float, default=0.05,
                        help="user ids beyond the history's, as a fraction of its user universe")
    parser.add_argument("--home-root", type=Path, default=None,
                        help="keep the built histories here (<root>/history-<size>) and reuse them on the next run")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--users", type=int, default=None, help="user universe of every history (default: generator's, events/20)")
    parser.add_argument("--items", type=int, default=None, help="item universe of every history (default: generator's, events/50)")
    parser.add_argument("--publish", default="popularity", help="baseline to publish (default: what a skipped train publishes)")
    parser.add_argument("--build-budget-s", type=float, default=900.0, help="flag a history that took longer than this to build")
    parser.add_argument("--build-worker", nargs=2, metavar=("HOME", "EVENTS"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-worker", nargs=2, metavar=("HOME", "SPAWNED_AT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.build_worker:
        home, events = Path(args.build_worker[0]), int(args.build_worker[1])
        print(json.dumps(build_home(home, events, args.seed, args.users, args.items, args.publish)))
        return
    if args.measure_worker:
        home = Path(args.measure_worker[0])
        info = json.loads((home / BUILT_MARKER).read_text())
        print(json.dumps(measure(home, info, args.batch_events, args.repeats, args.warmup_events, args.new_users,
                                 float(args.measure_worker[1]))))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    started = time.perf_counter()
    with bench_root(args.home_root, "freshrec-bench-inc-") as root:
        out: dict[str, Any] = {
            "config": {"sizes": sizes, "batch_events": args.batch_events, "repeats": args.repeats,
                       "warmup_events": args.warmup_events, "new_users": args.new_users, "publish": args.publish,
                       "spark_master": "local[2]", "spark_shuffle_partitions": 4, "cpus": os.cpu_count(),
                       "home_root": str(root), "kept": args.home_root is not None, "load_avg_start": load_avg()},
            "sizes": {}, "notes": [],
        }
        for size in sizes:
            label = size_label(size)
            base = root / f"history-{label}"
            marker = base / BUILT_MARKER
            reused = marker.is_file()
            if not reused:
                shutil.rmtree(base, ignore_errors=True)
                log(f"building the {label} history under {base}")
                worker = ["--build-worker", str(base), str(size), "--seed", str(args.seed), "--publish", args.publish]
                worker += ["--users", str(args.users)] if args.users else []
                worker += ["--items", str(args.items)] if args.items else []
                run_worker(worker)
            info = json.loads(marker.read_text())
            run_home = root / f"run-{label}"
            copy_s = snapshot(base, run_home)
            log(f"measuring {label} on a copy ({copy_s:.1f}s to copy)")
            measured = run_worker(["--measure-worker", str(run_home), str(time.time()),
                                   "--batch-events", str(args.batch_events), "--repeats", str(args.repeats),
                                   "--warmup-events", str(args.warmup_events), "--new-users", str(args.new_users)])
            shutil.rmtree(run_home, ignore_errors=True)
            setup_total = info["setup_seconds"]["total"]
            if setup_total > args.build_budget_s:
                out["notes"].append(f"the {label} history took {setup_total:.0f}s to build (> {args.build_budget_s:.0f}s budget)")
            out["sizes"][label] = {
                "events": info["events"], "clean_events": info["clean_events"], "users": info["users"], "items": info["items"],
                "published": info["published"], "setup_seconds": info["setup_seconds"], "setup_reused": reused,
                "microbatch_s": measured["microbatch_s_median"],
                "process_microbatch_s": measured["process_microbatch_s_median"],
                "stages_s": measured["stages_s_median"], "cold": measured["cold"], "runs": measured["runs"],
                "load_avg_end": load_avg(),
            }
        labels = list(out["sizes"])
        if len(labels) >= 2:
            lo, hi = out["sizes"][labels[0]], out["sizes"][labels[-1]]
            key = f"ratio_{labels[-1]}_over_{labels[0]}"
            out[key] = round(hi["microbatch_s"] / lo["microbatch_s"], 3)
            out[f"{key}_process_microbatch"] = round(hi["process_microbatch_s"] / lo["process_microbatch_s"], 3)
            out["target"] = f"{key} <= 1.5"
    print_report(out, started)


if __name__ == "__main__":
    main()
