"""The quarantine, seen without Spark: `freshrec quarantine` (rows with their reason, landing
file and line, filtered, as text or JSON), per-reason counts in `freshrec status`, and the
one-line hint when the home is empty but one nearby is not."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freshrec.cli import main
from freshrec.settings import Settings
from freshrec.status import collect_status, format_status

ROWS = {
    "batch-1": [("a.jsonl", '{"ts":"yesterday"}', "missing_user_id: user_id is required; invalid_ts: 'yesterday' is not ..."),
                ("a.jsonl", '{"user_id":"u","ts":"02/12/2026"}', "invalid_ts: '02/12/2026' is not ..."),
                ("b.csv", "{broken", "malformed_json: line is not valid JSON (truncated or corrupt)")],
    "mb-000001": [("c.jsonl", '{"event_type":"click"}', "unknown_event_type: 'click' is not one of view, ...")],
}


def write_quarantine(home: Path) -> None:
    for batch_id, rows in ROWS.items():
        part = home / "lake" / "quarantine" / f"batch_id={batch_id}"
        part.mkdir(parents=True)
        table = pa.table({"source_file": [r[0] for r in rows], "raw": [r[1] for r in rows], "reason": [r[2] for r in rows]})
        pq.write_table(table, part / "part-0.parquet")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    write_quarantine(home)
    monkeypatch.setenv("FRESHREC_HOME", str(home))
    sqlite3.connect(home / "state.db").close()  # not an empty home: no hint
    return home


def test_quarantine_shows_reason_file_and_line(home, capsys):
    assert main(["quarantine"]) == 0
    out = capsys.readouterr().out
    assert "a.jsonl  [batch-1]  missing_user_id: user_id is required; invalid_ts: 'yesterday'" in out
    assert '    {"ts":"yesterday"}' in out and "    {broken" in out and "c.jsonl  [mb-000001]" in out
    assert out.strip().endswith("4 of 4 quarantined row(s) shown")


def test_quarantine_filters_and_limit(home, capsys):
    assert main(["quarantine", "--reason", "invalid_ts", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["total"] == 2 and {r["raw"] for r in found["rows"]} == {'{"ts":"yesterday"}', '{"user_id":"u","ts":"02/12/2026"}'}
    assert found["rows"][0]["codes"] in (["missing_user_id", "invalid_ts"], ["invalid_ts"])
    assert set(found["rows"][0]) == {"source_file", "raw", "reason", "batch_id", "codes"}
    assert main(["quarantine", "--file", "b.csv", "--json"]) == 0
    assert [r["raw"] for r in json.loads(capsys.readouterr().out)["rows"]] == ["{broken"]
    assert main(["quarantine", "--reason", "invalid_ts", "--file", "b.csv"]) == 0
    assert capsys.readouterr().out.strip() == "no quarantined rows match"
    assert main(["quarantine", "--limit", "1"]) == 0
    assert "1 of 4 quarantined row(s) shown (--limit 1" in capsys.readouterr().out


def test_quarantine_unknown_reason_is_an_error(home, capsys):
    assert main(["quarantine", "--reason", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "'bogus' is not a reason code" in err and "invalid_ts" in err


def test_an_empty_quarantine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path / "nothing"))
    assert main(["quarantine", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"total": 0, "rows": []}


def test_status_counts_quarantine_per_reason_code(home):
    status = collect_status(Settings(home=home))
    assert status["quarantine_reasons"] == {"invalid_ts": 2, "malformed_json": 1, "missing_user_id": 1,
                                            "unknown_event_type": 1}
    assert list(status["quarantine_reasons"]) == ["invalid_ts", "malformed_json", "missing_user_id", "unknown_event_type"]
    text = format_status(status)
    line = next(line for line in text.splitlines() if line.startswith("quarantined"))
    assert "invalid_ts 2, malformed_json 1, missing_user_id 1, unknown_event_type 1" in line
    assert collect_status(Settings(home=home / "missing"))["quarantine_reasons"] == {}


def test_an_empty_home_names_the_home_nearby_that_has_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRESHREC_HOME", raising=False)
    monkeypatch.delenv("FRESHREC_CONFIG", raising=False)
    demo = tmp_path / ".freshrec" / "demo"
    demo.mkdir(parents=True)
    sqlite3.connect(demo / "state.db").close()
    assert main(["status", "--json"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{tmp_path / '.freshrec'} holds no data yet; {demo} does: FRESHREC_HOME={demo} freshrec status" in err[0]
    # with the freshrec.toml the demo leaves, the same command sees the demo's home and says nothing
    (tmp_path / "freshrec.toml").write_text('home = ".freshrec/demo"\n')
    assert main(["status", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["home"] == str(demo)
