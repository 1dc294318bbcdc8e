"""The Airflow environment under FRESHREC_HOME: a SQLite metadata DB, the dags folder, and the
``freshrec_spark`` pool.

Airflow reads its configuration from the environment when it is first imported, so freshrec
never imports Airflow in the process that calls it: ``freshrec run`` and ``freshrec airflow``
start Airflow's own commands with :func:`airflow_env`. The same environment makes the real
Airflow CLI work on the same metadata DB::

    eval "$(.venv/bin/python -m freshrec.airflow.env env)"    # exports AIRFLOW_* and FRESHREC_*
    .venv/bin/python -m freshrec.airflow.env migrate          # metadata DB + freshrec_spark pool
    .venv/bin/airflow dags test freshrec_batch

which amounts to ``AIRFLOW_HOME=$FRESHREC_HOME/airflow``,
``AIRFLOW__CORE__DAGS_FOLDER=<repo>/dags``, ``AIRFLOW__CORE__LOAD_EXAMPLES=False``,
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:////abs/$FRESHREC_HOME/airflow/airflow.db``,
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS`` (a 60 s SQLite busy timeout, see
:data:`SQLITE_CONNECT_ARGS`), ``AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING`` plus ``FRESHREC_HOME`` (absolute) and every other
setting as ``FRESHREC_*`` (all paths absolute), so the tasks' ``Settings.load()`` sees exactly
the settings of the caller.

``AIRFLOW__CORE__UNIT_TEST_MODE`` is deliberately not set: it loads Airflow's own test config
(example DAGs on, its own dags folder), which is the opposite of what is wanted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from freshrec.errors import UserError
from freshrec.fileio import atomic_write_text
from freshrec.settings import Settings, settings_to_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO_ROOT / "dags"

_DB_MARKER = "airflow.db.freshrec-migrated"

# Every Airflow process (scheduler, dag processor, api-server, task runners) writes to the one
# SQLite file. Python's default busy timeout of 5 s is shorter than a scheduler's write burst on a
# loaded 2-core machine, and a UI "Trigger" that meets such a burst fails with "Database error".
# Airflow imports these by name (``[database] sql_alchemy_connect_args``); a write now waits up to
# SQLITE_BUSY_TIMEOUT_S for the lock instead.
SQLITE_BUSY_TIMEOUT_S = 60
SQLITE_CONNECT_ARGS = {"timeout": SQLITE_BUSY_TIMEOUT_S}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": SQLITE_BUSY_TIMEOUT_S}


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow's commands on the metadata DB of ``settings``: SQLite under
    FRESHREC_HOME, or the server database of ``airflow_db_url`` (``freshrec stack``)."""
    airflow_home = settings.airflow_home.resolve()
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
    }
    if settings.airflow_db_url:
        # Both connections on the one URL: Airflow would derive the async one as
        # postgresql+asyncpg, a driver freshrec does not install (psycopg 3 does both).
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = settings.airflow_db_url
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = settings.airflow_db_url
    else:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{airflow_home / 'airflow.db'}"
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "freshrec.airflow.env.SQLITE_CONNECT_ARGS"
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = "freshrec.airflow.env.SQLITE_CONNECT_ARGS_ASYNC"
    env.update(settings_to_env(settings))
    return env


def path_with_bin(path: str | None) -> str:
    """``path`` (a PATH value) with this interpreter's bin dir first: Airflow's commands start
    ``airflow`` (and the tasks ``freshrec``) by name, and must find this environment's."""
    bin_dir = str(Path(sys.executable).parent)
    rest = [p for p in (path or os.defpath).split(os.pathsep) if p and p != bin_dir]
    return os.pathsep.join([bin_dir, *rest])


def airflow_bin() -> Path:
    """The ``airflow`` command of this interpreter's environment."""
    path = Path(sys.executable).parent / "airflow"
    if not path.is_file():
        raise UserError(f"{path} not found; run `make install` first")
    return path


# --------------------------------------------------------------------------------------------
# Metadata DB
# --------------------------------------------------------------------------------------------
def _migrated_with() -> str:
    """The marker's content: the Airflow version the DB was created or migrated with."""
    from importlib.metadata import version

    return f"{version('apache-airflow')}\n"


def metadata_db_current(settings: Settings) -> bool:
    """True when the SQLite metadata DB exists and was migrated by this Airflow version (no
    import of Airflow: a marker next to the DB records the version, so the usual check costs one
    stat). A server DB (``airflow_db_url``) is never taken as current: migrating it is cheap
    next to starting a stack, and another machine may have changed it."""
    airflow_home = settings.airflow_home.resolve()
    marker = airflow_home / _DB_MARKER
    return not settings.airflow_db_url and (airflow_home / "airflow.db").is_file() and marker.is_file() and marker.read_text() == _migrated_with()


def migrate_in_child(settings: Settings, output: IO | int | None = None) -> None:
    """``python -m freshrec.airflow.env migrate`` for ``settings`` in a child process: create or
    migrate the metadata DB when it is not current, and size the ``freshrec_spark`` pool.

    The child's output goes to ``output`` (default: this process's stderr). Raises UserError
    when it fails.
    """
    env = {**os.environ, **airflow_env(settings)}
    proc = subprocess.run([sys.executable, "-m", "freshrec.airflow.env", "migrate"], env=env,
                          stdin=subprocess.DEVNULL, stdout=output if output is not None else sys.stderr,
                          stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise UserError(f"could not create or migrate the Airflow metadata DB under {settings.airflow_home} "
                        f"(python -m freshrec.airflow.env migrate exited with {proc.returncode})")


def prepare_metadata_db(settings: Settings, output: IO | int | None = None) -> float:
    """Create or migrate ``settings``' metadata DB (and the pool) in a child process unless it
    is current; the seconds spent, 0.0 when it was current (then no child is started)."""
    if metadata_db_current(settings):
        return 0.0
    started = time.monotonic()
    migrate_in_child(settings, output)
    return time.monotonic() - started


def _ensure_spark_pool(settings: Settings) -> int:
    """Create or resize the ``freshrec_spark`` pool for ``settings``; returns its slots."""
    from airflow.models.pool import Pool

    from freshrec.airflow.runtime import SPARK_POOL, spark_pool_slots

    slots = spark_pool_slots(settings)
    Pool.create_or_update_pool(
        name=SPARK_POOL,
        slots=slots,
        description=f"freshrec Spark jobs: {slots} at a time (sized for {settings.spark_master})",
        include_deferred=False,
    )
    return slots


def _migrate(settings: Settings) -> float:
    """The ``migrate`` command, in the process Airflow was configured for: ``initdb`` (creates
    from the ORM when new, runs migrations otherwise) when the DB is not current, then the
    pool, sized for this machine and these settings every time. Returns the seconds spent."""
    started = time.monotonic()
    current = metadata_db_current(settings)
    if not current:
        from airflow.utils.db import initdb

        initdb()
    _ensure_spark_pool(settings)
    if not current and not settings.airflow_db_url:
        atomic_write_text(settings.airflow_home.resolve() / _DB_MARKER, _migrated_with())
    return time.monotonic() - started


def _main(argv: list[str]) -> int:
    """``python -m freshrec.airflow.env env|migrate``: set up a shell for the Airflow CLI."""
    import shlex

    if len(argv) != 1 or argv[0] not in ("env", "migrate"):
        print("usage: python -m freshrec.airflow.env env|migrate", file=sys.stderr)
        return 2
    settings = Settings.load()
    settings.ensure_dirs()
    env = airflow_env(settings)
    if argv[0] == "env":
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        return 0
    # This process exists to run Airflow: configure it before its first import.
    os.environ.update(env)
    seconds = _migrate(settings)
    print(f"airflow metadata DB ready at {env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']} ({seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
