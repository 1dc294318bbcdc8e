"""``freshrec run batch|incremental``: one DAG run through the real ``airflow dags test``.

Airflow runs in child processes only, each started with :func:`~freshrec.airflow.env.airflow_env`:

1. ``python -m freshrec.airflow.env migrate`` when the metadata DB is not current (a marker
   next to it makes the usual check one stat, and no child);
2. ``airflow dags test <dag_id> <logical_date>``: the run. Its output (Airflow's, the tasks',
   Spark's) goes to ``$FRESHREC_HOME/airflow/logs/freshrec/<dag_id>/<date>.log``, and one
   line per finished task to stderr while the run goes;
3. ``python -m freshrec.airflow.local report <dag_id> <logical_date>``: the run's id, state and
   task states, read back from the metadata DB. It starts beside ``dags test`` and imports
   Airflow while the run goes, so its start costs no wall time.

``airflow dags test`` runs the tasks inside its own process and writes no per-task log files:
the Airflow UI's Logs tab has nothing to show for these runs; their logs are in the file above.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping

from freshrec.airflow.env import airflow_bin, airflow_env, prepare_metadata_db
from freshrec.airflow.progress import Progress, format_rows, quarantine_warning, run_rows
from freshrec.airflow.runtime import TASK_LOGS_ENV, one_line, run_key
from freshrec.errors import UserError
from freshrec.incremental import BUSY
from freshrec.settings import Settings

KNOWN_DAGS = ("freshrec_batch", "freshrec_incremental", "freshrec_model_refresh")

# `dags test` logs these at INFO ([DAG TEST] from the DAG's test loop, new_state from the
# in-process execution API when a task instance reaches its state).
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_TASK_END = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_NEW_STATE = re.compile(r"\bnew_state=(\w+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------------------------
# The run, in child processes
# --------------------------------------------------------------------------------------------
class _StartLock:
    """Held from before the metadata DB is prepared until the run's first task starts: by then
    ``airflow dags test`` has synced the DAG and created its run. Two ``freshrec run`` started
    together would otherwise both insert the same DAG into a fresh SQLite metadata DB."""

    def __init__(self, path: Path) -> None:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = open(path, "a+")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the lock
            self._fh = None


class _Follower:
    """Follows ``airflow dags test``'s output: every line to the log, each task's start and
    end to the progress display, and the last line kept for a run that fails before any task."""

    def __init__(self, progress: Progress, sink: IO[bytes], started: _StartLock | None = None):
        self.progress, self.sink, self.started = progress, sink, started
        self.task: str | None = None
        self.state: str | None = None
        self.since = 0.0
        self.last_line = ""

    def feed(self, raw: bytes) -> None:
        self.sink.write(raw)
        line = _ANSI.sub("", raw.decode("utf-8", "replace")).strip()
        if line:
            self.last_line = line
        if match := _TASK_START.search(line):
            if self.started is not None:
                self.started.release()
            self.task, self.state, self.since = match[1], None, time.monotonic()
            self.progress.task_started(match[1])
        elif match := _TASK_END.search(line):
            self.progress.task_finished(match[1], self.state, time.monotonic() - self.since)
            self.task = None
        elif self.task is not None and (match := _NEW_STATE.search(line)):
            self.state = match[1]


def _dags_test(dag_id: str, logical_date: datetime, env: Mapping[str, str], sink: IO[bytes],
               progress: Progress, started: _StartLock | None = None) -> tuple[int, str]:
    """``airflow dags test`` with its output followed; its exit code and last line."""
    # INFO: the [DAG TEST] lines the progress follows, and the tasks' own logs in the log file,
    # the only place they are written for a `dags test` run.
    env = {**env, "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    follower = _Follower(progress, sink, started)
    with subprocess.Popen([str(airflow_bin()), "dags", "test", dag_id, logical_date.isoformat()], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        for raw in proc.stdout:
            follower.feed(raw)
    return proc.returncode, follower.last_line


def _reporter(dag_id: str, logical_date: datetime, env: Mapping[str, str], sink: IO[bytes]) -> subprocess.Popen:
    """The ``report`` child, started now; it reads the run once :func:`_read_back` says so."""
    return subprocess.Popen([sys.executable, "-m", "freshrec.airflow.local", "report", dag_id, logical_date.isoformat()],
                            env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sink)


def _read_back(reporter: subprocess.Popen) -> dict[str, Any]:
    """The run's id, state and tasks, from the reporter told that the run has ended."""
    out, _ = reporter.communicate(b"go\n", timeout=600)
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.startswith("{")]
    if reporter.returncode != 0 or not lines:
        raise RuntimeError(f"could not read the run back from the Airflow metadata DB (exit {reporter.returncode})")
    return json.loads(lines[-1])


def _run_in_children(settings: Settings, dag_id: str, logical_date: datetime, log_path: Path,
                     progress: Progress) -> dict[str, Any]:
    """Metadata DB, run, read-back; ``{run_id, state, tasks, failure}`` (failure: one line
    when the run could not be started or read back, its traceback in the log)."""
    env = {**os.environ, **airflow_env(settings), TASK_LOGS_ENV: "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as sink:
        started = _StartLock(settings.airflow_home / ".freshrec-run-start.lock")
        try:
            prepare_metadata_db(settings, sink)
            with _reporter(dag_id, logical_date, env, sink) as reporter:
                rc, last_line = _dags_test(dag_id, logical_date, env, sink, progress, started)
                run = _read_back(reporter)
        except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback is in the log
            sink.write(traceback.format_exc().encode())
            return {"run_id": None, "state": "failed", "tasks": [], "failure": one_line(exc)}
        finally:
            started.release()
    if rc != 0 and not run["tasks"]:
        run["failure"] = last_line[-500:] or f"airflow dags test exited with {rc}"
    return run


# --------------------------------------------------------------------------------------------
# Summary and ledger
# --------------------------------------------------------------------------------------------
def _ledger_detail(settings: Settings, key: str) -> dict[str, Any]:
    from freshrec.ledger import Ledger

    for row in Ledger(settings.state_db).recent_runs(limit=100):
        if row["run_key"] == key:
            return dict(row.get("detail") or {})
    return {}


def _run_detail(settings: Settings, key: str, run: Mapping[str, Any], log_path: Path) -> dict[str, Any]:
    """The ledger detail of a run: failed_task/error as record_task_failure wrote them (or the
    first failed task), the tasks, the log, the data interval's logical date."""
    detail = _ledger_detail(settings, key)
    if run.get("failure"):
        detail.setdefault("error", run["failure"])
    if run["state"] != "success" and "failed_task" not in detail:
        first_failed = next((t["task_id"] for t in run["tasks"] if t["state"] == "failed"), None)
        if first_failed:
            detail["failed_task"] = first_failed
            detail.setdefault("error", f"see {log_path}")
    return detail


def _format_summary(dag_id: str, run_id: str, state: str, tasks: list[dict[str, Any]], detail: Mapping[str, Any],
                    elapsed: float, log_path: Path, rows: Mapping[str, Any] | None = None) -> str:
    width = max([len(t["task_id"]) for t in tasks] + [8])
    lines = [f"{dag_id}  {run_id}"]
    for t in tasks:
        dur = f"{t['duration_s']:.1f}s" if t["duration_s"] is not None else "-"
        line = f"  {t['task_id']:<{width}}  {t['state']:<15}  {dur:>8}"
        if (t.get("tries") or 0) > 1:
            line += f"  ({t['tries']} tries)"
        if t["task_id"] == detail.get("failed_task") and detail.get("error"):
            line += f"  {detail['error']}"
        lines.append(line)
    if rows is not None:
        lines.append(format_rows(rows))
    verdict = "succeeded" if state == "success" else f"{state}"
    lines.append(f"{dag_id} {verdict} in {elapsed:.1f}s (log: {log_path})")
    return "\n".join(lines)


def _utc(logical_date: datetime | None) -> datetime:
    if logical_date is None:  # to the microsecond: two runs started in the same second are two runs
        return datetime.now(timezone.utc)
    return logical_date if logical_date.tzinfo is not None else logical_date.replace(tzinfo=timezone.utc)


def run_dag(settings: Settings, dag_id: str, logical_date: datetime | None = None) -> bool:
    """Run one DAG end to end with ``airflow dags test``; True iff the run succeeded.

    ``logical_date`` (default now) picks the data interval: a past date re-runs (backfills)
    that interval. Airflow names the run after when it ran (``manual__<now>``); the ledger
    keeps the logical date beside it.

    Shows the running task and a line per task as it ends (:mod:`freshrec.airflow.progress`),
    then one line per task, the run's rows (a warning on stderr when many were quarantined) and
    a verdict; Airflow's and Spark's own output go to a log file
    under ``$FRESHREC_HOME/airflow/logs/freshrec/``. The run is recorded in the freshrec
    ledger (``runs`` table) for ``freshrec status``.
    """
    if dag_id not in KNOWN_DAGS:
        raise UserError(f"unknown DAG {dag_id!r}; expected one of {', '.join(KNOWN_DAGS)}")
    from freshrec.intake import landing_files
    from freshrec.lake import run_lock

    airflow_bin()  # a missing install is the user's to fix, not a failed run
    if not landing_files(settings.landing_events_dir):  # seconds, not a run that fails in clean
        raise UserError(f"no landing files under {settings.landing_events_dir}: "
                        "run `freshrec import` or `freshrec generate` first")
    settings = settings.replace(home=settings.home.resolve())
    settings.ensure_dirs()
    with run_lock(settings, f"run-{dag_id}") as held:
        if not held:  # a second run of the same DAG would find nothing to do that the first is not doing
            print(f"{dag_id}: {BUSY} on {settings.home}; this one did nothing (the next run takes whatever is new)",
                  flush=True)
            return True
        return _run(settings, dag_id, _utc(logical_date))


def _run(settings: Settings, dag_id: str, logical_date: datetime) -> bool:
    from freshrec.ledger import Ledger, utcnow_iso

    log_path = settings.airflow_home / "logs" / "freshrec" / dag_id / f"{logical_date:%Y%m%dT%H%M%S.%fZ}.log"
    started_at, started = utcnow_iso(), time.monotonic()
    progress = Progress(dag_id, log_path)
    try:
        run = _run_in_children(settings, dag_id, logical_date, log_path, progress)
    finally:
        progress.close()
    elapsed = time.monotonic() - started
    run_id = run["run_id"] or f"manual__{logical_date.isoformat()}"
    key = run_key(dag_id, run_id)
    detail = _run_detail(settings, key, run, log_path)
    detail.update({"tasks": run["tasks"], "log": str(log_path), "elapsed_s": round(elapsed, 1),
                   "logical_date": logical_date.isoformat()})
    Ledger(settings.state_db).record_run(run_key=key, kind=dag_id, state=run["state"], started_at=started_at,
                                         finished_at=utcnow_iso(), detail=detail)
    if run.get("failure") and not run["tasks"]:
        print(f"{dag_id} failed before any task ran: {run['failure']} (log: {log_path})")
        return run["state"] == "success"
    # the run's rows sit above the verdict, which stays the last line
    rows = run_rows(settings, dag_id, started_at, run["tasks"])
    summary = _format_summary(dag_id, run_id, run["state"], run["tasks"], detail, elapsed, log_path, rows).splitlines()
    if dag_id == "freshrec_model_refresh":
        from freshrec.refresh import outcome_line

        if (line := outcome_line(settings, since=started_at)) is not None:
            summary.insert(len(summary) - 1, line)  # the verdict stays the last line
    print("\n".join(summary), flush=True)
    if rows is not None and (warning := quarantine_warning(rows)):
        print(warning, file=sys.stderr, flush=True)
    return run["state"] == "success"


# --------------------------------------------------------------------------------------------
# `report`: the read-back child
# --------------------------------------------------------------------------------------------
def _state(value: Any) -> str:
    return str(getattr(value, "value", value) or "none")


def _report(dag_id: str, logical_date: datetime, go: IO[str]) -> dict[str, Any] | None:
    """In a process configured by airflow_env: the run of ``dag_id`` at ``logical_date`` (one
    per date: ``dags test`` replaces an earlier one) and its tasks in the DAG's topological
    order (of the DAG as ``dags test`` serialized it).

    Airflow is imported first, then the query waits for a line on ``go`` (None at end of
    file: the parent gave up on the run)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not go.readline():
        return None
    with create_session() as session:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date))
        if dr is None:
            return {"run_id": None, "state": "failed", "tasks": []}
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                         TaskInstance.run_id == dr.run_id)).all()
        by_id = {ti.task_id: {"task_id": ti.task_id, "state": _state(ti.state),
                              "duration_s": round(float(ti.duration), 1) if ti.duration is not None else None,
                              "tries": ti.try_number} for ti in tis}
        dag = SerializedDagModel.get_dag(dag_id, session=session)
        run_id, state = dr.run_id, _state(dr.state)
    order = [t.task_id for t in dag.task_group.topological_sort()] if dag is not None else sorted(by_id)
    tasks = [by_id.get(tid, {"task_id": tid, "state": "none", "duration_s": None, "tries": 0}) for tid in order]
    return {"run_id": run_id, "state": state, "tasks": tasks}


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "report":
        print("usage: python -m freshrec.airflow.local report DAG_ID LOGICAL_DATE", file=sys.stderr)
        return 2
    report = _report(argv[1], datetime.fromisoformat(argv[2]), sys.stdin)
    if report is None:
        return 1
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    code = _main(sys.argv[1:])
    # The parent waits for this exit; a read-only child has nothing to clean up, and Airflow's
    # exit handlers and the teardown of its modules take most of a second.
    os._exit(code)
