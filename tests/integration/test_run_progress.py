"""`freshrec run incremental` through the real `airflow dags test`, on a tiny home: the task's
lines appear while it runs, then the summary, the run's rows and the quarantine warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from freshrec.landing import atomic_write_jsonl
from freshrec.settings import settings_to_env
from tests.integration.test_dags import af_settings, migrated_airflow_home  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "freshrec"


def test_run_incremental_prints_task_lines_rows_and_the_warning(af_settings):  # noqa: F811
    atomic_write_jsonl(af_settings.landing_events_dir, "tiny.jsonl", [
        {"event_id": "p-1", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "event_type": "view", "item_id": "i1"},
        {"event_id": "p-2", "ts": "2026-11-20T10:01:00Z", "user_id": "u1", "event_type": "purchase", "item_id": "i1"},
        {"event_id": "p-3", "ts": "02/12/2026 16:33:19", "user_id": "u2", "event_type": "click", "item_id": "i2"}])
    env = {**os.environ, **settings_to_env(af_settings)}
    done = subprocess.run([str(BIN), "run", "incremental"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    err = done.stderr.splitlines()
    assert err[0].startswith("freshrec_incremental: starting `airflow dags test` (its output: ")
    assert "freshrec_incremental: microbatch running" in err
    assert any(line.startswith("freshrec_incremental: microbatch success (") for line in err), done.stderr
    assert "microbatch" in done.stdout and "succeeded" in done.stdout
    assert "rows: read 3 = clean 2 + quarantined 1 + duplicates 0; users re-scored 0" in done.stdout
    assert ("freshrec: WARNING: 1 of 3 rows (33%) were quarantined; top reasons: invalid_ts 1, unknown_event_type 1"
            in done.stderr)
    assert "Traceback" not in done.stdout + done.stderr


READ_TASK_LOG = """
import sys
from airflow.models import TaskInstance
from airflow.utils.log.log_reader import TaskLogReader
from airflow.utils.session import create_session

with create_session() as session:
    ti = session.query(TaskInstance).filter_by(dag_id="freshrec_incremental", task_id="microbatch").one()
    ti.dag_run  # loaded while the session is open
    for line in TaskLogReader().read_log_stream(ti, ti.try_number, {}):
        sys.stdout.write(line + "\\n")
"""


def test_a_run_from_the_cli_has_task_logs_that_airflow_reads(af_settings):  # noqa: F811
    # `airflow dags test` runs tasks with no supervisor to write their log files: without ours the
    # UI's Logs tab says "Log file not found on worker". Airflow's own reader (the one behind the
    # UI's Logs tab) must find the step's lines.
    from freshrec.airflow.env import airflow_env

    atomic_write_jsonl(af_settings.landing_events_dir, "tiny.jsonl", [
        {"event_id": "l-1", "ts": "2026-11-20T10:00:00Z", "user_id": "u1", "event_type": "view", "item_id": "i1"}])
    env = {**os.environ, **settings_to_env(af_settings)}
    done = subprocess.run([str(BIN), "run", "incremental"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    files = list((af_settings.airflow_home / "logs").glob("dag_id=freshrec_incremental/run_id=*/task_id=microbatch/attempt=1.log"))
    assert len(files) == 1, files
    read = subprocess.run([sys.executable, "-c", READ_TASK_LOG], capture_output=True, text=True,
                          env={**os.environ, **airflow_env(af_settings)}, timeout=300)
    assert read.returncode == 0, read.stderr[-3000:]
    assert "microbatch: incremental_step starting" in read.stdout, read.stdout[-3000:]
    assert "microbatch: incremental_step finished" in read.stdout
    assert "Log file not found" not in read.stdout


def test_two_incremental_runs_started_together_both_succeed_and_count_once(af_settings):  # noqa: F811
    from freshrec.incremental import BUSY
    from freshrec.ledger import Ledger

    atomic_write_jsonl(af_settings.landing_events_dir, "pair.jsonl", [
        {"event_id": f"t-{i}", "ts": "2026-11-20T10:00:00Z", "user_id": f"u{i}", "event_type": "view", "item_id": "i1"}
        for i in range(3)])
    env = {**os.environ, **settings_to_env(af_settings)}
    runs = [subprocess.Popen([str(BIN), "run", "incremental"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]
    outs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outs, strict=True):
        assert run.returncode == 0, out + err
        assert "Traceback" not in out + err
    busy = [out for out, _ in outs if BUSY in out]
    assert len(busy) == 1, outs  # the second exits at once, successfully, and says why
    assert Ledger(af_settings.state_db).totals() == {"read": 3, "clean": 3, "quarantined": 0, "duplicates": 0}


def test_a_batch_and_an_incremental_run_started_together_on_a_fresh_metadata_db(af_settings):  # noqa: F811
    """Both sync their DAG into the same new SQLite metadata DB: one waits for the other's
    first task instead of colliding with it."""
    atomic_write_jsonl(af_settings.landing_events_dir, "both.jsonl", [
        {"event_id": f"b-{i}", "ts": "2026-11-20T10:00:00Z", "user_id": f"u{i % 3}", "event_type": "view",
         "item_id": f"i{i % 4}"} for i in range(12)])
    env = {**os.environ, **settings_to_env(af_settings)}
    runs = [subprocess.Popen([str(BIN), "run", dag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for dag in ("batch", "incremental")]
    for run in runs:
        out, err = run.communicate(timeout=900)
        assert "failed before any task ran" not in out, out + err
        assert "Traceback" not in out + err
        assert "clean" in out or "microbatch" in out, out + err
