"""``freshrec stack up|down|status|env``: the production-shaped stack on one machine, no Docker.

The same services as ``docker-compose.yml`` (a test keeps the two in step), started as local
processes from this environment:

* ``spark-master`` and ``spark-worker-1..N``: Spark standalone, from the installed pyspark's own
  ``bin/spark-class``;
* ``mlflow``: the MLflow tracking server on PostgreSQL (database ``NAME_mlflow``), serving the
  artifacts from ``$FRESHREC_HOME/stack/mlartifacts``;
* ``airflow-init`` (one shot: migrate the metadata DB ``NAME_airflow``, size the pool), then
  ``airflow-apiserver``, ``airflow-scheduler``, ``airflow-dag-processor``,
  ``airflow-triggerer`` and ``airflow-worker`` (CeleryExecutor, broker RabbitMQ, results in
  the metadata DB, queue ``NAME``);
* ``freshrec-api``: ``freshrec serve`` on the Redis serving store.

PostgreSQL, RabbitMQ and Redis are used as they run (``stack_postgres_url``,
``stack_broker_url``, ``stack_serving_url``); ``up`` checks them first and creates the two
databases when missing. Every process runs in a session of its own with its output in
``$FRESHREC_HOME/stack/logs/<service>.log``; ``stack/run/<service>.json`` records its pid and
start, so ``down`` never signals a process that merely reused the pid.

Ports come from settings (``stack_*_port``); the internal ones follow them: Spark worker i's
web UI on ``stack_spark_ui_port + i``, and the scheduler's health check, the Celery worker's
and the triggerer's log servers on ``stack_airflow_port + 1, + 2, + 3``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from freshrec.errors import UserError
from freshrec.settings import Settings

HEALTH_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 20.0  # SIGTERM -> SIGKILL, per service (a Celery worker finishes its task first)

# Airflow settings that do not depend on where the services run; docker-compose.yml sets the
# same values (tests/unit/test_stack.py checks it).
AIRFLOW_FIXED_ENV = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    # Local install: no login, everyone is admin (as `freshrec airflow`). Change for anything shared.
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
}


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack."""

    name: str  # as in docker-compose.yml (spark-worker-N: the compose service spark-worker)
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False, hash=False, compare=False)
    url: str = ""  # what a user opens, if anything

    @property
    def compose_name(self) -> str:
        return "spark-worker" if self.name.startswith("spark-worker-") else self.name


@dataclass(frozen=True)
class StackPlan:
    """Everything ``up`` starts, in order, and how the stack's own processes are configured."""

    settings: Settings  # what every freshrec process of the stack runs with
    env: Mapping[str, str] = field(repr=False)  # the environment of every service (AIRFLOW_*, FRESHREC_*, ...)
    services: tuple[Service, ...]
    databases: tuple[str, ...]  # created on stack_postgres_url's server when missing
    spark_ui: str
    airflow_url: str
    mlflow_url: str
    api_url: str

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)


def stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def _database_url(server_url: str, database: str, driver: str = "postgresql+psycopg") -> str:
    """``server_url`` (``postgresql://user@host:port/db``) pointed at ``database``, with ``driver``."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise UserError(f"FRESHREC_STACK_POSTGRES_URL must be a postgresql:// URL, got {server_url!r}")
    return urlunsplit((driver, parts.netloc, f"/{database}", parts.query, ""))


def _secret(settings: Settings) -> str:
    """The stack's shared secret (Airflow's JWT and api secret keys), made once and kept."""
    path = stack_dir(settings) / "secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def plan_stack(settings: Settings, secret: str = "", base_env: Mapping[str, str] | None = None) -> StackPlan:
    """The stack for ``settings``: its services, their commands and their environment.

    Pure apart from reading ``base_env`` (default: this process's environment): nothing is
    started, checked or written.
    """
    from freshrec.airflow.env import airflow_env, path_with_bin

    name = settings.stack_name
    host = "127.0.0.1"
    spark_master = f"spark://{host}:{settings.stack_spark_port}"
    mlflow_url = f"http://{host}:{settings.stack_mlflow_port}"
    airflow_url = f"http://{host}:{settings.stack_airflow_port}"
    airflow_db = _database_url(settings.stack_postgres_url, f"{name}_airflow")
    mlflow_db = _database_url(settings.stack_postgres_url, f"{name}_mlflow")
    run_settings = settings.replace(spark_master=spark_master, mlflow_tracking_uri=mlflow_url,
                                    serving_url=settings.stack_serving_url, airflow_db_url=airflow_db)
    bin_dir = Path(sys.executable).parent
    base = dict(os.environ if base_env is None else base_env)
    env = {
        **base,
        **airflow_env(run_settings),
        **AIRFLOW_FIXED_ENV,
        "PATH": path_with_bin(base.get("PATH")),
        "MLFLOW_TRACKING_URI": mlflow_url,  # it would win over FRESHREC_MLFLOW_TRACKING_URI
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(settings.stack_airflow_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url}/execution/",
        "AIRFLOW__API__SECRET_KEY": secret,
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__CELERY__BROKER_URL": settings.stack_broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.stack_celery_concurrency),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": name,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(settings.stack_airflow_port + 1),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.stack_airflow_port + 2),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.stack_airflow_port + 3),
        "SPARK_HOME": str(_spark_home()),
        "SPARK_LOCAL_IP": host,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    env.pop("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", None)
    spark_class = str(_spark_home() / "bin" / "spark-class")
    work = stack_dir(settings).resolve()
    airflow = str(bin_dir / "airflow")
    services = [
        Service("spark-master", (spark_class, "org.apache.spark.deploy.master.Master", "--host", host,
                                 "--port", str(settings.stack_spark_port), "--webui-port", str(settings.stack_spark_ui_port)),
                env, f"http://{host}:{settings.stack_spark_ui_port}"),
        *(Service(f"spark-worker-{i}", (spark_class, "org.apache.spark.deploy.worker.Worker", "--host", host,
                                        "--cores", str(settings.stack_spark_worker_cores),
                                        "--memory", settings.stack_spark_worker_memory,
                                        "--webui-port", str(settings.stack_spark_ui_port + i),
                                        "--work-dir", str(work / "spark-work"), spark_master), env)
          for i in range(1, settings.stack_spark_workers + 1)),
        Service("mlflow", (str(bin_dir / "mlflow"), "server", "--backend-store-uri", mlflow_db,
                           "--artifacts-destination", str(work / "mlartifacts"), "--serve-artifacts",
                           "--host", host, "--port", str(settings.stack_mlflow_port), "--workers", "1"),
                env, mlflow_url),
        Service("airflow-apiserver", (airflow, "api-server", "--port", str(settings.stack_airflow_port)), env, airflow_url),
        Service("airflow-scheduler", (airflow, "scheduler"), env),
        Service("airflow-dag-processor", (airflow, "dag-processor"), env),
        Service("airflow-triggerer", (airflow, "triggerer"), env),
        Service("airflow-worker", (airflow, "celery", "worker", "--queues", name,
                                   "--concurrency", str(settings.stack_celery_concurrency),
                                   "--celery-hostname", f"{name}@%h"), env),
        Service("freshrec-api", (str(bin_dir / "freshrec"), "serve", "--host", host, "--port", str(settings.stack_api_port)),
                env, f"http://{host}:{settings.stack_api_port}"),
    ]
    return StackPlan(settings=run_settings, env=env, services=tuple(services),
                     databases=(f"{name}_airflow", f"{name}_mlflow"),
                     spark_ui=f"http://{host}:{settings.stack_spark_ui_port}", airflow_url=airflow_url,
                     mlflow_url=mlflow_url, api_url=f"http://{host}:{settings.stack_api_port}")


def _spark_home() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.origin:
        raise UserError("pyspark is not installed; run `make install` first")
    return Path(spec.origin).parent


# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------
def _get_json(url: str) -> dict:
    import httpx

    response = httpx.get(url, timeout=HEALTH_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _why_unhealthy(plan: StackPlan, service: Service) -> str | None:
    """None when ``service`` answers as it should, else a short reason."""
    import httpx

    try:
        if service.name == "spark-master":
            state = _get_json(f"{plan.spark_ui}/json/")
            return None if state.get("status") == "ALIVE" else f"master status {state.get('status')}"
        if service.name.startswith("spark-worker-"):
            port = int(service.argv[service.argv.index("--webui-port") + 1])
            workers = _get_json(f"{plan.spark_ui}/json/").get("workers", [])
            alive = [w for w in workers if w.get("state") == "ALIVE" and str(w.get("webuiaddress", "")).endswith(f":{port}")]
            return None if alive else "not registered with the master"
        if service.name == "mlflow":
            httpx.get(f"{plan.mlflow_url}/health", timeout=HEALTH_TIMEOUT_S).raise_for_status()
            return None
        if service.name.startswith("airflow-") and service.name != "airflow-worker":
            health = _get_json(f"{plan.airflow_url}/api/v2/monitor/health")
            part = {"airflow-apiserver": "metadatabase", "airflow-scheduler": "scheduler",
                    "airflow-dag-processor": "dag_processor", "airflow-triggerer": "triggerer"}[service.name]
            status = (health.get(part) or {}).get("status")
            return None if status == "healthy" else f"{part} {status or 'unknown'}"
        if service.name == "airflow-worker":
            return _celery_ping(plan)
        if service.name == "freshrec-api":
            # 503 until the first batch publishes: the server answers, which is what is checked here.
            response = httpx.get(f"{plan.api_url}/healthz", timeout=HEALTH_TIMEOUT_S)
            return None if response.status_code in (200, 503) else f"/healthz {response.status_code}"
    except (httpx.HTTPError, ValueError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    raise AssertionError(service.name)


def _celery_ping(plan: StackPlan) -> str | None:
    """The Celery worker answers a ping through the broker."""
    from celery import Celery

    app = Celery(broker=plan.env["AIRFLOW__CELERY__BROKER_URL"])
    try:
        replies = app.control.ping(timeout=1.0)
    except Exception as exc:  # noqa: BLE001 - the broker's own errors (amqp, socket) vary
        return f"broker: {type(exc).__name__}: {exc}"[:200]
    finally:
        app.close()
    prefix = f"{plan.settings.stack_name}@"
    return None if any(name.startswith(prefix) for reply in replies for name in reply) else "no worker answered a ping"


def _check_reachable(url: str, what: str, setting: str) -> None:
    parts = urlsplit(url)
    default_port = {"amqp": 5672, "redis": 6379, "postgresql": 5432, "postgres": 5432}.get(parts.scheme.split("+")[0], 0)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as exc:
        raise UserError(f"{what} is not reachable at {host}:{port} ({exc.strerror or exc}); start it or set {setting}") from None


def _ensure_databases(settings: Settings, names: tuple[str, ...]) -> list[str]:
    """Create the stack's databases when missing; the names created."""
    import psycopg

    created = []
    try:
        server = urlsplit(settings.stack_postgres_url)
        with psycopg.connect(_database_url(settings.stack_postgres_url, server.path.lstrip("/") or "postgres", driver="postgresql"),
                             autocommit=True) as conn:
            for name in names:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
    except psycopg.Error as exc:
        raise UserError(f"cannot create the stack's databases on {settings.stack_postgres_url}: {exc}".strip()) from None
    return created


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
def _record_path(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / "run" / f"{name}.json"


def log_path(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / "logs" / f"{name}.log"


def _start_mark(pid: int) -> str:
    """What tells this process from a later one with the same pid: its start in clock ticks
    since boot (``/proc/<pid>/stat``), which, unlike ``psutil``'s wall-clock start, does not
    move when the machine's clock is stepped; elsewhere the wall-clock start."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return "ticks:" + stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        import psutil

        return f"epoch:{psutil.Process(pid).create_time():.0f}"


def _running(settings: Settings, name: str):
    """The psutil.Process of ``name`` when its recorded process still runs, else None."""
    import psutil

    path = _record_path(settings, name)
    try:
        record = json.loads(path.read_text())
        proc = psutil.Process(record["pid"])
        if _start_mark(proc.pid) == record["started"] and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    return None


def _start(settings: Settings, service: Service) -> None:
    log = log_path(settings, service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    record = _record_path(settings, service.name)
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(service.argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(service.argv, env=dict(service.env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(stack_dir(settings)))
    record.write_text(json.dumps({"pid": proc.pid, "started": _start_mark(proc.pid), "argv": list(service.argv)}))


def _stop(settings: Settings, name: str) -> bool:
    """Stop ``name`` and every process it started; True when something was running."""
    from freshrec.airflow.standalone import ProcessTree

    proc = _running(settings, name)
    if proc is not None:
        ProcessTree(proc).stop(timeout=STOP_TIMEOUT_S)
    _record_path(settings, name).unlink(missing_ok=True)
    return proc is not None


def _wait_healthy(plan: StackPlan, services: list[Service], deadline: float, say: Callable[[str], None]) -> None:
    pending = list(services)
    why: dict[str, str | None] = {}
    while pending:
        for service in list(pending):
            if _running(plan.settings, service.name) is None:
                raise UserError(f"{service.name} exited while starting; see {log_path(plan.settings, service.name)}:\n"
                                + _tail(log_path(plan.settings, service.name)))
            why[service.name] = _why_unhealthy(plan, service)
            if why[service.name] is None:
                pending.remove(service)
                say(f"  {service.name:<22} healthy" + (f"  {service.url}" if service.url else ""))
        if pending and time.monotonic() > deadline:
            raise UserError("not healthy in time: " + "; ".join(f"{s.name} ({why.get(s.name)}, log {log_path(plan.settings, s.name)})"
                                                                 for s in pending))
        if pending:
            time.sleep(1.0)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def stack_plan(settings: Settings) -> StackPlan:
    return plan_stack(settings, secret=_secret(settings))


GROUPS = ("spark", "mlflow", "airflow", "freshrec")  # `up --only`: services whose name starts with one


def stack_up(settings: Settings, timeout_s: float = 300.0, say: Callable[[str], None] = print,
             only: Sequence[str] = GROUPS) -> StackPlan:
    """Start what is not running, in order, each healthy before what needs it starts.

    ``only``: the groups of services to start (:data:`GROUPS`), e.g. ``("spark",)`` for a Spark
    cluster alone; Airflow needs the others and brings them.
    """
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        raise UserError(f"unknown service group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    groups = set(GROUPS) if "airflow" in only else set(only)
    settings.ensure_dirs()
    plan = stack_plan(settings)
    if groups & {"mlflow", "airflow"}:
        _check_reachable(settings.stack_postgres_url, "PostgreSQL", "FRESHREC_STACK_POSTGRES_URL")
    if "airflow" in groups:
        _check_reachable(settings.stack_broker_url, "The Celery broker (RabbitMQ)", "FRESHREC_STACK_BROKER_URL")
    if groups & {"freshrec", "airflow"}:
        _check_reachable(settings.stack_serving_url, "The serving store", "FRESHREC_STACK_SERVING_URL")
    if groups & {"mlflow", "airflow"}:
        for name in _ensure_databases(settings, plan.databases):
            say(f"  created database {name}")
    deadline = time.monotonic() + timeout_s
    stages = [["spark-master"], [s.name for s in plan.services if s.name.startswith("spark-worker-")] + ["mlflow"],
              "airflow-init", ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                               "airflow-worker", "freshrec-api"]]
    for stage in stages:
        if stage == "airflow-init":
            if "airflow" in groups:
                _airflow_init(plan, say)
            continue
        services = [plan.service(n) for n in stage if n.split("-")[0] in groups]
        for service in services:
            if _running(settings, service.name) is None:
                _start(settings, service)
        _wait_healthy(plan, services, deadline, say)
    return plan


def _airflow_init(plan: StackPlan, say: Callable[[str], None]) -> None:
    """Migrate the metadata DB and size the freshrec_spark pool (what compose's airflow-init does)."""
    log = log_path(plan.settings, "airflow-init")
    started = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.run([sys.executable, "-m", "freshrec.airflow.env", "migrate"], env=dict(plan.env),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise UserError(f"airflow-init failed (exit {proc.returncode}); see {log}:\n{_tail(log)}")
    say(f"  {'airflow-init':<22} done ({time.monotonic() - started:.0f} s)")


def stack_down(settings: Settings, say: Callable[[str], None] = print) -> int:
    """Stop every service, the last started first; how many were running."""
    plan = stack_plan(settings)
    stopped = 0
    for service in reversed(plan.services):
        if _stop(settings, service.name):
            stopped += 1
            say(f"  {service.name:<22} stopped")
    return stopped


def stack_status(settings: Settings) -> list[dict]:
    """One row per service: name, state (healthy, unhealthy, stopped), pid, url, why."""
    plan = stack_plan(settings)
    rows = []
    for service in plan.services:
        proc = _running(settings, service.name)
        why = _why_unhealthy(plan, service) if proc is not None else None
        state = "stopped" if proc is None else ("healthy" if why is None else "unhealthy")
        rows.append({"service": service.name, "state": state, "pid": proc.pid if proc else None,
                     "url": service.url or None, "why": why, "log": str(log_path(settings, service.name))})
    return rows


def stack_env_lines(settings: Settings) -> list[str]:
    """``export`` lines that point a shell's freshrec (and airflow, mlflow) commands at the stack."""
    plan = stack_plan(settings)
    keys = sorted(k for k in plan.env if k.startswith(("FRESHREC_", "AIRFLOW", "MLFLOW_", "SPARK_", "PYSPARK_")))
    return [f"export {k}={shlex.quote(plan.env[k])}" for k in keys]
