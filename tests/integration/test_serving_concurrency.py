"""Readers never see a mix of versions, a missing user or an error while versions are published,
rolled back, upserted into and pruned underneath them. Real SQLite (threads and a second
process), Redis and PostgreSQL.

Every list of version V for user U is ``["V:U:0", "V:U:1", ...]`` (upserts tag theirs with the
version they land in), so one read proves which version it came from and that it was whole."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from freshrec.serving import LiveVersionChanged, ServingStore, open_store

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("FRESHREC_TEST_REDIS_URL")
POSTGRES_URL = os.environ.get("FRESHREC_TEST_POSTGRES_URL")
USERS = 150
LENGTH = 20
READERS = 3
DURATION_S = 3.0


def _with_param(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request, tmp_path) -> str:
    tag = uuid.uuid4().hex[:12]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'serving.db'}"
    elif request.param == "redis":
        if not REDIS_URL:
            pytest.skip("FRESHREC_TEST_REDIS_URL is not set")
        url = _with_param(REDIS_URL, "prefix", f"freshrec-test-{tag}")
    else:
        if not POSTGRES_URL:
            pytest.skip("FRESHREC_TEST_POSTGRES_URL is not set")
        url = _with_param(POSTGRES_URL, "schema", f"freshrec_test_{tag}")
    yield url
    store = open_store(url)
    if hasattr(store, "destroy"):
        store.destroy()
    store.close()


def tagged(version: str, user: str) -> list[tuple[str, float]]:
    return [(f"{version}:{user}:{k}", float(LENGTH - k)) for k in range(LENGTH)]


def publish(store: ServingStore, version: str) -> None:
    with store.begin_version(version, {"test": "concurrency"}, batch_rows=40) as w:
        w.write_user_recs((f"u{i}", tagged(version, f"u{i}")) for i in range(USERS))
        w.write_popular(None, [(f"{version}:pop", 1.0)])
        w.commit(expected_users=USERS)


def check(result: dict | None, user: str) -> str | None:
    """None when the read is whole and from one version, else what is wrong."""
    if result is None:
        return f"user {user} missing"
    version = result["version"]
    ids = [i["item_id"] for i in result["items"]]
    if len(ids) != LENGTH:
        return f"user {user}: {len(ids)} items in {version}"
    if any(not i.startswith(f"{version}:{user}:") for i in ids):
        return f"user {user}: items {ids[:3]}... do not all belong to version {version}"
    return None


_READER_PROCESS = r"""
import json, random, sys, time
from pathlib import Path
from freshrec.serving import open_store
url, stop, duration, USERS, LENGTH = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = open_store(url)
store.get_user_recs("u0", LENGTH)
print("ready", flush=True)
deadline = time.time() + duration
reads, errors, versions = 0, [], set()
while not stop.exists() and time.time() < deadline:
    user = f"u{random.randrange(USERS)}"
    try:
        r = store.get_user_recs(user, LENGTH)
        if r is None:
            problem = f"user {user} missing"
        else:
            versions.add(r["version"])
            ids = [i["item_id"] for i in r["items"]]
            ok = len(ids) == LENGTH and all(i.startswith(r["version"] + ":" + user + ":") for i in ids)
            problem = None if ok else f"user {user}: {ids[:3]} not whole in {r['version']}"
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    reads += 1
    if problem:
        errors.append(problem)
print(json.dumps({"reads": reads, "errors": errors[:20], "versions": sorted(versions)}))
"""


def test_readers_never_see_a_mix(store_url, tmp_path):
    store = open_store(store_url)
    publish(store, "c0")
    stop = threading.Event()
    errors: list[str] = []
    seen: set[str] = set()
    reads = [0] * READERS

    def reader(slot: int) -> None:
        rng = random.Random(slot)
        while not stop.is_set():
            user = f"u{rng.randrange(USERS)}"
            try:
                result = store.get_user_recs(user, LENGTH)
                problem = check(result, user)
                if result is not None:
                    seen.add(result["version"])
            except Exception as exc:  # noqa: BLE001 - any exception fails the test
                problem = f"{type(exc).__name__}: {exc}"
            reads[slot] += 1
            if problem:
                errors.append(problem)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
    process = None
    stop_file = tmp_path / "stop"
    if store_url.startswith("sqlite"):
        process = subprocess.Popen([sys.executable, "-c", _READER_PROCESS, store_url, str(stop_file), str(DURATION_S + 60),
                                    str(USERS), str(LENGTH)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=Path(__file__).parents[2])
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    for t in threads:
        t.start()

    published = ["c0"]
    started = time.monotonic()
    i = 0
    try:
        while time.monotonic() - started < DURATION_S or i < 4:
            i += 1
            version = f"c{i}"
            publish(store, version)
            published.append(version)
            if i % 3 == 0:  # roll back, then upsert into the version now live
                live = store.rollback()
                result = store.upsert_user_recs([(f"u{k}", tagged(live, f"u{k}")) for k in range(0, USERS, 7)])
                assert result["version"] == live
            store.prune(keep=1, grace_s=0)  # the harshest: the version just replaced goes at once
    finally:
        stop.set()
        stop_file.touch()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, f"{len(errors)} bad reads, e.g. {errors[:5]}"
    assert sum(reads) > 50 * READERS, reads
    assert len(seen) >= 2, f"the readers only ever saw {seen}: the test proved nothing"
    if process is not None:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert not report["errors"], report["errors"]
        assert report["reads"] > 50 and len(report["versions"]) >= 2, report
    # pruning kept the newest version and the live one, and left the live one readable
    states = [r["state"] for r in store.versions()]
    assert states.count("live") == 1 and states.count("complete") <= 1
    assert check(store.get_user_recs("u1", LENGTH), "u1") is None
    store.close()


def test_upserts_racing_a_publish_land_in_exactly_one_version(store_url):
    """An upsert is applied whole to the version live when it commits, never split."""
    store = open_store(store_url)
    publish(store, "r0")
    stop = threading.Event()
    outcomes: list[tuple[str, int]] = []
    failures: list[str] = []

    def upserter() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            marker = f"up{n}"
            try:
                version = store.upsert_user_recs([(f"u{k}", [(marker, 1.0)]) for k in range(10)])["version"]
                outcomes.append((version, n))
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=upserter, daemon=True)
    thread.start()
    for i in range(1, 4):
        time.sleep(0.2)
        publish(store, f"r{i}")
    time.sleep(0.3)
    stop.set()
    thread.join(timeout=30)
    assert not failures, failures[:3]
    assert len({v for v, _ in outcomes}) >= 2, "the upserts never met a switch: the test proved nothing"
    # in every version, the ten users carry the marker of the same (last) upsert that landed
    # there, or all still have their published lists: an upsert is never split across versions
    for version in ("r0", "r1", "r2", "r3"):
        markers = {store.get_user_recs(f"u{k}", version=version)["items"][0]["item_id"] for k in range(10)}
        landed = [n for v, n in outcomes if v == version]
        if landed:
            assert markers == {f"up{max(landed)}"}, (version, markers)
        else:
            assert markers == {f"{version}:u{k}:0" for k in range(10)}, (version, markers)
    store.close()


def test_upserts_with_an_expected_version_never_land_elsewhere(store_url):
    """The expected-version check and the write are one atomic step: while the live pointer
    flips between two versions, an upsert lands whole in the version it expected, or nowhere."""
    store = open_store(store_url)
    publish(store, "e0")
    publish(store, "e1")
    stop = threading.Event()
    landed: list[tuple[str, int]] = []
    refused: list[int] = []
    failures: list[str] = []

    def flipper() -> None:
        while not stop.is_set():
            try:
                store.rollback(to="e0" if store.live_version() == "e1" else "e1")
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < DURATION_S / 2 or not (landed and refused):
        n += 1
        expected = store.live_version()
        try:
            result = store.upsert_user_recs([(f"u{k}", [(f"up{n}", 1.0)]) for k in range(10)], expected_version=expected)
            assert result["version"] == expected
            landed.append((expected, n))
        except LiveVersionChanged:
            refused.append(n)
        assert time.monotonic() - started < 60, f"no race met in 60 s: {len(landed)} landed, {len(refused)} refused"
    stop.set()
    thread.join(timeout=30)
    assert not failures, failures[:3]
    # the ten users of each version carry the marker of the newest upsert that landed there
    # (never a refused one), or all still have their published lists
    for version in ("e0", "e1"):
        markers = {store.get_user_recs(f"u{k}", version=version)["items"][0]["item_id"] for k in range(10)}
        mine = [m for v, m in landed if v == version]
        assert markers == ({f"up{max(mine)}"} if mine else {f"{version}:u{k}:0" for k in range(10)}), (version, markers)
    store.close()
