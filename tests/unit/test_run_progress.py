"""What `freshrec run` prints around a DAG run, without Airflow: a line per task as it starts
and finishes, the run's rows from the ledger, a warning when many were quarantined, and a fast
failure when there is nothing to run on."""

from __future__ import annotations

import time

import pytest

from freshrec.airflow.local import _Follower, run_dag
from freshrec.airflow.progress import Progress, format_rows, quarantine_warning, run_rows, task_line
from freshrec.errors import UserError
from freshrec.ledger import Ledger, utcnow_iso
from tests.unit.test_quarantine_view import write_quarantine


def test_a_finished_task_line():
    assert task_line("freshrec_batch", "clean", "success", 12.345) == "freshrec_batch: clean success (12.3s)"
    assert task_line("freshrec_batch", "train", None, 0) == "freshrec_batch: train finished (0.0s)"


def test_the_follower_turns_dags_test_output_into_task_lines(tmp_path, capsys):
    progress = Progress("freshrec_incremental", tmp_path / "run.log", live=False)
    with open(tmp_path / "run.log", "wb") as sink:
        follower = _Follower(progress, sink)
        for line in ("[info] [DAG TEST] starting task_id=microbatch map_index=-1 [airflow.sdk]",
                     "[info] Task instance state updated new_state=success rows_affected=1",
                     "[info] [DAG TEST] end task task_id=microbatch map_index=-1"):
            follower.feed(f"2026-01-01T00:00:00Z \x1b[32m{line}\x1b[0m\n".encode())
    progress.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"freshrec_incremental: starting `airflow dags test` (its output: {tmp_path / 'run.log'})"
    assert err[1] == "freshrec_incremental: microbatch running"
    assert err[2].startswith("freshrec_incremental: microbatch success (") and err[2].endswith("s)")
    assert "DAG TEST" in (tmp_path / "run.log").read_text()  # every line still goes to the log


def test_the_rows_of_an_incremental_run_and_the_warning(settings):
    write_quarantine(settings.home)  # batch_id=mb-000001 holds one unknown_event_type row
    before = utcnow_iso()
    ledger = Ledger(settings.state_db)
    ledger.record_microbatch("old", {"files": 1, "read": 100, "clean": 100, "quarantined": 0, "duplicates": 0, "users": 9})
    time.sleep(1.1)  # the ledger's times are to the second
    started = utcnow_iso()
    assert started > before
    ledger.record_microbatch("mb-000001", {"files": 1, "read": 4, "clean": 2, "quarantined": 1, "duplicates": 1, "users": 2})
    rows = run_rows(settings, "freshrec_incremental", started, [])
    assert rows == {"read": 4, "clean": 2, "quarantined": 1, "duplicates": 1, "users": 2,
                    "reasons": {"unknown_event_type": 1}, "quarantined_files": []}
    assert format_rows(rows) == "rows: read 4 = clean 2 + quarantined 1 + duplicates 1; users re-scored 2"
    assert quarantine_warning(rows) == ("freshrec: WARNING: 1 of 4 rows (25%) were quarantined; top reasons: "
                                        "unknown_event_type 1. See them with `freshrec quarantine --reason CODE`")
    assert quarantine_warning({**rows, "quarantined": 0}) is None
    assert quarantine_warning({**rows, "read": 10, "quarantined": 1}) is None  # 10% is not more than 10%


def test_the_rows_of_a_batch_run_are_the_rebuilds(settings):
    write_quarantine(settings.home)
    Ledger(settings.state_db).record_file_counts([{"source_file": "a.jsonl", "read": 10, "clean": 7, "quarantined": 3,
                                                   "duplicates": 0}], "batch-1")
    assert run_rows(settings, "freshrec_batch", utcnow_iso(), [{"task_id": "clean", "state": "failed"}]) is None
    rows = run_rows(settings, "freshrec_batch", utcnow_iso(), [{"task_id": "clean", "state": "success"}])
    assert rows["read"] == 10 and rows["users"] is None and rows["reasons"]["invalid_ts"] == 2
    assert format_rows(rows) == "rows: read 10 = clean 7 + quarantined 3 + duplicates 0"
    assert "3 of 10 rows (30%) were quarantined; top reasons: invalid_ts 2, malformed_json 1, missing_user_id 1" \
        in quarantine_warning(rows)


def test_a_run_names_the_files_it_quarantined_whole(settings):
    started = utcnow_iso()
    ledger = Ledger(settings.state_db)
    ledger.record_landing([], [{"name": "x.jsonl.gz", "size": 9, "mtime_ns": 1, "code": "corrupt_gzip",
                                "message": "cannot gunzip past byte 0", "path": "/q/x.jsonl.gz"}], "batch-1", state="taken")
    ledger.record_file_counts([{"source_file": "x.jsonl.gz", "read": 1, "clean": 0, "quarantined": 1, "duplicates": 0}],
                              "batch-1")
    rows = run_rows(settings, "freshrec_batch", started, [{"task_id": "clean", "state": "success"}])
    assert format_rows(rows).splitlines()[1] == "quarantined file: x.jsonl.gz (corrupt_gzip): cannot gunzip past byte 0"


@pytest.mark.parametrize("dag_id", ["freshrec_batch", "freshrec_incremental"])
def test_no_landing_files_fails_at_once_before_airflow(settings, dag_id):
    started = time.monotonic()
    with pytest.raises(UserError, match="no landing files under .*landing/events: run `freshrec import` or `freshrec generate`"):
        run_dag(settings, dag_id)
    assert time.monotonic() - started < 5
    assert not settings.airflow_home.exists() or not any(settings.airflow_home.iterdir())
