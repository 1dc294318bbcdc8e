"""Taking landing files (freshrec.intake), without Spark: every file-level fault is found by
name with its reason, unreadable files move aside and are counted, a file is taken only when
complete, never dropped for its age, and a change after it was taken is reported."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pytest

from freshrec.intake import FILE_REASON_CODES, check_file, landing_report, take_files
from freshrec.ledger import Ledger
from freshrec.settings import Settings

GOOD = '{"user_id": "u1", "event_type": "view", "item_id": "i1", "ts": "2024-05-01T10:00:00Z"}\n'


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(home=tmp_path / "home", max_line_bytes=4096)
    s.landing_events_dir.mkdir(parents=True)
    return s


def _write(directory: Path, name: str, data: bytes, age_s: float = 60.0) -> Path:
    path = directory / name
    path.write_bytes(data)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def _truncated_gzip(lines: int) -> bytes:
    whole = gzip.compress((GOOD * lines).encode())
    return whole[: len(whole) // 2]


FAULTS = {
    "empty.jsonl": (b"", "empty_file", 0),
    "cut.jsonl.gz": (_truncated_gzip(2000), "corrupt_gzip", None),
    "garbage.jsonl.gz": (b"\x1f\x8b\x08\x00not a deflate stream at all", "corrupt_gzip", 0),
    "latin1.jsonl": ((GOOD * 3).encode() + '{"user_id": "Jos\xe9"}\n'.encode("latin-1") + GOOD.encode(), "undecodable_bytes", 3),
    "long.jsonl": ((GOOD * 2).encode() + b'{"user_id": "' + b"x" * 5000 + b'"}\n', "line_too_long", 2),
    "semicolons.csv": (b"user_id;event_type;item_id;ts\nu1;view;i1;2024-05-01T10:00:00Z\n", "wrong_delimiter", 0),
    "tabs.csv.gz": (gzip.compress(b"user_id\tevent_type\tts\nu1\tview\t2024-05-01\n"), "wrong_delimiter", 0),
    "strange.csv": (b"customer,action,when\nu1,view,2024-05-01\n", "unknown_header", 0),
    "csv-in-json.jsonl": (b"user_id,event_type,item_id,ts\nu1,view,i1,2024-05-01\n", "unknown_header", 0),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_file_fault_has_its_code_and_counts_the_rows_before_it(tmp_path, name):
    data, code, rows = FAULTS[name]
    fault = check_file(_write(tmp_path, name, data), max_line_bytes=4096)
    assert fault is not None and fault.code == code, fault
    assert fault.message and len(fault.message) < 400
    if rows is not None:
        assert fault.rows == rows
    else:
        assert fault.rows > 0  # a gzip cut in the middle: the lines before the cut are counted
    assert fault.counted == fault.rows + 1


def test_every_file_reason_code_is_covered():
    assert {code for _, code, _ in FAULTS.values()} == set(FILE_REASON_CODES)


@pytest.mark.parametrize("name,data", [
    ("ok.jsonl", (GOOD * 3).encode()),
    ("ok.jsonl.gz", gzip.compress((GOOD * 3).encode())),
    ("ok.csv", b'"user_id","event_type","item_id","ts"\nu1,view,i1,2024-05-01\n'),
    ("no-final-newline.jsonl", GOOD.strip().encode()),
    ("accented.jsonl", '{"user_id": "José", "event_type": "view", "item_id": "i", "ts": "2024-05-01"}\n'.encode()),
])
def test_readable_files_pass(tmp_path, name, data):
    assert check_file(_write(tmp_path, name, data), max_line_bytes=4096) is None


def test_a_bad_file_moves_aside_counted_by_name_and_never_stops_the_good_ones(settings):
    land = settings.landing_events_dir
    _write(land, "good.jsonl", (GOOD * 5).encode())
    _write(land, "bad.jsonl.gz", _truncated_gzip(2000))
    intake = take_files(settings, "b1", "batch")
    assert [p.name for p, _ in intake.files] == ["good.jsonl"]
    (bad,) = intake.quarantined
    assert bad["name"] == "bad.jsonl.gz" and bad["code"] == "corrupt_gzip"
    assert not (land / "bad.jsonl.gz").exists()
    stored = settings.lake_dir / "quarantine_files" / "b1" / "bad.jsonl.gz"
    assert stored.is_file() and json.loads((stored.parent / "bad.jsonl.gz.reason.json").read_text())["code"] == "corrupt_gzip"
    counts = Ledger(settings.state_db).file_counts()["bad.jsonl.gz"]
    assert counts["read"] == counts["quarantined"] == bad["rows"] + 1 and counts["clean"] == 0
    # a full rebuild's counts keep the files set aside
    Ledger(settings.state_db).record_file_counts([{"source_file": "good.jsonl", "read": 5, "clean": 5, "quarantined": 0,
                                                   "duplicates": 0}], "b2", replace_all=True)
    assert set(Ledger(settings.state_db).file_counts()) == {"good.jsonl", "bad.jsonl.gz"}
    report = landing_report(settings, Ledger(settings.state_db))
    assert [f["name"] for f in report["quarantined_files"]] == ["bad.jsonl.gz"]


def test_temporary_names_are_never_taken(settings):
    land = settings.landing_events_dir
    for name in (".hidden.jsonl", "_staging.jsonl", "x.jsonl.tmp", "y.jsonl.part", "notes.txt"):
        _write(land, name, GOOD.encode())
    assert take_files(settings, "b1", "micro").files == []


def test_a_file_still_being_written_waits_and_is_taken_once_complete(settings):
    path = _write(settings.landing_events_dir, "live.jsonl", (GOOD * 3).encode()[:-20], age_s=0)  # mid-line, just written
    first = take_files(settings, "m1", "micro")
    assert first.files == [] and first.pending == ["live.jsonl"]
    with path.open("ab") as fh:  # the writer finishes
        fh.write((GOOD * 3).encode()[-20:])
    second = take_files(settings, "m2", "micro")
    assert [p.name for p, _ in second.files] == ["live.jsonl"]


def test_a_gzip_still_being_written_waits_instead_of_being_quarantined(settings):
    path = _write(settings.landing_events_dir, "live.jsonl.gz", _truncated_gzip(2000), age_s=0)
    intake = take_files(settings, "m1", "micro")
    assert intake.pending == ["live.jsonl.gz"] and intake.quarantined == [] and path.exists()


def test_a_zero_byte_file_filled_in_later_is_taken(settings):
    path = _write(settings.landing_events_dir, "later.jsonl", b"", age_s=0)
    assert take_files(settings, "m1", "micro").pending == ["later.jsonl"]
    path.write_bytes((GOOD * 2).encode())
    assert [p.name for p, _ in take_files(settings, "m2", "micro").files] == ["later.jsonl"]


def test_an_empty_file_that_stays_empty_is_quarantined_and_can_land_again(settings):
    _write(settings.landing_events_dir, "empty.jsonl", b"", age_s=60)
    intake = take_files(settings, "m1", "micro")
    assert [q["code"] for q in intake.quarantined] == ["empty_file"]
    _write(settings.landing_events_dir, "empty.jsonl", (GOOD * 2).encode())  # fixed, landed again
    assert [p.name for p, _ in take_files(settings, "m2", "micro").files] == ["empty.jsonl"]


def test_a_file_is_never_dropped_for_its_age(settings):
    _write(settings.landing_events_dir, "old.jsonl", GOOD.encode(), age_s=400 * 86400)  # cp -p of a year-old export
    assert [p.name for p, _ in take_files(settings, "m1", "micro").files] == ["old.jsonl"]


def test_a_micro_batch_takes_a_file_once_and_reports_a_later_change(settings):
    ledger = Ledger(settings.state_db)
    path = _write(settings.landing_events_dir, "a.jsonl", GOOD.encode())
    assert [p.name for p, _ in take_files(settings, "m1", "micro").files] == ["a.jsonl"]
    assert ledger.open_claims() == {"m1": ["a.jsonl"]}
    ledger.finish_claim("m1")
    assert ledger.open_claims() == {}
    again = take_files(settings, "m2", "micro")
    assert again.files == [] and again.changed == []
    _write(settings.landing_events_dir, "a.jsonl", (GOOD * 2).encode())
    changed = take_files(settings, "m3", "micro")
    assert changed.files == [] and [c["name"] for c in changed.changed] == ["a.jsonl"]
    assert landing_report(settings, ledger)["changed_files"] == ["a.jsonl"]
    # the batch reads it again, whole, and the report clears
    assert [p.name for p, _ in take_files(settings, "b1", "batch").files] == ["a.jsonl"]
    assert landing_report(settings, ledger)["changed_files"] == []
    assert path.exists()


def test_microbatch_ids_are_spent_only_when_used(settings):
    ledger = Ledger(settings.state_db)
    first = ledger.next_microbatch_id()
    assert ledger.next_microbatch_id() == first and first.endswith("-000001")
    ledger.use_microbatch_id(first)
    assert ledger.next_microbatch_id().endswith("-000002")
    assert ledger.next_microbatch_id().split("-")[0] == first.split("-")[0]
