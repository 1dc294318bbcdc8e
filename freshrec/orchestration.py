"""Run the freshrec DAGs in-process through Airflow (``dag.test()``) on a SQLite metadata DB.

Two halves live here:

* helpers the DAG files call at run time (:func:`run_step`, :func:`batch_id_from_context`,
  :func:`record_task_failure`, :func:`record_dag_run`). They import nothing heavy, so DAG
  files that import this module still parse fast;
* :func:`run_dag`, which ``freshrec run batch|incremental`` calls.

Airflow reads its configuration from the environment when it is first imported, so
:func:`run_dag` sets :func:`airflow_env` before importing anything from ``airflow``. The same
environment makes the real Airflow CLI work on the same metadata DB::

    eval "$(.venv/bin/python -m freshrec.orchestration env)"    # exports AIRFLOW_* and FRESHREC_*
    .venv/bin/python -m freshrec.orchestration migrate          # once: metadata DB + freshrec_spark pool
    .venv/bin/airflow dags test freshrec_batch

which amounts to ``AIRFLOW_HOME=$FRESHREC_HOME/airflow``,
``AIRFLOW__CORE__DAGS_FOLDER=<repo>/dags``, ``AIRFLOW__CORE__LOAD_EXAMPLES=False``,
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:////abs/$FRESHREC_HOME/airflow/airflow.db``,
``AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING`` plus ``FRESHREC_HOME`` (absolute) and every other
setting as ``FRESHREC_*`` (all paths absolute), so the tasks' ``Settings.load()`` sees exactly
the settings of the caller.

``AIRFLOW__CORE__UNIT_TEST_MODE`` is deliberately not set: it loads Airflow's own test config
(example DAGs on, its own dags folder), which is the opposite of what is wanted here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from freshrec.errors import QualityGateError, UserError
from freshrec.settings import Settings, settings_to_env

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_DIR = REPO_ROOT / "dags"
KNOWN_DAGS = ("freshrec_batch", "freshrec_incremental")

SPARK_POOL = "freshrec_spark"
SPARK_POOL_SLOTS = 1  # on a Spark cluster master (the cluster schedules the cores), unless set
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY = timedelta(seconds=30)

_DB_MARKER = "airflow.db.freshrec-migrated"
_FINISHED = ("success", "failed", "skipped", "upstream_failed", "removed")


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow (in-process and CLI) on a SQLite metadata DB under FRESHREC_HOME."""
    airflow_home = settings.airflow_home.resolve()
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
    }
    env.update(settings_to_env(settings))
    return env


@contextlib.contextmanager
def _patched_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` for the duration of a run and restore the caller's environment after it."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _configure_airflow(env: Mapping[str, str]) -> None:
    """Point an already-imported Airflow at this run's metadata DB.

    The first import of ``airflow`` reads the environment; a second ``run_dag`` in the same
    process (tests, notebooks) with another FRESHREC_HOME must rebuild the ORM by hand.
    """
    import airflow.settings as af_settings  # first import configures everything from env

    if af_settings.SQL_ALCHEMY_CONN != env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]:
        af_settings.configure_vars()
        af_settings.reconfigure_orm()
    for name in ("airflow", "airflow.task", "airflow.processor", "py.warnings", "alembic", "sqlalchemy", "py4j"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def airflow_context(settings: Settings) -> Iterator[dict[str, str]]:
    """Airflow configured for ``settings`` (env set, ORM pointed at its SQLite DB) inside the block.

    The caller's environment is restored afterwards; Airflow stays imported.
    """
    env = airflow_env(settings)
    with _patched_environ(env):
        _configure_airflow(env)
        yield env


def prepare_metadata_db(settings: Settings) -> float:
    """Create or migrate ``settings``' Airflow metadata DB; seconds spent (0.0 when already current)."""
    settings = settings.replace(home=settings.home.resolve())
    settings.ensure_dirs()
    with airflow_context(settings):
        return ensure_metadata_db(settings)


# --------------------------------------------------------------------------------------------
# Metadata DB
# --------------------------------------------------------------------------------------------
def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


def ensure_metadata_db(settings: Settings) -> float:
    """Create or migrate the Airflow metadata DB once; returns the seconds spent (0.0 when current).

    A marker next to the DB records the Airflow version it was migrated with, so the usual
    call costs one stat. Must be called with :func:`airflow_env` in effect.
    """
    airflow_home = settings.airflow_home.resolve()
    db = airflow_home / "airflow.db"
    marker = airflow_home / _DB_MARKER
    wanted = f"{_airflow_version()}\n"
    if db.is_file() and marker.is_file() and marker.read_text() == wanted:
        return 0.0
    airflow_home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    from airflow.utils.db import initdb  # creates from the ORM when new, runs migrations otherwise

    initdb()
    ensure_spark_pool(settings)
    marker.write_text(wanted)
    return time.monotonic() - started


def _memory_bytes(text: str) -> int:
    """Spark's memory strings: ``4g``, ``512m``, ``1t``, plain bytes."""
    text = text.strip().lower().removesuffix("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}.get(text[-1:], 1)
    return int(float(text.rstrip("kmgt")) * scale)


def spark_pool_slots(settings: Settings, cpus: int | None = None, memory_bytes: int | None = None) -> int:
    """How many Spark tasks may run at once (the ``freshrec_spark`` pool's slots).

    FRESHREC_SPARK_POOL_SLOTS when set. On a local master every task starts its own driver JVM
    on this machine, so the pool is sized for it: two cores and one and a half times
    ``spark_driver_memory`` (the JVM plus its Python workers) per task, at least one. On a
    cluster master the cluster places the work: one slot, as a team would start.
    """
    if settings.spark_pool_slots > 0:
        return settings.spark_pool_slots
    if not settings.spark_master.startswith("local"):
        return SPARK_POOL_SLOTS
    cpus = cpus or os.cpu_count() or 1
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_task = 1.5 * _memory_bytes(settings.spark_driver_memory)
    return max(1, min(cpus // 2, int(memory_bytes // per_task)))


def ensure_spark_pool(settings: Settings) -> int:
    """Create or resize the ``freshrec_spark`` pool for ``settings``; returns its slots."""
    from airflow.models.pool import Pool

    slots = spark_pool_slots(settings)
    Pool.create_or_update_pool(
        name=SPARK_POOL,
        slots=slots,
        description=f"freshrec Spark jobs: {slots} at a time (sized for {settings.spark_master})",
        include_deferred=False,
    )
    return slots


# --------------------------------------------------------------------------------------------
# `freshrec airflow`: the Airflow 3 UI + scheduler on one machine (`airflow standalone`)
# --------------------------------------------------------------------------------------------
ADMIN_USER = "admin"
PASSWORDS_FILE_NAME = "simple_auth_manager_passwords.json.generated"
STANDALONE_STOP_TIMEOUT_S = 30.0


def _connect_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def standalone_url(host: str, port: int) -> str:
    return f"http://{_connect_host(host)}:{port}"


def passwords_file(settings: Settings) -> Path:
    """Where the simple auth manager writes the generated admin password (``--require-login``)."""
    return settings.airflow_home.resolve() / PASSWORDS_FILE_NAME


def standalone_env(settings: Settings, host: str = "127.0.0.1", port: int = 8080, require_login: bool = False,
                   base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment for ``airflow standalone`` on ``settings``' SQLite metadata DB.

    ``base_env`` (default: this process's environment) plus :func:`airflow_env` plus:

    * ``PATH`` with this interpreter's bin dir first: standalone starts ``airflow scheduler``,
      ``airflow api-server``, ... by name;
    * ``AIRFLOW__API__HOST``/``AIRFLOW__API__PORT`` for the api-server, which serves the UI, the
      REST API (``/api/v2``) and the execution API the tasks talk to;
    * ``AIRFLOW__CORE__EXECUTION_API_SERVER_URL`` pointing at that port (Airflow assumes
      ``http://localhost:8080/execution/`` otherwise, and tasks started on any other port fail);
    * everyone is admin without a login, or, with ``require_login``, one user ``admin`` whose
      password Airflow generates into :func:`passwords_file`;
    * DAGs start paused (``AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True`` unless the caller
      set it), so the daily batch does not start by itself.

    The executor and auth manager are left to standalone, which picks the LocalExecutor and
    the simple auth manager. Pure: reads neither the environment (when ``base_env`` is given)
    nor the disk.
    """
    base = dict(os.environ if base_env is None else base_env)
    env = {**base, **airflow_env(settings)}
    bin_dir = str(Path(sys.executable).parent)
    rest = [p for p in base.get("PATH", os.defpath).split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *rest])
    env["AIRFLOW__API__HOST"] = host
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"{standalone_url(host, port)}/execution/"
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    if require_login:
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "False"
        # Exactly "admin:admin" is what makes standalone generate (and keep) the password.
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{ADMIN_USER}:admin"
        env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", None)
    else:
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
    return env


def standalone_banner(settings: Settings, host: str, port: int, require_login: bool) -> str:
    """The one line ``freshrec airflow`` prints: URL, how to log in, how to stop."""
    if require_login:
        login = f"log in as {ADMIN_USER} with the password in {passwords_file(settings)} (generated on first start)"
    else:
        login = "no login needed (everyone is admin)"
    return (f"freshrec: Airflow UI on {standalone_url(host, port)}, {login}; "
            f"DAGs start paused; Ctrl-C stops it")


def _check_port_free(host: str, port: int) -> None:
    import socket

    bind_host = "" if host in ("0.0.0.0", "::") else host.strip("[]")
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another port with --port") from None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_process_group(pgid: int, first: int = 15, timeout: float = STANDALONE_STOP_TIMEOUT_S) -> None:
    """Signal a process group, wait up to ``timeout`` seconds for it to empty, then SIGKILL it."""
    import signal

    _signal_group(pgid, first)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def run_standalone(settings: Settings, host: str = "127.0.0.1", port: int = 8080, require_login: bool = False) -> int:
    """``freshrec airflow``: run ``airflow standalone`` until Ctrl-C/SIGTERM; returns an exit code.

    Creates or migrates the metadata DB and the ``freshrec_spark`` pool first, then starts
    standalone in a process group of its own (scheduler, dag-processor, triggerer, api-server
    and the task processes they start all live in it), so the terminal's Ctrl-C reaches only
    this process, which stops the group in order:

    1. SIGINT or SIGTERM here -> SIGINT to standalone, its own Ctrl-C path: it terminates each
       component, which finishes its loop (about 5 s when idle);
    2. the group still alive ``STANDALONE_STOP_TIMEOUT_S`` later (a long task) -> SIGTERM to the
       whole group, SIGKILL 10 s after that; a second Ctrl-C sends SIGKILL at once;
    3. once standalone has exited, whatever is left of the group (a Spark JVM) gets the same
       SIGTERM-then-SIGKILL, so nothing outlives the command.
    """
    import signal
    import subprocess

    settings = settings.replace(home=settings.home.resolve())
    settings.ensure_dirs()
    _check_port_free(host, port)
    airflow_bin = Path(sys.executable).parent / "airflow"
    if not airflow_bin.is_file():
        raise UserError(f"{airflow_bin} not found; run `make install` first")
    migrate_s = prepare_metadata_db(settings)
    if migrate_s:
        print(f"freshrec: airflow metadata DB created/migrated in {migrate_s:.1f}s", file=sys.stderr)
    with airflow_context(settings):
        ensure_spark_pool(settings)  # the machine or the settings may have changed since
    env = standalone_env(settings, host, port, require_login)
    print(standalone_banner(settings, host, port, require_login), file=sys.stderr, flush=True)
    proc = subprocess.Popen([str(airflow_bin), "standalone"], env=env, cwd=str(settings.airflow_home),
                            start_new_session=True)
    pgid = proc.pid  # start_new_session: the child leads a new session and process group
    stopping: dict[str, float] = {}

    def _on_signal(_signum: int, _frame: Any) -> None:
        if "since" in stopping:  # second signal: no more patience
            _signal_group(pgid, signal.SIGKILL)
            return
        stopping["since"] = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    escalated = 0
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                since = stopping.get("since")
                waited = time.monotonic() - since if since is not None else 0.0
                if since is not None and escalated == 0 and waited > STANDALONE_STOP_TIMEOUT_S:
                    _signal_group(pgid, signal.SIGTERM)
                    escalated = 1
                elif escalated == 1 and waited > STANDALONE_STOP_TIMEOUT_S + 10:
                    _signal_group(pgid, signal.SIGKILL)
                    escalated = 2
    finally:
        # Whatever is left of the group (a task process, a Spark JVM, or all of it after an
        # exception of our own) goes with it.
        stop_process_group(pgid, signal.SIGTERM, timeout=10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "since" in stopping:
        print("freshrec: Airflow stopped", file=sys.stderr)
        return 0
    print(f"freshrec: airflow standalone exited with code {rc}", file=sys.stderr)
    return 0 if rc == 0 else 1


# --------------------------------------------------------------------------------------------
# Helpers the DAG files call at run time
# --------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """XCom needs JSON; steps may return Paths, numpy ints or datetimes."""
    return json.loads(json.dumps(value, default=str)) if value is not None else {}


def run_step(step: Callable[..., Any], **kwargs: Any) -> Any:
    """Call a freshrec step with settings from the environment, as every task does.

    Errors the data or the user must fix (a failed quality gate, a bad input) fail the task
    at once: retrying them only repeats the same answer minutes later.
    """
    from airflow.sdk.exceptions import AirflowFailException

    settings = Settings.load()
    try:
        result = step(settings, **kwargs)
    except (QualityGateError, UserError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    return _json_safe(result)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def batch_id_from_context(context: Mapping[str, Any]) -> str:
    """A batch id that names the run's data, e.g. ``batch-20260301T020000Z``.

    Derived from the data interval, so rerunning the same interval reuses the same id (and
    overwrites the same partitions) instead of adding a second copy. Runs without a data
    interval fall back to the sanitised run_id.
    """
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or "freshrec"
    prefix = dag_id.removeprefix("freshrec_")
    end = context.get("data_interval_end")
    if end is not None:
        end = end.astimezone(timezone.utc)
        return f"{prefix}-{end:%Y%m%dT%H%M%SZ}"
    return f"{prefix}-{_safe_id(str(context.get('run_id') or 'manual'))}"


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error (see the task log)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    # AirflowFailException from run_step already names the original error type.
    if not re.match(r"^[A-Za-z_]+(Error|Exception)\b", text):
        text = f"{type(exc).__name__}: {text}"
    return text[:1000]


def _run_key(dag_id: str, run_id: str) -> str:
    return f"{dag_id}:{run_id}"


def record_task_failure(context: Mapping[str, Any]) -> None:
    """Task ``on_failure_callback``: keep which task failed and why in the freshrec ledger.

    Works wherever the task ran (dag.test, a Celery worker): it writes the ledger under
    FRESHREC_HOME, never the Airflow metadata DB. Never raises: a callback must not mask the
    task's own error.
    """
    try:
        from freshrec.ledger import Ledger, utcnow_iso

        ti = context.get("ti") or context.get("task_instance")
        dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "unknown")
        run_id = context.get("run_id") or getattr(ti, "run_id", "unknown")
        Ledger(Settings.load().state_db).record_run(
            run_key=_run_key(dag_id, run_id), kind=dag_id, state="failed", finished_at=utcnow_iso(),
            detail={"failed_task": getattr(ti, "task_id", None), "error": _one_line(context.get("exception"))},
        )
    except Exception:  # noqa: BLE001 - see docstring
        log.warning("could not record the task failure in the freshrec ledger", exc_info=True)


def _iso(value: Any) -> str | None:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds") if isinstance(value, datetime) else None


def record_dag_run(context: Mapping[str, Any]) -> None:
    """DAG ``on_success_callback``/``on_failure_callback``: keep the run in the freshrec ledger.

    This is what makes ``freshrec status`` show runs started from the Airflow UI or scheduler;
    ``run_dag`` records its own runs too (same key, so one row per run). Never raises.
    """
    try:
        from freshrec.ledger import Ledger, utcnow_iso

        dag_run = context.get("dag_run")
        state = getattr(dag_run, "state", None)
        state = str(getattr(state, "value", state) or ("success" if context.get("reason") == "success" else "failed"))
        Ledger(Settings.load().state_db).record_run(
            run_key=_run_key(dag_run.dag_id, dag_run.run_id), kind=dag_run.dag_id, state=state,
            started_at=_iso(getattr(dag_run, "start_date", None)),
            finished_at=_iso(getattr(dag_run, "end_date", None)) or utcnow_iso(),
        )
    except Exception:  # noqa: BLE001 - see docstring
        log.warning("could not record the DAG run in the freshrec ledger", exc_info=True)


# --------------------------------------------------------------------------------------------
# run_dag
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send everything Airflow, Spark's JVM and py4j print to ``log_path`` for the block.

    File descriptors 1 and 2 are redirected, not just sys.stdout: the JVM that Spark starts in
    the first task inherits them and keeps them for its lifetime. The Python-level streams and
    any logging handler bound to them are swapped too, because a host (pytest, a notebook) may
    have replaced sys.stdout with an object that does not write to fd 1.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    old_out, old_err = sys.stdout, sys.stderr
    for stream in (old_out, old_err):
        with contextlib.suppress(Exception):
            stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    # Streams over fds 1 and 2 themselves (never closed): a logger that caches one of them
    # during the run writes to the real terminal again once the fds are restored.
    fd_out = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    fd_err = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    replacement = {id(old_out): fd_out, id(old_err): fd_err}
    for std, fd_stream in ((sys.__stdout__, fd_out), (sys.__stderr__, fd_err)):
        if std is not None:
            replacement.setdefault(id(std), fd_stream)
    swapped: list[tuple[logging.StreamHandler, Any]] = []
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    with open(log_path, "ab", buffering=0) as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            sys.stdout, sys.stderr = fd_out, fd_err
            for logger in loggers:
                for handler in logger.handlers:
                    if type(handler) is logging.StreamHandler and id(handler.stream) in replacement:
                        swapped.append((handler, handler.setStream(replacement[id(handler.stream)])))
            yield
        finally:
            for handler, stream in swapped:
                handler.setStream(stream)
            sys.stdout, sys.stderr = old_out, old_err
            for stream in (fd_out, fd_err):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)


def _load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR), safe_mode=False)
    dag = bag.dags.get(dag_id)
    if dag is None:
        errors = "; ".join(f"{Path(f).name}: {str(e).strip().splitlines()[-1]}" for f, e in bag.import_errors.items())
        if errors:
            raise UserError(f"DAG {dag_id} could not be loaded from {DAGS_DIR}: {errors}")
        raise UserError(f"DAG {dag_id} is not defined in {DAGS_DIR} (yet)")
    return dag


def _task_rows(dag, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Task states of one run in the DAG's topological order."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)).all()
        by_id = {ti.task_id: {"task_id": ti.task_id, "state": str(ti.state.value if hasattr(ti.state, "value") else ti.state),
                              "duration_s": round(float(ti.duration), 1) if ti.duration is not None else None,
                              "tries": ti.try_number} for ti in tis}
    order = [t.task_id for t in dag.topological_sort()] if hasattr(dag, "topological_sort") else list(dag.task_dict)
    return [by_id.get(tid, {"task_id": tid, "state": "none", "duration_s": None, "tries": 0}) for tid in order]


def _dag_run_state(dag_id: str, run_id: str) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    return str(getattr(state, "value", state) or "unknown")


def _ledger_detail(settings: Settings, run_key: str) -> dict[str, Any]:
    from freshrec.ledger import Ledger

    for row in Ledger(settings.state_db).recent_runs(limit=100):
        if row["run_key"] == run_key:
            return dict(row.get("detail") or {})
    return {}


def _format_summary(dag_id: str, run_id: str, state: str, tasks: list[dict[str, Any]], detail: Mapping[str, Any],
                    elapsed: float, log_path: Path) -> str:
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
    verdict = "succeeded" if state == "success" else f"{state}"
    lines.append(f"{dag_id} {verdict} in {elapsed:.1f}s (log: {log_path})")
    return "\n".join(lines)


def run_dag(settings: Settings, dag_id: str, logical_date: datetime | None = None) -> bool:
    """Run one DAG end to end in this process with ``dag.test()``; True iff the run succeeded.

    ``logical_date`` (default now) picks the data interval, as ``airflow dags test DAG DATE``
    does: a past date re-runs (backfills) that interval.

    Prints one line per task and a verdict; Airflow's and Spark's own output go to a log file
    under ``$FRESHREC_HOME/airflow/logs/freshrec/``. The run is recorded in the freshrec
    ledger (``runs`` table) for ``freshrec status``.
    """
    if dag_id not in KNOWN_DAGS:
        raise UserError(f"unknown DAG {dag_id!r}; expected one of {', '.join(KNOWN_DAGS)}")
    from freshrec.ledger import Ledger, utcnow_iso

    settings = settings.replace(home=settings.home.resolve())
    settings.ensure_dirs()
    env = airflow_env(settings)
    ledger = Ledger(settings.state_db)
    if logical_date is None:
        logical_date = datetime.now(timezone.utc).replace(microsecond=0)
    elif logical_date.tzinfo is None:
        logical_date = logical_date.replace(tzinfo=timezone.utc)
    log_path = settings.airflow_home / "logs" / "freshrec" / dag_id / f"{logical_date:%Y%m%dT%H%M%SZ}.log"
    started_at, started = utcnow_iso(), time.monotonic()
    run_id: str | None = None
    state, tasks, failure = "failed", [], ""

    with _patched_environ(env):
        try:
            with _output_to(log_path):
                _configure_airflow(env)
                migrate_s = ensure_metadata_db(settings)
                if migrate_s:
                    log.warning("airflow metadata DB created/migrated in %.1fs", migrate_s)
                dag = _load_dag(dag_id)
                dr = dag.test(logical_date=logical_date, run_after=logical_date)
                run_id = dr.run_id
                state = _dag_run_state(dag_id, run_id)
                tasks = _task_rows(dag, dag_id, run_id)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line for the user; the traceback is in the log
            failure = _one_line(exc)
            with contextlib.suppress(Exception), open(log_path, "a", encoding="utf-8") as fh:
                import traceback

                traceback.print_exc(file=fh)

    elapsed = time.monotonic() - started
    run_id = run_id or f"manual__{logical_date.isoformat()}"
    run_key = _run_key(dag_id, run_id)
    detail = _ledger_detail(settings, run_key)  # failed_task/error written by record_task_failure
    if failure:
        detail.setdefault("error", failure)
    if state != "success" and "failed_task" not in detail:
        first_failed = next((t["task_id"] for t in tasks if t["state"] == "failed"), None)
        if first_failed:
            detail["failed_task"] = first_failed
            detail.setdefault("error", f"see {log_path}")
    detail.update({"tasks": tasks, "log": str(log_path), "elapsed_s": round(elapsed, 1)})
    ledger.record_run(run_key=run_key, kind=dag_id, state=state, started_at=started_at, finished_at=utcnow_iso(),
                      detail=detail)
    if failure and not tasks:
        print(f"{dag_id} failed before any task ran: {failure} (log: {log_path})")
    else:
        print(_format_summary(dag_id, run_id, state, tasks, detail, elapsed, log_path))
    return state == "success"


def _main(argv: list[str]) -> int:
    """``python -m freshrec.orchestration env|migrate``: set up a shell for the Airflow CLI."""
    import shlex

    if len(argv) != 1 or argv[0] not in ("env", "migrate"):
        print("usage: python -m freshrec.orchestration env|migrate", file=sys.stderr)
        return 2
    settings = Settings.load()
    settings.ensure_dirs()
    env = airflow_env(settings)
    if argv[0] == "env":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        return 0
    seconds = prepare_metadata_db(settings)
    print(f"airflow metadata DB ready at {env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']} ({seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
