"""File-level faults on real Spark, through both paths (the batch ``clean`` and the micro-batch):
one unreadable landing file never stops the others, it is quarantined by name and counted, and
nothing is skipped silently (a file still being written, a zero-byte file filled in later, a
file with an old mtime). A second incremental run while one runs returns at once."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from freshrec.incremental import BUSY, incremental_step
from freshrec.lake import run_lock
from freshrec.landing import atomic_write_jsonl
from freshrec.ledger import Ledger
from freshrec.settings import settings_to_env
from freshrec.status import collect_status
from freshrec.steps import clean_step, validate_step

pytestmark = pytest.mark.integration


def _rows(prefix: str, n: int, day: str = "2024-05-01") -> list[dict]:
    return [{"event_id": f"{prefix}-{i}", "ts": f"{day}T10:{i % 60:02d}:00Z", "user_id": f"u{i % 7}",
             "event_type": "view", "item_id": f"i{i % 11}"} for i in range(n)]


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _cut_gzip(rows: list[dict]) -> bytes:
    whole = gzip.compress(_lines(rows))
    return whole[: len(whole) * 2 // 3]


def _lake_ids(settings) -> set[str]:
    return set(pd.read_parquet(settings.events_path, columns=["event_id"])["event_id"])


def _reconciles(settings) -> dict:
    totals = Ledger(settings.state_db).totals()
    assert totals["read"] == totals["clean"] + totals["quarantined"] + totals["duplicates"]
    return totals


def test_batch_a_corrupt_gzip_beside_a_valid_file(spark, settings):
    atomic_write_jsonl(settings.landing_events_dir, "good.jsonl", _rows("g", 50))
    (settings.landing_events_dir / "broken.jsonl.gz").write_bytes(_cut_gzip(_rows("b", 3000)))
    time.sleep(settings.landing_settle_seconds)  # written in place: let it settle, as a real late batch would

    out = clean_step(settings, "batch-1")
    assert _lake_ids(settings) == {f"g-{i}" for i in range(50)}
    (moved,) = out["quarantined_files"]
    assert moved["name"] == "broken.jsonl.gz" and moved["code"] == "corrupt_gzip"
    assert "broken.jsonl.gz" in moved["message"] or "gunzip" in moved["message"]
    totals = _reconciles(settings)
    counted = Ledger(settings.state_db).file_counts()["broken.jsonl.gz"]
    assert counted["clean"] == 0 and counted["read"] == counted["quarantined"] > 1  # rows before the cut, and the cut
    assert totals["clean"] == 50 and out["read"] == totals["read"]
    assert not (settings.landing_events_dir / "broken.jsonl.gz").exists()
    assert (settings.lake_dir / "quarantine_files" / "batch-1" / "broken.jsonl.gz").is_file()
    # the quality gate judges the readable files: the broken one (most of the rows) does not stop the batch
    assert validate_step(settings, "batch-1")["quarantine_ratio"] == 0.0

    status = collect_status(settings)
    assert [f["name"] for f in status["landing"]["quarantined_files"]] == ["broken.jsonl.gz"]
    assert status["counts"] == totals
    cli = subprocess.run([sys.executable, "-m", "freshrec.cli", "quarantine", "--files"], capture_output=True, text=True,
                         env={**os.environ, **settings_to_env(settings)}, timeout=120)
    assert cli.returncode == 0 and "broken.jsonl.gz" in cli.stdout and "corrupt_gzip" in cli.stdout, cli.stderr

    # a rerun changes nothing and counts nothing twice
    clean_step(settings, "batch-2")
    assert _reconciles(settings) == totals and _lake_ids(settings) == {f"g-{i}" for i in range(50)}


def test_batch_with_every_file_unreadable_says_so_by_name(spark, settings):
    (settings.landing_events_dir / "semi.csv").write_text("user_id;event_type;item_id;ts\nu;view;i;2024-05-01\n")
    time.sleep(settings.landing_settle_seconds)
    from freshrec.errors import UserError

    with pytest.raises(UserError, match=r"semi\.csv \(wrong_delimiter\)"):
        clean_step(settings, "batch-1")


def test_microbatch_a_corrupt_file_is_quarantined_and_the_rest_served(spark, settings):
    atomic_write_jsonl(settings.landing_events_dir, "base.jsonl", _rows("base", 30))
    clean_step(settings, "batch-1")
    atomic_write_jsonl(settings.landing_events_dir, "next.jsonl", _rows("n", 20, day="2024-05-02"))
    (settings.landing_events_dir / "latin1.jsonl").write_bytes(_lines(_rows("l", 5)) + b'{"user_id": "Jos\xe9"}\n')
    time.sleep(settings.landing_settle_seconds)

    out = incremental_step(settings)
    assert out["files"] == 1 and out["microbatches"] == 1
    assert _lake_ids(settings) >= {f"n-{i}" for i in range(20)} and not any(i.startswith("l-") for i in _lake_ids(settings))
    (mb,) = Ledger(settings.state_db).recent_microbatches(1)
    assert [q["name"] for q in mb["quarantined_files"]] == ["latin1.jsonl"]
    assert mb["quarantined_files"][0]["code"] == "undecodable_bytes" and "line 6" in mb["quarantined_files"][0]["message"]
    totals = _reconciles(settings)
    assert totals["clean"] == 50 and totals["quarantined"] == 6  # five lines before the bad byte, and the bad line
    # nothing new: nothing happens, and the quarantined file is not read again
    assert incremental_step(settings)["microbatches"] == 0 and _reconciles(settings) == totals


def test_microbatch_skips_nothing(spark, settings):
    """The three files Spark's streaming source skipped: each is taken by a micro-batch."""
    atomic_write_jsonl(settings.landing_events_dir, "base.jsonl", _rows("base", 10))
    clean_step(settings, "batch-1")
    land = settings.landing_events_dir
    s = settings.replace(landing_settle_seconds=30.0)  # a writer that stalls for up to 30 s

    # 1. a file still being written (mid-line), 2. a zero-byte file filled in later
    partial = _lines(_rows("w", 40, day="2024-05-03"))
    (land / "writing.jsonl").write_bytes(partial[: len(partial) // 2 + 7])
    (land / "zero.jsonl").write_bytes(b"")
    # 3. a file copied with its mtime preserved (cp -p): a year old
    old = land / "old.jsonl"
    old.write_bytes(_lines(_rows("o", 15, day="2024-05-04")))
    year_ago = time.time() - 365 * 86400
    os.utime(old, (year_ago, year_ago))

    first = incremental_step(s)
    assert first["files"] == 1 and sorted(first["pending_files"]) == ["writing.jsonl", "zero.jsonl"]
    assert {f"o-{i}" for i in range(15)} <= _lake_ids(s)

    (land / "writing.jsonl").write_bytes(partial)  # the writer finishes
    (land / "zero.jsonl").write_bytes(_lines(_rows("z", 5, day="2024-05-05")))  # filled in later
    second = incremental_step(s)
    assert second["files"] == 2 and "pending_files" not in second
    assert {f"w-{i}" for i in range(40)} | {f"z-{i}" for i in range(5)} <= _lake_ids(s)
    totals = _reconciles(s)
    assert totals == {"read": 70, "clean": 70, "quarantined": 0, "duplicates": 0}

    # a change after a file was taken is reported, never silently ignored
    (land / "old.jsonl").write_bytes(_lines(_rows("o", 16, day="2024-05-04")))
    os.utime(land / "old.jsonl", (year_ago, year_ago))
    third = incremental_step(s)
    assert third["changed_files"] == ["old.jsonl"]
    assert collect_status(s)["landing"]["changed_files"] == ["old.jsonl"]
    assert any("old.jsonl changed" in w for w in collect_status(s)["warnings"])
    clean_step(s, "batch-2")  # the batch reads it again, whole
    assert "o-15" in _lake_ids(s) and collect_status(s)["landing"]["changed_files"] == []


def test_a_second_incremental_run_returns_at_once(spark, settings):
    atomic_write_jsonl(settings.landing_events_dir, "base.jsonl", _rows("base", 10))
    clean_step(settings, "batch-1")
    atomic_write_jsonl(settings.landing_events_dir, "new.jsonl", _rows("n", 5, day="2024-05-02"))
    with run_lock(settings, "incremental") as held:
        assert held
        started = time.monotonic()
        busy = incremental_step(settings)
        assert busy["skipped"] == BUSY and busy["microbatches"] == 0 and time.monotonic() - started < 5
    assert "n-0" not in _lake_ids(settings)
    assert incremental_step(settings)["files"] == 1 and "n-0" in _lake_ids(settings)
