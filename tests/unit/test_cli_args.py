"""Bad arguments get one clear line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES

BIN = Path(sys.executable).parent / "freshrec"


def _run(args: list[str], home: Path, **settings: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN), *args] if BIN.exists() else [sys.executable, "-m", "freshrec.cli", *args]
    env = {**os.environ, "FRESHREC_HOME": str(home), **settings}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("freshrec")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("args, needles", [
    (["import", "parquet", "x.parquet"], ["invalid choice", "parquet"]),
    (["import", "otto", "does-not-exist.jsonl"], ["not found", "does-not-exist.jsonl"]),
    (["generate", "--events", "-5"], ["positive integer", "-5"]),
    (["generate", "--events", "abc"], ["positive integer", "abc"]),
    (["generate", "--events", "0"], ["positive integer"]),
    (["generate", "--events", "10", "--start", "soon"], ["--start"]),
    (["frobnicate"], ["invalid choice", "frobnicate"]),
    ([], ["required"]),
    (["run", "batch", "--logical-date", "soon"], ["ISO date", "soon"]),
    (["run", "batch", "--logical-date", "2999-01-01"], ["in the future"]),
    (["run", "incremental", "--logical-date", "2026-01-01"], ["--logical-date", "run batch", "run incremental"]),
    (["run", "refresh", "--logical-date", "2026-01-01"], ["--logical-date", "run batch", "run refresh"]),
    (["run", "batch", "--watch"], ["--watch", "run incremental"]),
    (["run", "incremental", "--watch", "--every", "0"], ["positive number", "0"]),
    (["run", "incremental", "--every", "5"], ["--every", "--watch"]),
    (["import", "retailrocket"], ["required"]),
    (["import", "csv", str(SAMPLES / "retailrocket_sample_events.csv"), "--user-col", "visitorid", "--ts-col", "when",
      "--default-event", "view"], ["'when'", "available columns", "timestamp"]),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, needles):
    _assert_one_line_error(_run(args, tmp_path / "home"), *needles)


@pytest.mark.parametrize("settings, toml, needles", [
    ({"FRESHREC_KEEP_VERSIONS": "0"}, None, ["FRESHREC_KEEP_VERSIONS must be >= 1"]),
    ({"FRESHREC_TOP_N": "many"}, None, ["FRESHREC_TOP_N", "'many'"]),
    ({}, "top_n = 20\nmodel_epoch = 2\n", ["unknown setting(s)", "model_epoch"]),
    ({}, "top_n = [\n", ["cannot read", "freshrec.toml"]),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, settings, toml, needles):
    if toml is not None:
        (tmp_path / "freshrec.toml").write_text(toml, encoding="utf-8")
    result = _run(["status"], tmp_path / "home", FRESHREC_CONFIG=str(tmp_path / "freshrec.toml"), **settings)
    _assert_one_line_error(result, *needles)


def test_directory_source(tmp_path):
    _assert_one_line_error(_run(["import", "events", str(tmp_path)], tmp_path / "home"), "directory")


def test_import_and_generate_succeed(tmp_path):
    home = tmp_path / "home"
    ok = _run(["import", "retailrocket", str(SAMPLES / "retailrocket_sample_events.csv")], home)
    assert ok.returncode == 0, ok.stderr
    assert "imported 2,771 rows into 1 landing file(s)" in ok.stdout
    gen = _run(["generate", "--events", "1000", "--seed", "3", "--start", "2024-01-01", "--dirty"], home)
    assert gen.returncode == 0, gen.stderr
    assert "generated 1,000 rows" in gen.stdout
    assert (home / "landing" / "events" / "synthetic-3-00000.jsonl").is_file()
    again = _run(["generate", "--events", "1000", "--seed", "3", "--start", "2024-01-01"], home)
    _assert_one_line_error(again, "already exist")


def test_min_rating_note(tmp_path):
    src = tmp_path / "ratings.dat"
    src.write_text("1::10::5::978300760\n1::11::3::978300761\n", encoding="utf-8")
    res = _run(["import", "movielens", str(src), "--min-rating", "4"], tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert "imported 1 rows" in res.stdout
    assert "left out 1 row(s): movielens ratings below --min-rating 4" in res.stderr


@pytest.mark.parametrize("dag", ["batch", "incremental"])
def test_run_without_landing_files_fails_in_seconds(tmp_path, dag):
    import time

    started = time.monotonic()
    _assert_one_line_error(_run(["run", dag], tmp_path / "home"), "no landing files under", "freshrec import")
    assert time.monotonic() - started < 30  # Airflow never starts (it took 48 s to fail in the clean task)


def test_import_help_lists_event_types_and_timestamp_formats(tmp_path):
    out = _run(["import", "--help"], tmp_path / "home").stdout
    assert "view, add_to_cart, remove_from_cart, purchase, search" in out
    assert "ISO-8601" in out and "epoch milliseconds" in out and "--ts-format '%m/%d/%Y %H:%M:%S'" in out
    assert "--force" in out


def test_import_refusal_exits_2_and_writes_nothing(tmp_path):
    src = tmp_path / "clicks.csv"
    src.write_text("user,item,when,action\nu1,i1,02/12/2026 16:33:19,click\nu2,i2,02/12/2026 16:34:19,click\n")
    flags = ["--user-col", "user", "--item-col", "item", "--ts-col", "when", "--event-col", "action"]
    refused = _run(["import", "csv", str(src), *flags], tmp_path / "home")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("freshrec: error: 2 of the 2 rows checked (100%)")
    assert "--event-map click=view" in refused.stderr and "--ts-format '%m/%d/%Y %H:%M:%S'" in refused.stderr
    assert not any((tmp_path / "home" / "landing" / "events").glob("*"))
    fixed = _run(["import", "csv", str(src), *flags, "--event-map", "click=view", "--ts-format", "%m/%d/%Y %H:%M:%S"],
                 tmp_path / "home")
    assert fixed.returncode == 0 and "imported 2 rows" in fixed.stdout and fixed.stderr == ""
