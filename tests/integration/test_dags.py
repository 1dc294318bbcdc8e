"""DAG integrity, parse time, and real runs of freshrec_batch through Airflow on SQLite.

One Airflow metadata DB is migrated per test session and copied into each test's
FRESHREC_HOME, so every test has its own DB without paying for a migration each time. Runs go
through ``run_dag``, which starts ``airflow dags test`` in a child process; only the DagBag
tests import Airflow here, to inspect the DAG objects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshrec.airflow.env import DAGS_DIR, airflow_env, prepare_metadata_db
from freshrec.airflow.local import run_dag
from freshrec.airflow.runtime import SPARK_POOL
from freshrec.ledger import Ledger
from freshrec.settings import Settings, settings_to_env
from freshrec.status import collect_status

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RETAILROCKET_SAMPLE = REPO / "data" / "samples" / "retailrocket_sample_events.csv"
RETAILROCKET_ROWS = 2_771
BATCH_TASKS = ["clean", "validate", "matrices", "train", "evaluate", "gate", "score", "publish", "experiments"]
HEAVY_TASKS = {"clean", "validate", "matrices", "train", "evaluate", "score", "experiments"}  # experiments scores variants


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def migrated_airflow_home(tmp_path_factory) -> Path:
    """An Airflow home with a migrated metadata DB (and the freshrec_spark pool), made once."""
    settings = Settings(home=tmp_path_factory.mktemp("airflow-template"))
    seconds = prepare_metadata_db(settings)
    assert seconds > 0, "a fresh home must be migrated"
    assert prepare_metadata_db(settings) == 0.0, "a migrated DB must take the fast path"
    return settings.airflow_home


@pytest.fixture
def af_settings(settings: Settings, migrated_airflow_home: Path) -> Settings:
    """The per-test settings with a copy of the session's migrated Airflow DB (and a one-epoch,
    small model: these tests are about the wiring, test_models_* about the model)."""
    settings = settings.replace(model_epochs=1, model_dim=16)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    for item in migrated_airflow_home.iterdir():
        if item.is_file():
            shutil.copy2(item, settings.airflow_home / item.name)
    return settings


def _import_retailrocket(settings: Settings) -> None:
    from freshrec.importers import import_sources

    written = import_sources(settings, "retailrocket", [RETAILROCKET_SAMPLE])
    assert sum(n for _, n in written) == RETAILROCKET_ROWS


def _task_lines(out: str) -> dict[str, list[str]]:
    """The per-task lines of run_dag's summary: task_id -> [state, duration, error...]."""
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ") and line.strip()}


def _parquet_rows(path: Path) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet").count_rows()


# --------------------------------------------------------------------------------------------
# integrity
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dagbag(migrated_airflow_home):
    """The dags folder parsed in this process, with airflow_env set while Airflow is first
    imported (it reads its configuration then) and the DAG files run."""
    settings = Settings(home=migrated_airflow_home.parent)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in airflow_env(settings).items():
            mp.setenv(key, value)
        from airflow.dag_processing.dagbag import DagBag

        # Airflow 3 has no include_examples= any more: AIRFLOW__CORE__LOAD_EXAMPLES=False does it.
        return DagBag(dag_folder=str(DAGS_DIR), safe_mode=False)


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    dag_files = sorted(p.name for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
    loaded_files = sorted({Path(dag.fileloc).name for dag in dagbag.dags.values()})
    assert loaded_files == dag_files, "every file in dags/ defines at least one DAG"
    assert "freshrec_batch" in dagbag.dags
    assert not any(dag_id.startswith("example_") for dag_id in dagbag.dags)


def test_every_dag_has_tags_retries_and_docs(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        assert dag.catchup is False, f"{dag_id} must not backfill on its own"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            assert task.retry_delay.total_seconds() <= 300, f"{dag_id}.{task.task_id} retries too late"


def test_batch_dag_wiring(dagbag):
    from airflow.sdk import CronDataIntervalTimetable

    dag = dagbag.dags["freshrec_batch"]
    assert [t.task_id for t in dag.topological_sort()] == BATCH_TASKS
    # train and evaluate read the lake up to the newest event clean saw (its XCom)
    assert dag.task_dict["clean"].downstream_task_ids == {"validate", "train", "evaluate"}
    assert dag.task_dict["validate"].downstream_task_ids == {"matrices"}
    assert dag.task_dict["matrices"].downstream_task_ids == {"train"}
    assert dag.task_dict["train"].downstream_task_ids == {"evaluate", "gate"}
    assert dag.task_dict["evaluate"].downstream_task_ids == {"gate"}
    assert dag.task_dict["gate"].downstream_task_ids == {"score"}
    assert dag.task_dict["score"].downstream_task_ids == {"publish"}
    assert dag.task_dict["publish"].downstream_task_ids == {"experiments"}
    assert dag.task_dict["experiments"].downstream_task_ids == set()
    # A data interval (not a trigger timetable): tasks name their batch after it.
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 2 * * *"
    assert str(dag.timetable.timezone) in ("UTC", "Timezone('UTC')")
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert (task.pool == SPARK_POOL) == (task.task_id in HEAVY_TASKS), task.task_id
        assert task.retries == 2
    uris = {a.uri.rstrip("/") for t in dag.tasks for a in t.outlets}  # Airflow normalises "x://y" to "x://y/"
    assert {"freshrec://lake/events", "freshrec://features", "freshrec://recs", "freshrec://serving/live"} <= uris


def test_incremental_dag_wiring(dagbag):
    from airflow.sdk import DeltaDataIntervalTimetable

    dag = dagbag.dags["freshrec_incremental"]
    assert [t.task_id for t in dag.tasks] == ["microbatch"]
    assert isinstance(dag.timetable, DeltaDataIntervalTimetable)
    assert dag.timetable.delta.total_seconds() == Settings.load().microbatch_minutes * 60
    assert dag.max_active_runs == 1 and dag.catchup is False
    task = dag.task_dict["microbatch"]
    assert task.pool != SPARK_POOL, "a micro-batch must not queue behind training"
    assert task.retries >= 1 and task.retry_delay.total_seconds() <= 60
    assert {a.uri.rstrip("/") for a in task.outlets} == {"freshrec://lake/events", "freshrec://lake/quarantine",
                                                          "freshrec://serving/live"}


def test_model_refresh_dag_wiring(dagbag):
    from airflow.sdk import DeltaDataIntervalTimetable

    dag = dagbag.dags["freshrec_model_refresh"]
    assert [t.task_id for t in dag.tasks] == ["refresh"]
    assert isinstance(dag.timetable, DeltaDataIntervalTimetable)
    assert dag.timetable.delta.total_seconds() == Settings.load().model_refresh_minutes * 60 == 3600
    assert dag.max_active_runs == 1 and dag.catchup is False
    task = dag.task_dict["refresh"]
    assert task.pool == SPARK_POOL  # it re-scores every user when it publishes
    assert {a.uri.rstrip("/") for a in task.outlets} == {"freshrec://mlflow/models/freshrec", "freshrec://recs",
                                                          "freshrec://serving/live"}


def test_dags_folder_parses_fast_without_heavy_imports(af_settings):
    """Guards the rule that pyspark/torch/great_expectations are imported inside tasks only."""
    probe = (
        "import json, sys, time\n"
        "import airflow.settings\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "t = time.perf_counter()\n"
        f"bag = DagBag(dag_folder={str(DAGS_DIR)!r}, safe_mode=False)\n"
        "seconds = time.perf_counter() - t\n"
        "heavy = sorted(m for m in ('pyspark', 'torch', 'great_expectations', 'mlflow') if m in sys.modules)\n"
        "print(json.dumps({'seconds': seconds, 'heavy': heavy, 'errors': len(bag.import_errors), 'dags': len(bag.dags)}))\n"
    )
    env = {**os.environ, **airflow_env(af_settings)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["dags"] >= 1
    assert result["heavy"] == [], f"DAG files import {result['heavy']} at parse time"
    assert result["seconds"] < 2.0, f"parsing dags/ took {result['seconds']:.2f}s"


def test_settings_round_trip_through_the_environment(tmp_path):
    settings = Settings(home=tmp_path / "h", top_n=7, exclude_seen="none", max_quarantine_ratio=0.05,
                        event_weights={"view": 0.5, "search": 0.0, "add_to_cart": 2.0, "remove_from_cart": -1.0, "purchase": 9.0})
    env = settings_to_env(settings)
    assert env["FRESHREC_HOME"] == str((tmp_path / "h").resolve())
    assert "purchase=9.0" in env["FRESHREC_EVENT_WEIGHTS"]
    assert Settings.load(env=env, config_file=tmp_path / "none.toml") == settings.replace(home=(tmp_path / "h").resolve())
    af = airflow_env(settings)
    assert af["AIRFLOW_HOME"] == str((tmp_path / "h" / "airflow").resolve())
    assert af["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{(tmp_path / 'h' / 'airflow' / 'airflow.db').resolve()}"
    assert af["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_DIR)
    assert af["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"


def test_airflow_waits_for_a_busy_sqlite_metadata_db(af_settings, tmp_path):
    """Airflow's own engine gets the long busy timeout: a write that meets another process's write
    lock held for longer than Python's default 5 s waits for it instead of failing with "database
    is locked" (which the UI shows as "Database error" on Trigger)."""
    import sqlite3
    import threading

    env = {**os.environ, **airflow_env(af_settings)}
    db = af_settings.airflow_home / "airflow.db"
    assert db.is_file()
    locker = sqlite3.connect(db, timeout=1, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # the write lock, as a scheduler loop holds it
    release = threading.Timer(7, lambda: locker.execute("COMMIT"))
    release.start()
    script = ("from airflow import settings; from sqlalchemy import text;"
              "print(settings.engine.url.get_backend_name(), settings.engine.dialect.create_connect_args(settings.engine.url));"
              "s = settings.Session(); s.execute(text('CREATE TABLE IF NOT EXISTS freshrec_busy_probe (x INTEGER)')); s.commit()")
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    finally:
        release.join()
        locker.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started >= 6, "the write did not wait for the lock"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'freshrec_busy_probe'").fetchone() == (1,)


def test_unknown_dag_is_a_user_error(af_settings):
    from freshrec.errors import UserError

    with pytest.raises(UserError, match="unknown DAG"):
        run_dag(af_settings, "freshrec_nope")


# --------------------------------------------------------------------------------------------
# real runs
# --------------------------------------------------------------------------------------------
def test_batch_run_end_to_end_on_the_retailrocket_sample(af_settings, capfd):
    _import_retailrocket(af_settings)

    assert run_dag(af_settings, "freshrec_batch") is True

    out, err = capfd.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) <= len(BATCH_TASKS) + 3, f"expected a one-line-per-task summary, got:\n{out}"
    tasks = _task_lines(out)
    assert list(tasks) == BATCH_TASKS, out
    assert all(words[0] == "success" for words in tasks.values()), out
    assert "succeeded" in lines[-1]
    assert "Traceback" not in out + err and "INFO" not in out

    status = collect_status(af_settings)
    counts = status["counts"]
    assert counts["read"] == RETAILROCKET_ROWS
    assert counts["read"] == counts["clean"] + counts["quarantined"] + counts["duplicates"]
    assert counts["clean"] > 0.9 * RETAILROCKET_ROWS
    last = status["last_runs"][0]
    assert last["dag_id"] == "freshrec_batch" and last["state"] == "success" and last["finished_at"]
    assert last["run_id"].startswith("manual__")

    run = Ledger(af_settings.state_db).recent_runs(limit=1)[0]
    assert [t["task_id"] for t in run["detail"]["tasks"]] == BATCH_TASKS
    assert {t["state"] for t in run["detail"]["tasks"]} == {"success"}

    assert _parquet_rows(af_settings.events_path) == counts["clean"]
    for table in ("user_index", "item_index", "interactions", "sequences", "item_stats"):
        assert _parquet_rows(af_settings.features_dir / table) > 0, f"features/{table} is empty"
    assert _parquet_rows(af_settings.features_dir / "user_index") <= 1_500  # 1,500 sampled visitors
    # published: every known user has a list, and status shows what is live and why
    assert status["live_version"] and status["live_version"].startswith("batch-")
    assert status["model"]["gate"]["reason"]
    from freshrec.client import RecsClient

    client = RecsClient(af_settings.serving)
    users = __import__("pandas").read_parquet(af_settings.features_dir / "user_index")["user_id"]
    assert all(client.recs(u, n=5)["source"] == "personal" for u in users.head(100))

    # then the micro-batch DAG, the way `freshrec run incremental` runs it: a new shopper's
    # first events are cleaned into the lake and the shopper gets a list of their own
    from freshrec.landing import atomic_write_jsonl

    assert client.recs("dag-newcomer", n=5)["source"] == "fallback"
    item = client.recs(users.iloc[0], n=1)["items"][0]["item_id"]
    atomic_write_jsonl(af_settings.landing_events_dir, "mb-1.jsonl", [
        {"event_id": f"dag-mb-{i}", "ts": f"2015-09-18T10:0{i}:00Z", "user_id": "dag-newcomer", "event_type": "view",
         "item_id": item} for i in range(3)])
    capfd.readouterr()
    assert run_dag(af_settings, "freshrec_incremental") is True
    out, _ = capfd.readouterr()
    assert list(_task_lines(out)) == ["microbatch"] and "succeeded" in out, out
    status = collect_status(af_settings)
    assert status["counts"]["read"] == RETAILROCKET_ROWS + 3 and status["counts"]["clean"] == counts["clean"] + 3
    assert status["freshness"]["last_microbatch_at"] and status["freshness"]["users"] == 1
    assert status["last_runs"][0]["dag_id"] == "freshrec_incremental"
    assert client.recs("dag-newcomer", n=5)["source"] == "personal"
    assert _parquet_rows(af_settings.events_path) == counts["clean"] + 3

    # and the online refresh DAG, as `freshrec run refresh` runs it: whatever it decides (on this
    # sample the gate publishes a baseline, so there is no champion model to refresh), the run
    # succeeds and says why in freshrec status
    capfd.readouterr()
    assert run_dag(af_settings, "freshrec_model_refresh") is True
    out, _ = capfd.readouterr()
    assert list(_task_lines(out)) == ["refresh"] and "succeeded" in out, out
    refresh = collect_status(af_settings)["model"]["refresh"]
    assert refresh["refreshed"] or refresh["declined"], refresh
    assert collect_status(af_settings)["last_runs"][0]["dag_id"] == "freshrec_model_refresh"


def test_malformed_landing_fails_the_run_at_the_quality_gate(af_settings, capfd):
    from freshrec.landing import atomic_write_jsonl

    # Mostly malformed: 16 of 20 rows break the contract, far above FRESHREC_MAX_QUARANTINE_RATIO.
    good = [{"ts": f"2026-03-01T10:0{i}:00Z", "user_id": f"g{i}", "event_type": "view", "item_id": f"i{i}"} for i in range(4)]
    bad = [{"ts": "not-a-time", "user_id": f"u{i}", "event_type": "teleport", "item_id": "i1"} for i in range(16)]
    atomic_write_jsonl(af_settings.landing_events_dir, "mostly-malformed.jsonl", good + bad)

    assert run_dag(af_settings, "freshrec_batch") is False

    out, err = capfd.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) <= len(BATCH_TASKS) + 3, out
    tasks = _task_lines(out)
    assert [t for t, words in tasks.items() if words[0] == "failed"] == ["validate"], out
    failure = " ".join(tasks["validate"])
    assert "QualityGateError" in failure and "quarantine ratio" in failure
    assert tasks["clean"][0] == "success"
    assert all(tasks[t][0] == "upstream_failed" for t in BATCH_TASKS[2:]), out
    assert "failed" in lines[-1]
    assert "Traceback" not in out + err

    status = collect_status(af_settings)
    assert status["counts"] == {"read": 20, "clean": 4, "quarantined": 16, "duplicates": 0}
    assert status["live_version"] is None, "unfit data never reaches the serving store"
    last = status["last_runs"][0]
    assert last["state"] == "failed" and last["failed_task"] == "validate" and "QualityGateError" in last["error"]
    assert not (af_settings.features_dir / "interactions").exists()
    tries = {t["task_id"]: t["tries"] for t in Ledger(af_settings.state_db).recent_runs(limit=1)[0]["detail"]["tasks"]}
    assert tries["validate"] == 1, "a failed quality gate must not be retried"


def test_a_backfilled_interval_runs_and_leaves_the_newer_lists_live(af_settings, capfd):
    """What a backfill run is: the same DAG for a past data interval (here through ``airflow
    dags test`` with a past logical date; `airflow backfill create` hands the scheduler the same
    runs). Each run rebuilds from the whole landing zone, so counts never double, and an older
    interval never takes the live pointer from a newer one."""
    from datetime import datetime, timezone

    from freshrec.landing import atomic_write_jsonl
    from freshrec.serving import open_store

    atomic_write_jsonl(af_settings.landing_events_dir, "tiny.jsonl", [
        {"event_id": f"bf-{i}", "ts": f"2026-11-20T10:{i:02d}:00Z", "user_id": f"u{i % 3}", "event_type": "view",
         "item_id": f"i{i % 5}"} for i in range(12)])
    assert run_dag(af_settings, "freshrec_batch", logical_date=datetime(2026, 11, 30, 3, tzinfo=timezone.utc)) is True
    with open_store(af_settings.serving) as store:
        live = store.live_version()
    assert live.startswith("batch-20261130T020000Z-"), live  # named after the data interval's end

    assert run_dag(af_settings, "freshrec_batch", logical_date=datetime(2026, 11, 28, 3, tzinfo=timezone.utc)) is True
    out, _ = capfd.readouterr()
    assert out.count("succeeded") == 2, out
    with open_store(af_settings.serving) as store:
        assert store.live_version() == live
        assert not [v for v in store.versions() if v["version"].startswith("batch-20261128")]
    assert collect_status(af_settings)["counts"] == {"read": 12, "clean": 12, "quarantined": 0, "duplicates": 0}
    assert _parquet_rows(af_settings.events_path) == 12
    # `airflow dags test` names a run after when it ran (manual__<now>); the ledger keeps its
    # logical date beside it.
    runs = Ledger(af_settings.state_db).recent_runs(limit=5)
    assert all(r["run_key"].startswith("freshrec_batch:manual__") for r in runs[:2]), runs
    assert [r["detail"]["logical_date"][:10] for r in runs[:2]] == ["2026-11-28", "2026-11-30"], runs


@pytest.mark.airflow_cli
def test_airflow_cli_dags_test_runs_the_incremental_dag(af_settings):
    """``airflow dags test freshrec_incremental`` with airflow_env(): the path the Airflow docs
    show (``run_dag`` above starts the same command). Nothing is published yet, so the
    micro-batch cleans into the lake and skips the re-scoring."""
    _import_retailrocket(af_settings)
    env = {**os.environ, **airflow_env(af_settings)}
    airflow_bin = Path(sys.executable).with_name("airflow")
    for attempt in range(2):  # the second run finds nothing new
        proc = subprocess.run([str(airflow_bin), "dags", "test", "freshrec_incremental"], env=env, cwd=str(REPO),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        status = collect_status(af_settings)
        counts = status["counts"]
        assert counts["read"] == RETAILROCKET_ROWS, attempt
        assert counts["read"] == counts["clean"] + counts["quarantined"] + counts["duplicates"]
        assert _parquet_rows(af_settings.events_path) == counts["clean"]
        # The DAG's own on_success_callback recorded the run: the path UI-started runs take.
        assert status["last_runs"] and status["last_runs"][0]["dag_id"] == "freshrec_incremental"
        assert status["last_runs"][0]["state"] == "success"
    assert status["freshness"]["rows"] == RETAILROCKET_ROWS, "the first run did the work, the second found nothing"
