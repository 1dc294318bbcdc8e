"""Read-API load under the pipeline's own writes: prints one JSON object.

Builds a small published home (the synthetic generator, then the batch steps: clean, matrices,
train, evaluate, gate, score, publish), starts ``freshrec serve`` on it in a subprocess on a free
loopback port, and sends a bounded load from a second process (``--worker``: CONCURRENCY
keep-alive clients, for SECONDS or at most MAX_REQUESTS requests, whichever comes first; 90% of
requests ask for a random known user's list, 10% for the popular list). Three phases:

- ``at_rest``: nothing else runs;
- ``during_batch_publish``: a new version is scored and published (and goes live) while the load
  runs;
- ``during_microbatches``: new landing files are cleaned into the lake, their users re-scored and
  upserted, one micro-batch after another, while the load runs.

Each phase reports requests, errors (non-200 answers and failed connections), p50/p99/max in
milliseconds and requests per second. The serving store is SQLite under the home unless
``--serving-url`` names another (Redis, PostgreSQL).

    .venv/bin/python bench/load.py [--events 30000] [--seconds 20] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# -- the load generator (a second process) -------------------------------------------------------

def worker(port: int, seconds: float, concurrency: int, max_requests: int, users: list[str], seed: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    sent = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(slot: int) -> None:
        rng = random.Random(seed * 1000 + slot)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    break
                sent[0] += 1
            path = (f"/v1/users/{quote(rng.choice(users), safe='')}/recommendations?n=10" if rng.random() < 0.9
                    else "/v1/popular?n=10")
            started = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors[0] += 0 if ok else 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else None

    return {"requests": len(ordered), "errors": errors[0], "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else None, "rps": round(len(ordered) / wall, 1),
            "seconds": round(wall, 1)}


def start_load(port: int, args: argparse.Namespace, users_file: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--worker", str(port), str(args.seconds), str(args.concurrency),
                             str(args.max_requests), str(users_file), str(seed)], stdout=subprocess.PIPE, text=True)


def finish_load(proc: subprocess.Popen) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    return json.loads(out)


# -- the home and the server -------------------------------------------------------------------

def build_home(settings, events: int, tafeng: Path | None = None) -> None:
    """A published home: ``events`` synthetic events, or the Ta-Feng file ``tafeng`` imported."""
    from freshrec.generate import GenerateOptions, generate_to_landing
    from freshrec.importers import import_sources
    from freshrec.steps import clean_step, evaluate_step, gate_step, matrices_step, publish_step, score_step, train_step

    settings.ensure_dirs()
    if tafeng is not None:
        import_sources(settings, "tafeng", [tafeng])
    else:
        generate_to_landing(settings, GenerateOptions(events=events, seed=7, days=30, start="2026-01-01"))
    cleaned = clean_step(settings, "batch-1")
    matrices_step(settings)
    trained = train_step(settings, "batch-1", until=cleaned["until"])
    gate = gate_step(settings, trained, evaluate_step(settings, trained, "batch-1", until=cleaned["until"]), "batch-1")
    publish_step(settings, score_step(settings, "batch-1", gate))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(settings, port: int) -> subprocess.Popen:
    from freshrec.settings import settings_to_env

    env = {**os.environ, **settings_to_env(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "freshrec.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("freshrec serve did not become healthy within 60 s")


def land_microbatch(settings, n: int, seed: int, users: list[str]) -> None:
    from freshrec.landing import atomic_write_jsonl

    rng = random.Random(seed)
    rows = [{"event_id": f"load-{seed}-{i}", "ts": f"2026-01-30T12:{i % 60:02d}:00Z", "user_id": rng.choice(users),
             "event_type": rng.choice(["view", "view", "add_to_cart", "purchase"]), "item_id": f"i{rng.randrange(500)}"}
            for i in range(n)]
    atomic_write_jsonl(settings.landing_events_dir, f"load-{seed:04d}.jsonl", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--serving-url", default="")
    parser.add_argument("--home", type=Path, default=None, help="reuse a built home (kept)")
    args = parser.parse_args()

    import pandas as pd

    from freshrec.incremental import incremental_step
    from freshrec.settings import Settings
    from freshrec.steps import clean_step, matrices_step, publish_step, score_step

    tmp = tempfile.TemporaryDirectory(prefix="freshrec-load-")
    home = args.home or Path(tmp.name) / "home"
    settings = Settings(home=home, serving_url=args.serving_url, spark_master="local[2]", spark_shuffle_partitions=4,
                        top_n=20, model_epochs=1, model_dim=16, min_test_users=50)
    started = time.monotonic()
    if not (home / "state.db").exists():
        build_home(settings, args.events)
    built_s = round(time.monotonic() - started, 1)
    users = sorted(pd.read_parquet(settings.features_dir / "user_index", columns=["user_id"])["user_id"].astype(str))
    users_file = Path(tmp.name) / "users.txt"
    users_file.write_text("\n".join(users))

    port = free_port()
    server = serve(settings, port)
    phases: dict[str, Any] = {}
    try:
        phases["at_rest"] = finish_load(start_load(port, args, users_file, 1))

        load = start_load(port, args, users_file, 2)
        time.sleep(1.0)
        land_microbatch(settings, 2000, 9000, users)  # the rebuild then scores a new version
        t0 = time.monotonic()
        cleaned = clean_step(settings, "batch-2")
        matrices_step(settings)
        gate = json.loads((settings.reports_dir / "gate.json").read_text())
        published = publish_step(settings, score_step(settings, "batch-2", gate))
        publish_s = time.monotonic() - t0
        phases["during_batch_publish"] = {**finish_load(load), "batch_seconds": round(publish_s, 1),
                                          "published": published.get("version"), "rows": cleaned["read"]}

        load = start_load(port, args, users_file, 3)
        deadline = time.monotonic() + args.seconds - 2
        microbatches, seed = 0, 100
        while time.monotonic() < deadline:
            land_microbatch(settings, 300, seed, users)
            microbatches += incremental_step(settings)["microbatches"]
            seed += 1
        phases["during_microbatches"] = {**finish_load(load), "microbatches": microbatches}
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps({"benchmark": "load", "events": args.events, "users": len(users), "concurrency": args.concurrency,
                      "seconds_per_phase": args.seconds, "serving": settings.serving.split("://", 1)[0],
                      "home_build_s": built_s, **phases}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        port, seconds, concurrency, max_requests, users_path, seed = sys.argv[2:8]
        names = Path(users_path).read_text().split("\n")
        print(json.dumps(worker(int(port), float(seconds), int(concurrency), int(max_requests), names, int(seed))))
    else:
        main()
