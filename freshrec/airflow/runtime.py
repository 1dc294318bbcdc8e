"""What the DAG files import at run time: the step runner, batch ids, the ledger callbacks and
the pool and retry constants.

DAG files import this module at parse time, so it imports nothing but the standard library
and ``freshrec.errors`` at module level: Settings, the ledger and Airflow come in inside the
functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from freshrec.errors import QualityGateError, UserError

if TYPE_CHECKING:
    from freshrec.settings import Settings

log = logging.getLogger(__name__)

SPARK_POOL = "freshrec_spark"
SPARK_POOL_SLOTS = 1  # on a Spark cluster master (the cluster schedules the cores), unless set
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY = timedelta(seconds=30)


# --------------------------------------------------------------------------------------------
# The Spark pool
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Tasks
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

    from freshrec.settings import Settings

    settings = Settings.load()
    with _task_log_file(step.__name__):
        try:
            result = step(settings, **kwargs)
        except (QualityGateError, UserError) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    return _json_safe(result)


# `freshrec run` sets this in the environment of its `airflow dags test` child (freshrec.airflow.local)
TASK_LOGS_ENV = "FRESHREC_WRITE_TASK_LOGS"


class _JsonLines(logging.Handler):
    """Records as the JSON lines Airflow 3 writes to its task log files (and its UI reads)."""

    def __init__(self, fh) -> None:
        super().__init__(logging.INFO)
        self.fh = fh

    def emit(self, record: logging.LogRecord) -> None:
        line = {"timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        if record.exc_info:
            line["event"] += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        self.fh.write(json.dumps(line, default=str) + "\n")
        self.fh.flush()


def task_log_path(base_log_folder: str | Path, template: str, ti: Any) -> Path:
    """Where Airflow's UI looks for the log of task instance ``ti`` (logging.log_filename_template)."""
    import jinja2

    return Path(base_log_folder) / jinja2.Template(template).render(ti=ti, try_number=ti.try_number)


@contextlib.contextmanager
def _task_log_file(step_name: str) -> Iterator[None]:
    """Under `airflow dags test` no supervisor writes the task's log file, so the UI's Logs tab
    says "Log file not found" for runs of `freshrec run`. There (TASK_LOGS_ENV set), the freshrec
    loggers' records of the step go to that file. A worker's run writes its own file, untouched."""
    if os.environ.get(TASK_LOGS_ENV) != "1":
        yield
        return
    from airflow.configuration import conf
    from airflow.sdk import get_current_context

    ti = get_current_context()["ti"]
    path = task_log_path(conf.get("logging", "base_log_folder"), conf.get("logging", "log_filename_template"), ti)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("freshrec")
    level = logger.level
    with path.open("a", encoding="utf-8") as fh:
        handler = _JsonLines(fh)
        logger.addHandler(handler)
        logger.setLevel(min(level or logging.INFO, logging.INFO))
        logger.info("%s: %s starting (freshrec run, through airflow dags test)", ti.task_id, step_name)
        try:
            yield
        except BaseException:
            logger.exception("%s: %s failed", ti.task_id, step_name)
            raise
        else:
            logger.info("%s: %s finished", ti.task_id, step_name)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


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


# --------------------------------------------------------------------------------------------
# The freshrec ledger
# --------------------------------------------------------------------------------------------
def one_line(exc: BaseException | None) -> str:
    """An error as one line for the ledger and the run summary, its type first."""
    if exc is None:
        return "unknown error (see the task log)"
    text = " ".join(str(exc).split()) or type(exc).__name__
    # AirflowFailException from run_step already names the original error type.
    if not re.match(r"^[A-Za-z_]+(Error|Exception)\b", text):
        text = f"{type(exc).__name__}: {text}"
    return text[:1000]


def run_key(dag_id: str, run_id: str) -> str:
    """The ledger's key of a DAG run: one row per run, whoever records it."""
    return f"{dag_id}:{run_id}"


def _record(state_of: Callable[[Mapping[str, Any]], dict[str, Any]], context: Mapping[str, Any], what: str) -> None:
    """Write the ledger row ``state_of(context)`` describes; log, never raise: a callback must
    not mask the task's own error."""
    try:
        from freshrec.ledger import Ledger
        from freshrec.settings import Settings

        Ledger(Settings.load().state_db).record_run(**state_of(context))
    except Exception:  # noqa: BLE001 - see docstring
        log.warning("could not record the %s in the freshrec ledger", what, exc_info=True)


def _failed_task(context: Mapping[str, Any]) -> dict[str, Any]:
    from freshrec.ledger import utcnow_iso

    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "unknown")
    run_id = context.get("run_id") or getattr(ti, "run_id", "unknown")
    return {"run_key": run_key(dag_id, run_id), "kind": dag_id, "state": "failed", "finished_at": utcnow_iso(),
            "detail": {"failed_task": getattr(ti, "task_id", None), "error": one_line(context.get("exception"))}}


def record_task_failure(context: Mapping[str, Any]) -> None:
    """Task ``on_failure_callback``: keep which task failed and why in the freshrec ledger.

    Works wherever the task ran (``airflow dags test``, a Celery worker): it writes the ledger
    under FRESHREC_HOME, never the Airflow metadata DB. Never raises.
    """
    _record(_failed_task, context, "task failure")


def _iso(value: Any) -> str | None:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds") if isinstance(value, datetime) else None


def _finished_run(context: Mapping[str, Any]) -> dict[str, Any]:
    from freshrec.ledger import utcnow_iso

    dag_run = context.get("dag_run")
    state = getattr(dag_run, "state", None)
    state = str(getattr(state, "value", state) or ("success" if context.get("reason") == "success" else "failed"))
    return {"run_key": run_key(dag_run.dag_id, dag_run.run_id), "kind": dag_run.dag_id, "state": state,
            "started_at": _iso(getattr(dag_run, "start_date", None)),
            "finished_at": _iso(getattr(dag_run, "end_date", None)) or utcnow_iso()}


def record_dag_run(context: Mapping[str, Any]) -> None:
    """DAG ``on_success_callback``/``on_failure_callback``: keep the run in the freshrec ledger.

    This is what makes ``freshrec status`` show runs started from the Airflow UI or scheduler;
    ``run_dag`` records its own runs too (same key, so one row per run). Never raises.
    """
    _record(_finished_run, context, "DAG run")


def dag_defaults(*, retries: int, retry_delay: timedelta, execution_timeout: timedelta) -> dict[str, Any]:
    """What every freshrec DAG passes to DAG(): its tasks' defaults and the callbacks that fill the run ledger."""
    return {
        "default_args": {
            "owner": "freshrec",
            "retries": retries,
            "retry_delay": retry_delay,
            "execution_timeout": execution_timeout,
            "on_failure_callback": record_task_failure,
        },
        "on_success_callback": record_dag_run,
        "on_failure_callback": record_dag_run,
    }
