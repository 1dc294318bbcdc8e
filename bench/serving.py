"""Serving-store benchmark: prints one JSON object.

For each backend (SQLite always; Redis and PostgreSQL when --redis-url / --postgres-url or
FRESHREC_TEST_REDIS_URL / FRESHREC_TEST_POSTGRES_URL are given) it publishes USERS x ITEMS
synthetic lists, then measures
- the bytes one user's list costs the store (Redis: MEMORY USAGE, for JSON and for
  ``?encoding=packed``; PostgreSQL: the user table's total size; SQLite: the file),
- p50/p99 of in-process reads of 10 and 100 items (random users),
- throughput of THREADS reader threads for SECONDS,
- p50/p99 of reads while another process publishes a second version of the same size (the
  live pointer switches during the measurement),
and over HTTP (``freshrec serve`` in a subprocess on a free loopback port, keep-alive client)
p50/p99 of 10- and 100-item reads and throughput with THREADS clients.

Reference: Gorse reports 0.59 ms per 100-item REST read. Everything it creates (a temporary
SQLite file, a Redis key prefix, a PostgreSQL schema) is removed at the end.

    .venv/bin/python bench/serving.py [--users 20000] [--items 100] [--reads 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from freshrec.serving import ServingStore, open_store  # noqa: E402

GORSE_REST_100_MS = 0.59


def synthetic_rows(version: str, users: int, items: int, catalogue: int = 50_000):
    for u in range(users):
        start = (u * 7919) % catalogue
        yield (f"u{u}", [f"i{(start + 13 * k) % catalogue}" for k in range(items)],
               [round(1.0 - k / (items + 1), 6) for k in range(items)])


def version_id(name: str) -> str:
    """A version id as long as a batch's (``batch-<data interval>-<fingerprint>``): key names
    count in Redis's memory per list."""
    return f"batch-20261206T020000Z-{name:0>8}"


def stored_bytes(store: ServingStore, version: str, users: int, sample: int = 2000) -> dict[str, Any]:
    """Bytes a user's list costs the store: Redis MEMORY USAGE (exact, SAMPLES 0) of a sample of
    user keys; PostgreSQL the user table's total size (TOAST and indexes included) over users;
    SQLite the whole file over users."""
    kind = type(store).__name__
    if kind == "RedisStore":
        keys = [store.key(version, "user", f"u{u}") for u in random.Random(3).sample(range(users), min(sample, users))]
        sizes = [store.r.memory_usage(k, samples=0) for k in keys]
        out = {"bytes_per_user": round(statistics.fmean(sizes)), "measured": "MEMORY USAGE, mean of sampled user keys",
               "encoding": store.encoding, "key_bytes": round(statistics.fmean(len(k) for k in keys))}
        if store.encoding == "packed":  # shared by every list and version: per item, not per user
            table = [store.r.memory_usage(k, samples=0) or 0 for k in (store.k_item_code, store.k_item_id)]
            out.update(item_table_items=int(store.r.hlen(store.k_item_id)), item_table_bytes=sum(table))
        return out
    if kind == "PostgresStore":
        import psycopg

        with psycopg.connect(store.url) as conn:
            size = conn.execute("SELECT pg_total_relation_size(%s)", (f"{store.schema}.user_recs",)).fetchone()[0]
        return {"bytes_per_user": round(size / users), "measured": "pg_total_relation_size(user_recs) / users"}
    return {"bytes_per_user": round(Path(store.path).stat().st_size / users), "measured": "database file size / users"}


def publish(store: ServingStore, version: str, users: int, items: int) -> float:
    started = time.perf_counter()
    with store.begin_version(version, {"bench": True}, batch_rows=2000) as w:
        w.write_user_recs(synthetic_rows(version, users, items))
        w.write_popular(None, [f"i{k}" for k in range(items)], [float(items - k) for k in range(items)])
        w.commit(expected_users=users)
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(pick(0.50) * 1e3, 4), "p99_ms": round(pick(0.99) * 1e3, 4),
            "mean_ms": round(statistics.fmean(ordered) * 1e3, 4), "reads": len(ordered)}


def timed_reads(read: Callable[[str], Any], users: int, count: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    samples = []
    for _ in range(count):
        user = f"u{rng.randrange(users)}"
        t = time.perf_counter()
        read(user)
        samples.append(time.perf_counter() - t)
    return samples


def throughput(read: Callable[[str], Any], users: int, threads: int, seconds: float) -> float:
    stop = threading.Event()
    counts = [0] * threads

    def work(slot: int) -> None:
        rng = random.Random(slot)
        while not stop.is_set():
            read(f"u{rng.randrange(users)}")
            counts[slot] += 1

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return round(sum(counts) / seconds, 1)


def reads_during_publish(store: ServingStore, url: str, users: int, items: int) -> dict[str, Any]:
    """Read in this process while a second process publishes version b2 (and switches to it)."""
    worker = subprocess.Popen([sys.executable, __file__, "--publish-worker", url, version_id("b2"), str(users), str(items)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    rng = random.Random(7)
    samples: list[float] = []
    versions: set[str] = set()
    errors = 0
    while worker.poll() is None:
        user = f"u{rng.randrange(users)}"
        t = time.perf_counter()
        try:
            got = store.get_user_recs(user, 100)
            versions.add(got["version"])
        except Exception:  # noqa: BLE001 - counted, reported
            errors += 1
        samples.append(time.perf_counter() - t)
    out, err = worker.communicate()
    if worker.returncode != 0:
        raise RuntimeError(f"publish worker failed: {err.strip()[-500:]}")
    return {**percentiles(samples), "publish_s": json.loads(out)["publish_s"], "versions_seen": sorted(versions),
            "errors": errors}


def bench_backend(name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url)
    try:
        result: dict[str, Any] = {}
        secs = publish(store, version_id("b1"), args.users, args.items)
        result["publish_s"] = round(secs, 2)
        result["publish_lists_per_s"] = round(args.users / secs)
        result["stored"] = stored_bytes(store, version_id("b1"), args.users)
        store.get_user_recs("u0", 100)  # warm connections and statement caches
        for n in (10, 100):
            result[f"read_{n}"] = percentiles(timed_reads(lambda u, n=n: store.get_user_recs(u, n), args.users, args.reads))
        result["read_100_unknown_user_fallback"] = percentiles(
            timed_reads(lambda u: store.get_user_recs("x" + u, 100) or store.get_popular(None, 100), args.users, args.reads // 3))
        result[f"throughput_{args.threads}_threads_rps"] = throughput(lambda u: store.get_user_recs(u, 100), args.users,
                                                                      args.threads, args.seconds)
        result["read_100_during_publish"] = reads_during_publish(store, url, args.users, args.items)
        return result
    finally:
        if hasattr(store, "destroy"):
            store.destroy()
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Keep-alive ``http.client`` connections: a light client, so the numbers are mostly server."""
    import http.client

    import httpx

    store = open_store(url)
    publish(store, version_id("h1"), args.users, args.items)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    env.update(FRESHREC_SERVING_URL=url, FRESHREC_HOME=str(Path(tempfile.gettempdir()) / "freshrec-bench-home"))
    server = subprocess.Popen([sys.executable, "-m", "freshrec.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"freshrec serve did not start: {server.stderr.read() if server.poll() is not None else 'timeout'}")
            time.sleep(0.2)
        result: dict[str, Any] = {"backend": url.split(":", 1)[0], "server": "uvicorn, 1 process (freshrec serve)",
                                  "client": "http.client keep-alive"}
        local = threading.local()

        def get(user: str, n: int) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/v1/users/{user}/recommendations?n={n}")
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or not body:
                raise RuntimeError(f"HTTP {response.status}")

        for _ in range(200):
            get("u1", 100)
        for n in (10, 100):
            result[f"read_{n}"] = percentiles(timed_reads(lambda u, n=n: get(u, n), args.users, args.reads // 2))

        def read(user: str) -> None:
            get(user, 100)

        result[f"throughput_{args.threads}_clients_rps"] = throughput(read, args.users, args.threads, args.seconds)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)
        if hasattr(store, "destroy"):
            store.destroy()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--reads", type=int, default=3000, help="timed reads per measurement")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--redis-url", default=os.environ.get("FRESHREC_TEST_REDIS_URL"))
    parser.add_argument("--postgres-url", default=os.environ.get("FRESHREC_TEST_POSTGRES_URL"))
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--backends", default="sqlite,redis,redis-packed,postgres",
                        help="comma-separated subset to run in process ('' for none)")
    parser.add_argument("--publish-worker", nargs=4, metavar=("URL", "VERSION", "USERS", "ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.publish_worker:
        url, version, users, items = args.publish_worker
        store = open_store(url)
        print(json.dumps({"publish_s": round(publish(store, version, int(users), int(items)), 2)}))
        return

    tag = uuid.uuid4().hex[:10]
    started = time.perf_counter()
    out: dict[str, Any] = {"config": {"users": args.users, "items_per_list": args.items, "reads": args.reads,
                                      "threads": args.threads, "seconds": args.seconds, "cpus": os.cpu_count(),
                                      "load_avg_1m": round(os.getloadavg()[0], 2)},
                           "reference": {"gorse_rest_read_100_items_ms": GORSE_REST_100_MS}, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-") as tmp:
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'serving.db'}"}
        if args.redis_url:
            urls["redis"] = f"{args.redis_url}{'&' if '?' in args.redis_url else '?'}prefix=freshrec-bench-{tag}"
            urls["redis-packed"] = f"{urls['redis']}&encoding=packed"
        if args.postgres_url:
            urls["postgres"] = f"{args.postgres_url}{'&' if '?' in args.postgres_url else '?'}schema=freshrec_bench_{tag}"
        wanted = {b.strip() for b in args.backends.split(",") if b.strip()}
        for name, url in urls.items():
            if name not in wanted:
                continue
            print(f"bench: {name}", file=sys.stderr)
            out["backends"][name] = bench_backend(name, url, args)
        if not args.skip_http:
            print("bench: http", file=sys.stderr)
            out["http"] = bench_http(f"sqlite:///{Path(tmp) / 'http.db'}", args)
    out["config"]["wall_s"] = round(time.perf_counter() - started, 1)
    out["config"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
