"""Injected faults (docs/reliability.md): each test breaks one thing for real and checks that
nothing is lost or corrupted, and that a retry completes.

- SIGKILL of the batch ``clean`` at a random moment, then a rerun: the lake and the counts equal
  those of an undisturbed run;
- SIGKILL of a publish between writing a version and switching the pointer: the old version
  keeps serving, and the retried publish goes live;
- the serving store (Redis, PostgreSQL) going down in the middle of a publish, through a TCP
  proxy that is cut: a clear failure, the old version keeps serving, a retry completes;
- MLflow unreachable at train time: a clear failure at once, no model, nothing published;
- the disk filling up (``ENOSPC``) while a micro-batch moves its files into the lake: the
  micro-batch fails, and the next run replays it with exact counts and no duplicates.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from freshrec.client import RecsClient
from freshrec.errors import UserError
from freshrec.generate import GenerateOptions, generate_to_landing
from freshrec.incremental import incremental_step
from freshrec.landing import atomic_write_jsonl
from freshrec.ledger import Ledger
from freshrec.serving import ServingError, open_store
from freshrec.serving.base import VersionWriter
from freshrec.serving.publish import publish_tables, write_recs_tables
from freshrec.settings import Settings, settings_to_env
from freshrec.steps import clean_step, matrices_step, train_step

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("FRESHREC_TEST_REDIS_URL")
POSTGRES_URL = os.environ.get("FRESHREC_TEST_POSTGRES_URL")


def _lake(settings: Settings) -> pd.Series:
    return pd.read_parquet(settings.events_path, columns=["event_id"])["event_id"].sort_values(ignore_index=True)


# -- SIGKILL of clean ------------------------------------------------------------------------


def test_sigkill_of_clean_then_a_rerun_equals_an_undisturbed_run(spark, tmp_path):
    reference = Settings(home=tmp_path / "reference", spark_master="local[2]", spark_shuffle_partitions=4)
    reference.ensure_dirs()
    generate_to_landing(reference, GenerateOptions(events=60_000, seed=11, days=20, start="2026-01-01", dirty=True,
                                                   rows_per_file=15_000))
    killed = reference.replace(home=tmp_path / "killed")
    shutil.copytree(reference.home, killed.home)
    clean_step(reference, "batch-1")

    env = {**os.environ, **settings_to_env(killed)}
    code = "from freshrec.settings import Settings; from freshrec.steps import clean_step; clean_step(Settings.load(), 'batch-1')"
    rng = random.Random(3)
    kills = 0
    for _ in range(2):
        job = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(6.0, 14.0))
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            kills += 1
        job.wait()
    assert kills, "clean finished before it could be killed: the trial proves nothing"
    clean_step(killed, "batch-1")
    assert _lake(killed).equals(_lake(reference))
    assert Ledger(killed.state_db).totals() == Ledger(reference.state_db).totals()
    assert Ledger(killed.state_db).file_counts() == Ledger(reference.state_db).file_counts()


# -- publish: killed, or the store going down ---------------------------------------------------


def _recs(directory: Path, tag: str, users: int = 3000) -> Path:
    return write_recs_tables(directory, users=[(f"u{i}", [(f"{tag}-i{k}", 1.0 - k / 10) for k in range(5)]) for i in range(users)],
                             popular=[(None, [(f"{tag}-p{k}", 10.0 - k) for k in range(5)])])


def _with_param(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


def _store_urls(kind: str, tmp_path: Path) -> str:
    tag = uuid.uuid4().hex[:8]
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'serving.db'}"
    if kind == "redis":
        if not REDIS_URL:
            pytest.skip("FRESHREC_TEST_REDIS_URL is not set")
        return _with_param(REDIS_URL, "prefix", f"freshrec-faults-{tag}")
    if not POSTGRES_URL:
        pytest.skip("FRESHREC_TEST_POSTGRES_URL is not set")
    return _with_param(POSTGRES_URL, "schema", f"freshrec_faults_{tag}")


def _first_item(store, user: str = "u7") -> str:
    return RecsClient(store).recs(user, 1)["items"][0]["item_id"]


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
def test_sigkill_between_writing_a_version_and_switching_the_pointer(kind, tmp_path):
    url = _store_urls(kind, tmp_path)
    old, new = _recs(tmp_path / "v1", "v1"), _recs(tmp_path / "v2", "v2")
    with open_store(url) as store:
        publish_tables(store, "v1", old)
    marker = tmp_path / "finishing"
    code = f"""
import pathlib, time
from freshrec.serving import open_store
from freshrec.serving.publish import publish_tables
store = open_store({url!r})
cls = type(store)
finish = cls._finish
def paused(self, *args, **kwargs):
    pathlib.Path({str(marker)!r}).touch()
    time.sleep(300)
    return finish(self, *args, **kwargs)
cls._finish = paused
publish_tables(store, "v2", {str(new)!r})
"""
    job = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert job.poll() is None, job.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the publish never reached the switch"
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    with open_store(url) as store:
        assert store.live_version() == "v1" and _first_item(store) == "v1-i0"  # every row written, none served
        assert store.version_info("v2")["state"] == "writing"
        publish_tables(store, "v2", new)  # the retry
        assert store.live_version() == "v2" and _first_item(store) == "v2-i0"
        assert store.version_info("v2")["counts"]["users"] == 3000
        _cleanup(store)


class _Proxy:
    """A TCP forwarder to the store that can be cut (every connection closed, new ones refused
    at once) and restored: the store "goes down" while the client keeps its URL."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.down = threading.Event()
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.down.set()
        with self.lock:
            for s in self.open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.open.clear()

    def restore(self) -> None:
        self.down.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def _through(url: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)
    netloc = (host[0] + "@" if len(host) == 2 else "") + f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_the_store_going_down_during_a_publish(kind, tmp_path, monkeypatch):
    from urllib.parse import urlsplit

    url = _store_urls(kind, tmp_path)
    target = urlsplit(url)
    proxy = _Proxy(target.hostname, target.port or (6379 if kind == "redis" else 5432))
    old, new = _recs(tmp_path / "v1", "v1"), _recs(tmp_path / "v2", "v2")
    direct = open_store(url)
    try:
        publish_tables(direct, "v1", old)
        flush, calls = VersionWriter._flush, [0]

        def failing(self, kind_, batch):
            calls[0] += 1
            if calls[0] == 3:
                proxy.cut()  # the store goes down between two batches of rows
            return flush(self, kind_, batch)

        monkeypatch.setattr(VersionWriter, "_flush", failing)
        proxied = open_store(_through(url, proxy.port))
        started = time.monotonic()
        with pytest.raises(ServingError, match="unavailable"):
            publish_tables(proxied, "v2", new, batch_rows=500)
        assert time.monotonic() - started < 60
        proxied.close()
        monkeypatch.setattr(VersionWriter, "_flush", flush)
        assert direct.live_version() == "v1" and _first_item(direct) == "v1-i0"  # the old version keeps serving

        proxy.restore()
        with open_store(_through(url, proxy.port)) as retry:
            publish_tables(retry, "v2", new, batch_rows=500)
        assert direct.live_version() == "v2" and _first_item(direct) == "v2-i0"
        assert direct.version_info("v2")["counts"]["users"] == 3000
    finally:
        proxy.close()
        _cleanup(direct)
        direct.close()


def _cleanup(store) -> None:
    destroy = getattr(store, "destroy", None)
    if destroy is not None:
        destroy()


# -- MLflow down at train time ---------------------------------------------------------------


def test_mlflow_unreachable_at_train_time_fails_clearly_and_at_once(spark, settings):
    generate_to_landing(settings, GenerateOptions(events=8_000, seed=2, days=30, start="2026-01-01"))
    cleaned = clean_step(settings, "batch-1")
    matrices_step(settings)
    down = settings.replace(mlflow_tracking_uri="http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError, match="MLflow tracking server http://127.0.0.1:9 is unreachable"):
        train_step(down, "batch-1", until=cleaned["until"])
    assert time.monotonic() - started < 30
    assert not (settings.home / "mlartifacts").exists()


# -- a full disk while a micro-batch writes --------------------------------------------------


def test_a_full_disk_during_a_microbatch_loses_and_doubles_nothing(spark, settings, monkeypatch):
    import freshrec.lake

    atomic_write_jsonl(settings.landing_events_dir, "base.jsonl",
                       [{"event_id": f"b{i}", "ts": "2026-01-01T10:00:00Z", "user_id": f"u{i % 5}", "event_type": "view",
                         "item_id": f"i{i % 7}"} for i in range(20)])
    clean_step(settings, "batch-1")
    rows = [{"event_id": f"n{i}", "ts": f"2026-01-0{2 + i % 3}T10:00:00Z", "user_id": f"u{i % 5}", "event_type": "view",
             "item_id": f"i{i % 7}"} for i in range(30)]
    atomic_write_jsonl(settings.landing_events_dir, "new.jsonl", rows)  # three dates: three lake files

    replace, moves = os.replace, [0]

    def disk_full(src, dst, *args, **kwargs):
        if "/lake/events/" in str(dst):
            moves[0] += 1
            if moves[0] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(freshrec.lake.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        incremental_step(settings)
    monkeypatch.setattr(freshrec.lake.os, "replace", replace)
    assert Ledger(settings.state_db).open_claims()  # the micro-batch is not done: the next run replays it

    out = incremental_step(settings)  # space again
    assert out["files"] == 1 and out["microbatches"] == 1
    lake = _lake(settings)
    assert lake.is_unique and len(lake) == 50
    totals = Ledger(settings.state_db).totals()
    assert totals == {"read": 50, "clean": 50, "quarantined": 0, "duplicates": 0}
    assert json.dumps(Ledger(settings.state_db).open_claims()) == "{}"
