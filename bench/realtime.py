"""The real-time path under load: POST /v1/events -> the shopper's list changed, polled from outside.

Builds a published home from a synthetic log (``--events``, default 200,000) or from Ta-Feng
(``--dataset tafeng``: 817k purchases, 32k customers; the batch steps as in bench/load.py),
starts ``freshrec serve`` on it with an API key, and then:

- ``reads_at_rest``: the read load of bench/load.py (8 keep-alive clients, 90% user lists) alone;
- ``writes_50`` and ``writes_200``: simulated shoppers send bounded bursts of events at 50 and
  200 events/s for ``--seconds``: new shoppers (three views of one category), returning ones (a
  view), and purchases of the first item of their current list (8 open-loop senders). After the
  POST of every purchase and of one other burst in three returns, a checker polls the shopper's
  list (every 25 ms, up to 10 s) until it changed: a new shopper's list is ``personal``, a
  purchased item left the list, a returning shopper's list was rewritten (its ``updated_at``
  moved). Reported: p50/p95/p99 of POST sent -> change seen, per kind too, and the bursts whose
  change was not seen within 10 s;
- ``reads_during_writes_200``: the read load of ``reads_at_rest`` while the write load of
  ``writes_200`` runs again, unchecked: the checkers' polls (several hundred reads/s) are read
  load of their own, which would measure the polling rather than the writes;
- ``ingest``: sequential 1,000-event POSTs (``--ingest-batches`` of them), events/s accepted.

Targets (issue 15, this 2-core machine): p95 <= 1 s at 200 events/s; read p99 under that write
load <= 2x the read p99 at rest. The JSON has the machine's load average at the start and end.

    .venv/bin/python bench/realtime.py [--events 200000] [--seconds 20] [--home DIR]
    .venv/bin/python bench/realtime.py --dataset tafeng [--data ../shared/data/ta_feng.csv.zip] [--home DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from load import build_home, finish_load, free_port, serve, start_load  # noqa: E402

KEY = "bench-realtime-key"
POLL_S = 0.025
WAIT_S = 10.0
WRITERS = 8  # concurrent senders: one alone cannot reach 200 events/s with a GET and a POST per burst
SAMPLE = 3  # one burst in SAMPLE is polled until its change shows: the polls are read load of their own


class Api:
    """One keep-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.local.conn

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read() or b"null")
            except (OSError, http.client.HTTPException):
                conn.close()
                del self.local.conn
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def recs(self, user: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/users/{quote(user, safe='')}/recommendations?n=20&details=false")[1]

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        status, answer = self.request("POST", "/v1/events", json.dumps(events).encode())
        if status != 200:
            raise RuntimeError(f"POST /v1/events answered {status}: {answer}")
        return answer


def _pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None


def _summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_s": _pct(values, 0.50), "p95_s": _pct(values, 0.95), "p99_s": _pct(values, 0.99),
            "max_s": round(max(values), 3) if values else None}


class Shoppers:
    """Bursts of events: new shoppers, returning ones, purchases of an item on their list."""

    def __init__(self, api: Api, users: list[str], by_category: dict[str, list[str]], seed: int, now: datetime) -> None:
        self.api, self.users, self.by_category = api, users, by_category
        self.categories = sorted(c for c, items in by_category.items() if len(items) >= 3)
        self.rng = random.Random(seed)
        self.now = now
        self.seq = 0
        self.tag = uuid.uuid4().hex[:8]  # a reused home already holds earlier runs' ids
        self.lock = threading.Lock()

    def _ev(self, user: str, etype: str, item: str, **extra: Any) -> dict[str, Any]:
        with self.lock:
            self.seq += 1
            seq = self.seq
        ts = (self.now + timedelta(milliseconds=seq)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"event_id": f"rt-{self.tag}-{seq}", "ts": ts, "user_id": user, "event_type": etype, "item_id": item, **extra}

    def burst(self) -> tuple[str, str, list[dict[str, Any]], Any]:
        """(kind, user, events, how to tell that the list changed: f(before, after) -> bool)."""
        roll = self.rng.random()
        if roll < 0.4:
            with self.lock:
                self.seq += 1
                user = f"rt-new-{self.tag}-{self.seq}"
            items = self.rng.sample(self.by_category[self.rng.choice(self.categories)], 3)
            return "new", user, [self._ev(user, "view", i) for i in items], lambda b, a: a["source"] == "personal"
        user = self.rng.choice(self.users)
        if roll < 0.8:
            item = self.rng.choice(self.by_category[self.rng.choice(self.categories)])
            return "returning", user, [self._ev(user, "view", item)], lambda b, a: a["updated_at"] != b["updated_at"]
        before = self.api.recs(user)
        target = before["items"][0]["item_id"] if before["items"] else "none"
        return ("purchase", user, [self._ev(user, "purchase", target, quantity=1)],
                lambda b, a, t=target: t not in [i["item_id"] for i in a["items"]])


def write_phase(api: Api, shoppers: Shoppers, rate: float, seconds: float, checked: bool = True) -> dict[str, Any]:
    """Bursts at ``rate`` events/s for ``seconds`` (open loop: the sender never waits for a
    change); when ``checked``, each sampled burst's POST -> change seen, polled by a pool of
    checkers (unchecked, a purchase still reads the shopper's list first, to pick the item)."""
    results: dict[str, list[float]] = {"new": [], "returning": [], "purchase": []}
    missed: dict[str, int] = {"new": 0, "returning": 0, "purchase": 0}
    lock = threading.Lock()

    def check(kind: str, user: str, before: dict[str, Any], started: float, changed) -> None:
        while time.perf_counter() - started < WAIT_S:
            if changed(before, api.recs(user)):
                with lock:
                    results[kind].append(time.perf_counter() - started)
                return
            time.sleep(POLL_S)
        with lock:
            missed[kind] += 1

    counts = {"events": 0, "bursts": 0}
    begun = time.monotonic()
    deadline = begun + seconds

    def writer(pool: ThreadPoolExecutor, share: float, futures: list) -> None:
        """One open-loop sender at ``share`` events/s (WRITERS of them make up ``rate``)."""
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            kind, user, events, changed = shoppers.burst()
            with lock:
                counts["events"] += len(events)
                counts["bursts"] += 1
                sampled = checked and (counts["bursts"] % SAMPLE == 0 or kind == "purchase")
            before = api.recs(user) if sampled else None
            started = time.perf_counter()
            api.post(events)
            if sampled:
                futures.append(pool.submit(check, kind, user, before, started, changed))
            next_at += len(events) / share
            time.sleep(max(0.0, next_at - time.monotonic()))

    with ThreadPoolExecutor(max_workers=64) as pool:
        futures: list = []
        writers = [threading.Thread(target=writer, args=(pool, rate / WRITERS, futures)) for _ in range(WRITERS)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        elapsed = time.monotonic() - begun
        for f in list(futures):
            f.result()
    sent, bursts = counts["events"], counts["bursts"]
    everything = [v for values in results.values() for v in values]
    return {"target_events_per_s": rate, "events": sent, "bursts": bursts,
            "achieved_events_per_s": round(sent / elapsed, 1), "post_to_changed": _summary(everything),
            "by_kind": {k: {**_summary(v), "not_seen_within_10s": missed[k]} for k, v in results.items()},
            "not_seen_within_10s": sum(missed.values())}


def ingest(api: Api, users: list[str], items: list[str], batches: int, now: datetime) -> dict[str, Any]:
    rng = random.Random(11)
    tag = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    accepted = 0
    for b in range(batches):
        events = [{"event_id": f"ingest-{tag}-{b}-{i}", "ts": (now + timedelta(seconds=i)).isoformat(timespec="seconds").replace("+00:00", "Z"),
                   "user_id": rng.choice(users), "event_type": "view", "item_id": rng.choice(items)} for i in range(1000)]
        accepted += api.post(events)["accepted"]
    elapsed = time.perf_counter() - started
    return {"batches": batches, "batch_size": 1000, "accepted": accepted, "seconds": round(elapsed, 2),
            "events_per_s": round(accepted / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--ingest-batches", type=int, default=20)
    parser.add_argument("--home", type=Path, default=None, help="reuse a built home (kept)")
    parser.add_argument("--dataset", choices=("synthetic", "tafeng"), default="synthetic",
                        help="the live version's log: --events synthetic events, or Ta-Feng (--data)")
    parser.add_argument("--data", type=Path, default=BENCH.parent.parent / "shared" / "data" / "ta_feng.csv.zip",
                        help="the Ta-Feng zip, for --dataset tafeng")
    args = parser.parse_args()
    if args.dataset == "tafeng" and not args.data.is_file():
        parser.error(f"no Ta-Feng file at {args.data}: give --data")

    import pandas as pd

    from freshrec.settings import Settings

    load_start = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="freshrec-realtime-")
    home = args.home or Path(tmp.name) / "home"
    settings = Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=4, top_n=20, model_epochs=1,
                        model_dim=16, min_test_users=50, api_keys=KEY)
    started = time.monotonic()
    if not (home / "state.db").exists():
        build_home(settings, args.events, args.data if args.dataset == "tafeng" else None)
    built_s = round(time.monotonic() - started, 1)
    users = sorted(pd.read_parquet(settings.features_dir / "user_index", columns=["user_id"])["user_id"].astype(str))
    stats = pd.read_parquet(settings.features_dir / "item_stats", columns=["item_id", "category"]).dropna()
    by_category = {c: g["item_id"].astype(str).tolist() for c, g in stats.groupby("category")}
    users_file = Path(tmp.name) / "users.txt"
    users_file.write_text("\n".join(users))
    lake_ts = pd.read_parquet(settings.events_path, columns=["ts"])["ts"]
    newest, lake_events = lake_ts.max(), len(lake_ts)
    now = pd.Timestamp(newest).to_pydatetime().astimezone(timezone.utc) + timedelta(minutes=1)

    port = free_port()
    server = serve(settings, port)
    api = Api(port)
    out: dict[str, Any] = {}
    try:
        # warm up: the worker loads the live recommender on its first re-score
        warm = Shoppers(api, users, by_category, 1, now - timedelta(hours=1))
        write_phase(api, warm, 5, 3)
        out["reads_at_rest"] = finish_load(start_load(port, args, users_file, 1))
        out["writes_50"] = write_phase(api, Shoppers(api, users, by_category, 50, now), 50, args.seconds)
        out["writes_200"] = write_phase(api, Shoppers(api, users, by_category, 200, now + timedelta(hours=1)), 200, args.seconds)
        # the same write load again, unchecked (the checkers' polls are reads of their own), under the read load
        reads = start_load(port, args, users_file, 2)
        under = write_phase(api, Shoppers(api, users, by_category, 201, now + timedelta(hours=2)), 200, args.seconds, checked=False)
        out["reads_during_writes_200"] = {**finish_load(reads), "writes": {k: under[k] for k in ("events", "achieved_events_per_s")}}
        out["ingest"] = ingest(api, users, sorted(stats["item_id"].astype(str)), args.ingest_batches, now + timedelta(hours=3))
    finally:
        server.terminate()
        server.wait(timeout=60)
    rest, busy = out["reads_at_rest"]["p99_ms"], out["reads_during_writes_200"]["p99_ms"]
    p95 = out["writes_200"]["post_to_changed"]["p95_s"]
    print(json.dumps({
        "benchmark": "realtime", "dataset": args.dataset, "events": args.events if args.dataset == "synthetic" else None,
        "lake_events": lake_events, "users": len(users), "seconds_per_phase": args.seconds,
        "read_concurrency": args.concurrency, "home_build_s": built_s, **out,
        "targets": {"p95_at_200_events_per_s_s": p95, "p95_le_1s": p95 is not None and p95 <= 1.0,
                    "read_p99_ratio_under_writes": round(busy / rest, 2) if rest and busy else None,
                    "read_p99_ratio_le_2": bool(rest and busy and busy <= 2 * rest)},
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, indent=2))


if __name__ == "__main__":
    main()
