"""The micro-batch path on a published synthetic home (real Spark streaming, MLflow, SQLite
serving): new rows fold in exactly once, the users who acted get fresh lists, a rerun with
nothing new changes nothing, the next batch does not double count, a SIGKILL at any point
loses and doubles nothing, and ``--watch`` serves within seconds."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from freshrec.api import create_app
from freshrec.client import RecsClient
from freshrec.generate import GenerateOptions, generate_to_landing
from freshrec.incremental import incremental_step
from freshrec.lake import read_recent, recent_partitions
from freshrec.landing import atomic_write_jsonl
from freshrec.ledger import Ledger
from freshrec.settings import Settings, settings_to_env
from freshrec.status import collect_status
from freshrec.steps import clean_step, matrices_step, publish_step, score_step
from tests.batches import run_batch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_home(tmp_path_factory, spark):
    """A home with a trained, published version (1 epoch; quality is not the point here)."""
    home = tmp_path_factory.mktemp("incremental") / "base"
    settings = _settings(home).replace(model_epochs=1, model_dim=16)
    settings.ensure_dirs()
    generate_to_landing(settings, GenerateOptions(events=20_000, seed=5, users=500, items=300, days=30, start="2026-01-01"))
    run_batch(settings, "batch-1")
    return home


def _settings(home: Path) -> Settings:
    return Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=4, top_n=20, exclude_seen="purchased")


@pytest.fixture
def home(base_home, tmp_path) -> Settings:
    """A private copy of the published home, so tests do not see each other's micro-batches."""
    target = tmp_path / "home"
    shutil.copytree(base_home, target)
    return _settings(target)


def _lake_ids(settings: Settings) -> pd.Series:
    return pd.read_parquet(settings.events_path, columns=["event_id"])["event_id"]


def _event(eid, user, etype, item, minute, day="2026-01-31"):
    return {"event_id": eid, "ts": f"{day}T10:{minute:02d}:00Z", "user_id": user, "session_id": f"s-{user}",
            "event_type": etype, "item_id": item}


def test_a_microbatch_folds_in_exactly_once_and_refreshes_its_users(home, spark):
    s = home
    ledger = Ledger(s.state_db)
    before = ledger.totals()
    lake_before = _lake_ids(s)
    with RecsClient(s.serving) as client:
        shopper = next(u for u in pd.read_parquet(s.features_dir / "user_index")["user_id"] if client.recs(u, 1)["source"] == "personal")
        bought = client.recs(shopper, 1)["items"][0]["item_id"]
        popular_before = client.popular(None, 5)
    lake_events = pd.read_parquet(s.events_path)
    # an item event already in the lake, sent again
    resent = lake_events.loc[lake_events["item_id"].notna() & lake_events["session_id"].notna()].iloc[0]
    rows = [
        _event("n1", "newbie", "view", "i1", 1), _event("n2", "newbie", "add_to_cart", "i2", 2),
        _event("n3", shopper, "purchase", bought, 3),
        _event("n3", shopper, "purchase", bought, 3),  # the same event twice in one file
        {"event_id": resent["event_id"], "ts": resent["ts"].isoformat(), "user_id": resent["user_id"],
         "event_type": resent["event_type"], "item_id": resent["item_id"], "session_id": resent["session_id"]},
        {"event_id": "bad", "ts": "not a time", "user_id": "u1", "event_type": "view", "item_id": "i3"},
    ]
    atomic_write_jsonl(s.landing_events_dir, "mb-1.jsonl", rows)

    out = incremental_step(s)
    assert out["microbatches"] == 1 and out["files"] == 1 and out["rows"] == 6
    after = ledger.totals()
    assert {k: after[k] - before[k] for k in after} == {"read": 6, "clean": 3, "quarantined": 1, "duplicates": 2}
    lake = _lake_ids(s)
    assert len(lake) == len(lake_before) + 3 and lake.is_unique
    assert "invalid_ts" in pd.read_parquet(s.quarantine_path)["reason"].str.cat()
    assert sorted(read_recent(s)["event_id"]) == ["n1", "n2", "n3"]

    with RecsClient(s.serving) as client:
        newbie = client.recs("newbie", 10)
        assert newbie["source"] == "personal" and len(newbie["items"]) == 10
        assert bought not in [i["item_id"] for i in client.recs(shopper, s.top_n)["items"]]  # bought: excluded at once
        assert client.popular(None, 5)["updated_at"] > popular_before["updated_at"]
    fresh = collect_status(s)["freshness"]
    assert fresh["last_microbatch_at"] and fresh["users"] == 2
    assert 0 < fresh["landing_to_served_p50_s"] <= fresh["landing_to_served_p95_s"]

    # nothing new: nothing changes
    files_before = sorted(p.name for p in s.events_path.rglob("*.parquet"))
    with RecsClient(s.serving) as client:
        stamp = client.recs("newbie", 10)["updated_at"]
    assert incremental_step(s)["microbatches"] == 0
    assert ledger.totals() == after and sorted(p.name for p in s.events_path.rglob("*.parquet")) == files_before
    with RecsClient(s.serving) as client:
        assert client.recs("newbie", 10)["updated_at"] == stamp

    # the next batch rebuilds from the landing zone: the micro-batch's rows are counted once
    clean_step(s, "batch-2")
    assert ledger.totals() == after
    assert len(_lake_ids(s)) == len(lake) and _lake_ids(s).is_unique
    matrices_step(s)
    assert recent_partitions(s) == []  # folded into the batch features
    seq = pd.read_parquet(s.features_dir / "sequences")
    assert list(seq.loc[seq["user_id"] == "newbie", "item_ids"].iloc[0]) == ["i1", "i2"]


def _job(settings: Settings) -> subprocess.Popen:
    code = "from freshrec.settings import Settings; from freshrec.incremental import incremental_step; " \
           "print(incremental_step(Settings.load()))"
    env = {**os.environ, **settings_to_env(settings)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_at_random_points_loses_and_doubles_nothing(home):
    s = home
    before = Ledger(s.state_db).totals()
    lake_before = set(_lake_ids(s))
    rng = random.Random(7)
    expected: list[dict] = []
    users = [f"k{u}" for u in range(40)]

    def land(n: int) -> None:
        rows = [_event(f"k-{n}-{i}", rng.choice(users), rng.choice(["view", "view", "add_to_cart", "purchase"]),
                       f"i{rng.randrange(300)}", i % 60) for i in range(400)]
        atomic_write_jsonl(s.landing_events_dir, f"kill-{n:02d}.jsonl", rows)
        expected.extend(rows)

    kills = 0
    for trial in range(5):
        land(trial)
        job = _job(s)
        time.sleep(rng.uniform(4.0, 16.0))
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            kills += 1
        job.wait()
    assert kills >= 3, "the job finished before it could be killed: the trial proves nothing"
    final = _job(s)
    assert final.wait(timeout=300) == 0

    totals = Ledger(s.state_db).totals()
    assert {k: totals[k] - before[k] for k in totals} == {"read": 2000, "clean": 2000, "quarantined": 0, "duplicates": 0}
    lake = _lake_ids(s)
    assert lake.is_unique and set(lake) - lake_before == {e["event_id"] for e in expected}
    recent = read_recent(s)
    assert recent["event_id"].is_unique and set(recent["event_id"]) == {e["event_id"] for e in expected}
    with RecsClient(s.serving) as client:
        assert all(client.recs(u, 5)["source"] == "personal" for u in {e["user_id"] for e in expected})
    assert not list(s.lake_dir.glob(".staging/*/events/*/*.parquet"))


def test_watch_serves_a_new_file_within_seconds_and_stops_on_sigterm(home):
    s = home
    env = {**os.environ, **settings_to_env(s)}
    watcher = subprocess.Popen([sys.executable, "-m", "freshrec.cli", "run", "incremental", "--watch", "--every", "2"],
                               env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        atomic_write_jsonl(s.landing_events_dir, "watch-1.jsonl", [_event("w1", "watcher", "view", "i7", 5)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with RecsClient(s.serving) as client:
                if client.recs("watcher", 5)["source"] == "personal":
                    break
            time.sleep(1)
        else:
            pytest.fail("the watched file was not served within 120 s")
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err[-2000:]
    assert "1 users re-scored" in out or "1 user" in out, out
    mb = Ledger(s.state_db).recent_microbatches(1)[0]
    assert mb["files"] == 1 and mb["landing_to_served_p95_s"] < 60, json.dumps(mb)


def test_a_tampered_recommender_is_never_unpickled(home):
    """recommender.pkl must match the SHA-256 the publish step recorded in the serving store."""
    from freshrec.errors import UserError
    from freshrec.serving import open_store

    s = home
    with open_store(s.serving) as store:
        live = store.live_version()
        assert len(store.version_info(live)["meta"]["recommender_sha256"]) == 64
    pkl = s.recs_dir / live / "recommender.pkl"
    pkl.write_bytes(pkl.read_bytes() + b"\x00")
    atomic_write_jsonl(s.landing_events_dir, "after-tamper.jsonl", [_event("t1", "tamper", "view", "i3", 1)])
    with pytest.raises(UserError, match="does not match the checksum"):
        incremental_step(s)
    with RecsClient(s.serving) as client:
        assert client.recs("tamper", 5)["source"] == "fallback"  # nothing was scored with it


def _files_naming(home: Path, needle: str) -> list[str]:
    """Every file under ``home`` whose content names ``needle``: raw bytes of plain files, the
    gunzipped bytes of .gz files (as far as they gunzip), every string value of Parquet files."""
    import zlib

    import pyarrow.parquet as pq

    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if path.name.endswith(".parquet"):
            table = pq.read_table(path, partitioning=None)
            if any(needle in str(v) for col in table.columns for v in col.to_pylist() if v is not None):
                found.append(str(path))
            continue
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            try:  # a cut stream gives what comes before the cut
                data = zlib.decompressobj(wbits=31).decompress(data)
            except zlib.error:
                pass  # not gzip at all: its raw bytes are searched
        if needle.encode() in data:
            found.append(str(path))
    return found


def test_forget_erases_a_user_everywhere_and_the_next_batch_does_not_bring_them_back(home):
    import gzip

    s = home
    who = "forget-me-7f3a"
    rows = [_event("fm1", who, "view", "i3", 1), _event("fm2", who, "purchase", "i4", 2),
            _event("keep1", "stays-9b2c", "view", "i5", 3),
            {"event_id": "fm-bad", "ts": "not a time", "user_id": who, "event_type": "view", "item_id": "i6"}]
    atomic_write_jsonl(s.landing_events_dir, "forget-1.jsonl", rows)
    cut = gzip.compress(("".join(json.dumps(_event(f"fz{i}", who, "view", "i7", i % 60)) + "\n" for i in range(3000))).encode())
    (s.landing_events_dir / "forget-2.jsonl.gz").write_bytes(cut[: len(cut) // 2])  # quarantined whole
    time.sleep(s.landing_settle_seconds)
    incremental_step(s)
    matrices_step(s)  # the user's batch state: features/sequences, interactions and user_state.db
    env = {**os.environ, **settings_to_env(s)}
    with RecsClient(s.serving) as client:
        assert client.recs(who, 5)["source"] == "personal"
    # the API served the user a list (an impression) and took one more event (events.db, a segment)
    with TestClient(create_app(s, insecure_local=True)) as http:
        assert http.get(f"/v1/users/{who}/recommendations").json()["source"] == "personal"
        assert http.post("/v1/events", json=[_event("fm3", who, "view", "i8", 4)]).json()["accepted"] == 1
    assert _files_naming(s.home, who), "the user is in the home before forget: the check below would prove nothing"

    out = subprocess.run([sys.executable, "-m", "freshrec.cli", "forget", who, "--reason", f"request by {who}", "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    done = json.loads(out.stdout)
    assert done["removed"]["landing"] == 4 and done["removed"]["serving"] >= 1 and done["removed"]["lake/events"] == 2
    assert done["removed"]["lake/quarantine"] == 1 and done["removed"]["quarantine_files"] > 0
    assert done["removed"]["api_events"] == 1 and done["removed"]["impressions"] == 1
    assert done["removed"]["features/user_state.db"] == 1  # the user's row: their sequence and the items seen
    assert who not in out.stdout
    recs = subprocess.run([sys.executable, "-m", "freshrec.cli", "recs", who, "--json"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert recs.returncode == 0 and json.loads(recs.stdout)["source"] == "fallback", recs.stderr[-2000:]
    assert _files_naming(s.home, who) == []
    (erasure,) = Ledger(s.state_db).erasures()
    assert erasure["state"] == "complete" and who not in json.dumps(erasure) and len(erasure["subject"]) == 64
    assert erasure["reason"] == "request by <subject>"
    assert collect_status(s)["landing"]["changed_files"] == []  # rewritten on purpose, not "changed"
    with RecsClient(s.serving) as client:
        assert client.recs("stays-9b2c", 5)["source"] == "personal"  # the other user's events stay

    # the next batch rebuilds from the landing zone: the user does not come back
    clean_step(s, "batch-2")
    matrices_step(s)
    gate = json.loads((s.reports_dir / "gate.json").read_text())
    publish_step(s, score_step(s, "batch-2", gate))
    with RecsClient(s.serving) as client:
        assert client.recs(who, 5)["source"] == "fallback"
    assert _files_naming(s.home, who) == []
    totals = Ledger(s.state_db).totals()
    assert totals["read"] == totals["clean"] + totals["quarantined"] + totals["duplicates"]
