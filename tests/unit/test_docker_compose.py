"""docker-compose.yml and the Dockerfile describe a stack that can actually come up.

No Docker engine is needed: the compose file is parsed (YAML anchors and merge keys resolved,
``${VAR:-default}`` interpolated with its defaults) and checked for the properties that make
``docker compose up`` work: services, healthchecks, dependency conditions, shared settings,
hostnames in URLs, ports, mounts, and the image recipe.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from freshrec.airflow.runtime import SPARK_POOL, SPARK_POOL_SLOTS
from freshrec.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

AIRFLOW_LONG_RUNNING = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}
AIRFLOW_SERVICES = AIRFLOW_LONG_RUNNING | {"airflow-init"}
# Services that run freshrec code (the CLI, the API, Airflow tasks, Spark executors).
FRESHREC_SERVICES = AIRFLOW_SERVICES | {"freshrec-api", "freshrec-cli", "spark-worker"}
ONE_SHOT = {"airflow-init", "freshrec-cli"}
EXPECTED = {"postgres", "redis", "rabbitmq", "mlflow", "spark-master", "spark-worker"} | AIRFLOW_SERVICES | {"freshrec-api", "freshrec-cli"}
# The port each service listens on inside the network; URLs that name the service must use it.
LISTEN_PORTS = {"postgres": {5432}, "redis": {6379}, "rabbitmq": {5672}, "mlflow": {5000}, "spark-master": {7077, 8080},
                "airflow-apiserver": {8080}, "freshrec-api": {8000}}
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "amqp": 5672, "http": 80, "https": 443}
# SQLAlchemy driver -> the distribution that provides it (must be in requirements.lock).
DRIVER_DISTS = {"psycopg": "psycopg", "psycopg_async": "psycopg", "psycopg2": "psycopg2", "asyncpg": "asyncpg"}
REQUIRED_FRESHREC_ENV = ("FRESHREC_HOME", "FRESHREC_SERVING_URL", "MLFLOW_TRACKING_URI")
REQUIRED_AIRFLOW_ENV = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__DAGS_FOLDER",
                        "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL")
URL_RE = re.compile(r"\b([a-z][a-z0-9+.-]*)://[^\s\"',]+")
INTERPOLATION_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` with every variable unset (so only the defaults count)."""
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        assert m.group(2), f"${{{m.group(1)}}} has no default: `docker compose up` would need a .env file"
        return m.group(3)

    return INTERPOLATION_RE.sub(repl, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return _interpolate(raw)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _command_words(service: dict[str, Any]) -> list[str]:
    words: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        words += value.split() if isinstance(value, str) else [str(w) for w in value or []]
    return words


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every short- or long-syntax volume."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((vol.get("source", ""), vol["target"]))
        else:
            parts = vol.split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def _published(port: Any) -> tuple[str, int] | None:
    """(host ip, host port) a port entry publishes, None when only the container port is given."""
    if isinstance(port, dict):
        return (port.get("host_ip", "0.0.0.0"), int(port["published"])) if port.get("published") else None
    spec = str(port).split("/")[0]
    parts = spec.rsplit(":", 2)
    if len(parts) == 1:
        return None
    ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return ip, int(parts[-2])


def _urls(service: dict[str, Any]) -> list[str]:
    texts = list(_env(service).values()) + _command_words(service)
    return [m.group(0) for text in texts for m in URL_RE.finditer(text)]


def _uses_freshrec_image(service: dict[str, Any]) -> bool:
    return "build" in service


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


# ------------------------------------------------------------------------------------------------
# Services, healthchecks, dependencies
# ------------------------------------------------------------------------------------------------
def test_every_expected_service_exists(services):
    assert EXPECTED <= set(services), f"missing: {sorted(EXPECTED - set(services))}"


def test_long_running_services_have_a_healthcheck(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") in (None, "no"), f"{name} is one-shot and must not restart"
            continue
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        test = hc.get("test")
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1 and all(str(w).strip() for w in test[1:]), f"{name}: {test}"
        else:
            assert isinstance(test, str) and test.strip(), f"{name}: empty healthcheck test"


def test_http_healthchecks_probe_the_documented_endpoints(services):
    def probe(name: str) -> str:
        test = services[name]["healthcheck"]["test"]
        return " ".join(test) if isinstance(test, list) else test

    assert "/api/v2/monitor/health" in probe("airflow-apiserver")
    assert "localhost:8000/healthz" in probe("freshrec-api")
    assert "localhost:5000/health" in probe("mlflow")
    assert "pg_isready" in probe("postgres")
    assert "redis-cli" in probe("redis") and "ping" in probe("redis")
    assert "DagProcessorJob" in probe("airflow-dag-processor")
    assert "TriggererJob" in probe("airflow-triggerer")
    # The scheduler's /health server only runs when enabled.
    if ":8974/health" in probe("airflow-scheduler"):
        assert _env(services["airflow-scheduler"]).get("AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "").lower() == "true"


def test_depends_on_targets_exist_and_can_satisfy_their_condition(services):
    for name, svc in services.items():
        for dep, condition in _depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            assert condition in ("service_healthy", "service_completed_successfully"), \
                f"{name} -> {dep}: use service_healthy / service_completed_successfully, not {condition}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, but it has no healthcheck"
            else:
                assert dep in ONE_SHOT, f"{name} waits for {dep} to complete, but {dep} is long-running"
            # A service in a profile is not started by `up`, so nothing in the default set may need it.
            if services[dep].get("profiles"):
                assert services[name].get("profiles"), f"{name} depends on {dep}, which only runs under a profile"


def test_depends_on_has_no_cycles(services):
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"dependency cycle: {' -> '.join(path + (name,))}"
        state[name] = 1
        for dep in _depends_on(services[name]):
            visit(dep, path + (name,))
        state[name] = 2

    for name in services:
        visit(name, ())


def test_airflow_startup_order(services):
    assert _depends_on(services["airflow-init"]).get("postgres") == "service_healthy"
    for name in AIRFLOW_LONG_RUNNING:
        deps = _depends_on(services[name])
        assert deps.get("airflow-init") == "service_completed_successfully", name
        assert deps.get("postgres") == "service_healthy", name
    scheduler = _depends_on(services["airflow-scheduler"])
    assert scheduler.get("rabbitmq") == "service_healthy"  # it queues tasks on the broker
    worker = _depends_on(services["airflow-worker"])
    # Tasks run in the Celery worker and need the broker, the execution API, MLflow, the store and Spark.
    for dep in ("rabbitmq", "airflow-apiserver", "mlflow", "redis", "spark-master", "spark-worker"):
        assert worker.get(dep) == "service_healthy", dep
    assert _depends_on(services["mlflow"]).get("postgres") == "service_healthy"
    assert _depends_on(services["spark-worker"]).get("spark-master") == "service_healthy"


def test_airflow_init_migrates_and_creates_the_spark_pool(services):
    command = " ".join(_command_words(services["airflow-init"]))
    assert "airflow db migrate" in command
    m = re.search(r"airflow pools set (\S+) (\d+)", command)
    assert m, command
    assert (m.group(1), int(m.group(2))) == (SPARK_POOL, SPARK_POOL_SLOTS)


def test_component_commands(services):
    assert _command_words(services["airflow-apiserver"])[:2] == ["airflow", "api-server"]
    assert _command_words(services["airflow-scheduler"])[:2] == ["airflow", "scheduler"]
    assert _command_words(services["airflow-dag-processor"])[:2] == ["airflow", "dag-processor"]
    assert _command_words(services["airflow-triggerer"])[:2] == ["airflow", "triggerer"]
    worker = _command_words(services["airflow-worker"])
    assert worker[:3] == ["airflow", "celery", "worker"]
    assert worker[worker.index("--queues") + 1] == _env(services["airflow-worker"])["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert "inspect ping" in " ".join(services["airflow-worker"]["healthcheck"]["test"])
    api = _command_words(services["freshrec-api"])
    assert api[:2] == ["freshrec", "serve"] and api[api.index("--host") + 1] == "0.0.0.0" and api[api.index("--port") + 1] == "8000"
    mlflow = _command_words(services["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--host") + 1] == "0.0.0.0"
    assert "org.apache.spark.deploy.master.Master" in _command_words(services["spark-master"])
    worker = _command_words(services["spark-worker"])
    assert "org.apache.spark.deploy.worker.Worker" in worker and "spark://spark-master:7077" in worker


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------
def test_freshrec_services_share_the_settings_and_the_state_volume(services):
    homes = set()
    for name in FRESHREC_SERVICES:
        env = _env(services[name])
        for key in REQUIRED_FRESHREC_ENV:
            assert env.get(key), f"{name} lacks {key}"
        home = env["FRESHREC_HOME"]
        homes.add(home)
        sources = {src for src, target in _volumes(services[name]) if target == home}
        assert sources and not any(s.startswith((".", "/")) for s in sources), f"{name}: FRESHREC_HOME must be a named volume"
        homes.add(next(iter(sources)))
        assert env.get("FRESHREC_SERVING_URL") == _env(services["freshrec-api"])["FRESHREC_SERVING_URL"], name
    assert len(homes) == 2, f"every service must mount the same volume at the same FRESHREC_HOME: {homes}"


def test_freshrec_env_is_valid_settings(services):
    fields = {f"FRESHREC_{name.upper()}" for name in Settings.model_fields}
    for name in FRESHREC_SERVICES:
        env = _env(services[name])
        unknown = {k for k in env if k.startswith("FRESHREC_")} - fields
        assert not unknown, f"{name}: {sorted(unknown)} are not freshrec settings"
        settings = Settings.load(env=env, config_file=REPO / "does-not-exist.toml")
        assert str(settings.home) == env["FRESHREC_HOME"]
        assert settings.serving == env["FRESHREC_SERVING_URL"]


def test_airflow_services_share_the_airflow_config(services):
    shared: dict[str, set[str]] = {key: set() for key in REQUIRED_AIRFLOW_ENV}
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        for key in REQUIRED_AIRFLOW_ENV:
            assert env.get(key), f"{name} lacks {key}"
            shared[key].add(env[key])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "rabbitmq", name
        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        # The DAGs folder is the repository's dags/ mounted into the container.
        assert (REPO / "dags").resolve() in {
            (REPO / src).resolve() for src, target in _volumes(services[name])
            if target == env["AIRFLOW__CORE__DAGS_FOLDER"] and src.startswith(".")
        }, f"{name}: ./dags is not mounted at {env['AIRFLOW__CORE__DAGS_FOLDER']}"
    for key, values in shared.items():
        assert len(values) == 1, f"{key} differs between Airflow services: {values}"
    execution = urlsplit(next(iter(shared["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])))
    assert (execution.hostname, execution.port, execution.path) == ("airflow-apiserver", 8080, "/execution/")
    assert len(next(iter(shared["AIRFLOW__API_AUTH__JWT_SECRET"]))) >= 16


def test_database_drivers_are_installed(services):
    """Every SQLAlchemy URL names a driver requirements.lock installs (psycopg2/asyncpg are not in it)."""
    pins = _lock_pins()
    for name, svc in services.items():
        for url in _urls(svc):
            scheme = urlsplit(url).scheme
            if scheme.startswith("postgresql+"):
                driver = scheme.split("+", 1)[1]
                assert DRIVER_DISTS.get(driver) in pins, f"{name}: {url} needs {driver}, which requirements.lock does not install"
        env = _env(svc)
        if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in env and "asyncpg" not in pins:
            # Airflow derives postgresql+asyncpg from the sync URL unless told otherwise.
            async_url = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC", "")
            assert async_url.startswith("postgresql+psycopg"), f"{name}: set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"


def test_urls_name_compose_services_on_their_ports(services):
    seen = 0
    for name, svc in services.items():
        for url in _urls(svc):
            parts = urlsplit(url)
            host = parts.hostname
            assert host in services, f"{name}: {url} names {host!r}, which is not a compose service"
            port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0])
            if host in LISTEN_PORTS:
                assert port in LISTEN_PORTS[host], f"{name}: {url} uses port {port}; {host} listens on {LISTEN_PORTS[host]}"
            seen += 1
    assert seen >= 10


def test_postgres_urls_use_roles_and_databases_that_exist(services):
    pg_env = _env(services["postgres"])
    init_sources = [src for src, target in _volumes(services["postgres"]) if target.startswith("/docker-entrypoint-initdb.d")]
    sql = "\n".join((REPO / src).read_text() for src in init_sources)
    roles = dict(re.findall(r"CREATE ROLE (\w+) WITH LOGIN PASSWORD '([^']*)'", sql, re.I))
    roles[pg_env["POSTGRES_USER"]] = pg_env["POSTGRES_PASSWORD"]
    databases = set(re.findall(r"CREATE DATABASE (\w+)", sql, re.I)) | {pg_env.get("POSTGRES_DB", pg_env["POSTGRES_USER"])}
    candidates = [url for svc in services.values() for url in _urls(svc)]
    candidates += re.findall(r"postgresql://\S+", COMPOSE_FILE.read_text())  # the commented serving alternative
    pg_urls = [url for url in candidates if urlsplit(url).scheme.split("+")[0] in ("postgresql", "postgres")]
    assert {"freshrec_airflow", "freshrec_mlflow"} <= {urlsplit(u).path.lstrip("/") for u in pg_urls}
    for url in pg_urls:
        parts = urlsplit(url)
        assert parts.username in roles, f"{url}: role {parts.username} is never created"
        assert parts.password == roles[parts.username], f"{url}: wrong password for {parts.username}"
        assert parts.path.lstrip("/") in databases, f"{url}: database {parts.path} is never created"


# ------------------------------------------------------------------------------------------------
# Ports, volumes, mounts, image
# ------------------------------------------------------------------------------------------------
def test_published_ports_do_not_collide(services):
    taken: dict[int, str] = {}
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            published = _published(port)
            if published is None:
                continue
            ip, host_port = published
            assert host_port not in taken, f"host port {host_port} published by both {taken[host_port]} and {name}"
            taken[host_port] = name
    assert {8080, 8000, 5000} <= set(taken)


def test_named_volumes_are_declared_and_bind_mounts_exist(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for src, target in _volumes(svc):
            assert target.startswith("/"), f"{name}: {target}"
            if not src:
                continue
            if src.startswith((".", "/")):
                assert src.startswith("./"), f"{name}: bind mounts must be relative to the repository: {src}"
                assert (REPO / src).exists(), f"{name} mounts {src}, which does not exist"
            else:
                assert src in declared, f"{name} uses undeclared volume {src}"


def test_freshrec_image_services_share_one_build(services):
    built = {name: svc for name, svc in services.items() if _uses_freshrec_image(svc)}
    assert FRESHREC_SERVICES | {"mlflow", "spark-master"} <= set(built)
    assert len({svc.get("image") for svc in built.values()}) == 1
    for svc in built.values():
        build = svc["build"] if isinstance(svc["build"], dict) else {"context": svc["build"]}
        context = REPO / build.get("context", ".")
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_dockerfile_pins_cpu_torch_java17_and_the_lock():
    text = DOCKERFILE.read_text()
    logical = re.sub(r"\\\n", " ", text)
    assert re.search(r"^FROM python:3\.11-slim-bookworm\b", text, re.M)
    assert "openjdk-17-jre-headless" in text
    torch_pin = _lock_pins()["torch"]
    torch_line = next(line for line in logical.splitlines() if line.startswith("RUN") and "torch==" in line)
    assert f"torch=={torch_pin}" in torch_line and torch_pin == "2.13.0"
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line
    lock_installs = [i for i, line in enumerate(logical.splitlines()) if "pip install" in line and "-c requirements.lock" in line]
    assert lock_installs, "the project must be installed with -c requirements.lock"
    assert logical.splitlines().index(torch_line) < min(lock_installs), "torch (CPU) must be installed before the rest"
    assert re.search(r"^COPY .*requirements\.lock", text, re.M)


def test_dockerignore_keeps_what_the_image_needs():
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert ".venv" in ignored and ".git" in ignored
    for needed in ("freshrec", "jobs", "models", "dags", "expectations", "pyproject.toml", "requirements.lock", "README.md"):
        assert needed not in ignored and (REPO / needed).exists(), needed
