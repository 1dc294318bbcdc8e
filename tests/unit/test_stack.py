"""``freshrec stack`` without starting it: the plan stays in step with docker-compose.yml, and
bad settings or missing services get a message."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from freshrec.cli import main
from freshrec.settings import Settings
from freshrec.stack import AIRFLOW_FIXED_ENV, plan_stack
from tests.unit.test_docker_compose import COMPOSE_FILE, _command_words, _env, _interpolate

# Settings whose value the stack and compose must share (URLs differ: hosts and passwords).
SHARED_AIRFLOW_KEYS = ("AIRFLOW__OPERATORS__DEFAULT_QUEUE", "AIRFLOW__CELERY__WORKER_CONCURRENCY")


@pytest.fixture(scope="module")
def services() -> dict:
    return _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))["services"]


@pytest.fixture
def plan(tmp_path: Path):
    return plan_stack(Settings(home=tmp_path / "home"), secret="s" * 32, base_env={"PATH": "/usr/bin"})


def _option(words, name: str) -> str:
    return str(words[list(words).index(name) + 1])


def test_every_stack_service_is_a_compose_service_with_the_same_command(plan, services):
    assert {s.compose_name for s in plan.services} | {"airflow-init", "postgres", "redis", "rabbitmq", "freshrec-cli"} == set(services)
    for service in plan.services:
        compose = [w for w in _command_words(services[service.compose_name])]
        local = [Path(service.argv[0]).name, *service.argv[1:]]
        if service.name.startswith("spark-"):
            cls = next(w for w in local if w.startswith("org.apache.spark"))
            assert cls in compose, service.name
        else:
            # the program and its subcommands (the words before the first option)
            head = [w for w in local[:3] if not w.startswith("-")]
            assert compose[:len(head)] == head, (service.name, compose, local)


def test_spark_workers_match_in_number_cores_and_memory(plan, services):
    compose = services["spark-worker"]
    words = _command_words(compose)
    workers = [s for s in plan.services if s.name.startswith("spark-worker-")]
    assert len(workers) == compose["deploy"]["replicas"] == plan.settings.stack_spark_workers
    for worker in workers:
        assert _option(worker.argv, "--cores") == _option(words, "--cores")
        assert _option(worker.argv, "--memory") == _option(words, "--memory")
        assert worker.argv[-1] == plan.settings.spark_master


def test_airflow_configuration_matches(plan, services):
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker"):
        env = _env(services[name])
        for key, value in AIRFLOW_FIXED_ENV.items():
            assert env.get(key) == value == plan.env[key], (name, key)
        for key in SHARED_AIRFLOW_KEYS:
            assert env.get(key) == plan.env[key], (name, key)
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).scheme == urlsplit(plan.env["AIRFLOW__CELERY__BROKER_URL"]).scheme
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].split("://")[0] == plan.env["AIRFLOW__CELERY__RESULT_BACKEND"].split("://")[0]
    worker = plan.service("airflow-worker").argv
    compose_worker = _command_words(services["airflow-worker"])
    for option in ("--queues", "--concurrency", "--celery-hostname"):
        assert _option(worker, option) == _option(compose_worker, option), option


def test_databases_match(plan, services):
    airflow = urlsplit(_env(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).path.lstrip("/")
    mlflow_words = _command_words(services["mlflow"])
    mlflow = urlsplit(_option(mlflow_words, "--backend-store-uri")).path.lstrip("/")
    assert (airflow, mlflow) == plan.databases
    assert urlsplit(plan.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).path.lstrip("/") == airflow
    local_mlflow = plan.service("mlflow").argv
    assert urlsplit(_option(local_mlflow, "--backend-store-uri")).path.lstrip("/") == mlflow
    assert "--serve-artifacts" in local_mlflow and "--serve-artifacts" in mlflow_words
    assert _option(local_mlflow, "--workers") == _option(mlflow_words, "--workers")


def test_every_freshrec_process_of_the_stack_uses_its_services(plan):
    s = plan.settings
    assert s.spark_master == "spark://127.0.0.1:7077"
    assert s.serving_url == "redis://127.0.0.1:6379/0"
    assert plan.env["MLFLOW_TRACKING_URI"] == plan.mlflow_url == "http://127.0.0.1:5000"
    assert plan.env["FRESHREC_SPARK_MASTER"] == s.spark_master
    assert plan.env["FRESHREC_AIRFLOW_DB_URL"] == plan.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert plan.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    assert plan.env["AIRFLOW__API_AUTH__JWT_SECRET"] == plan.env["AIRFLOW__API__SECRET_KEY"] == "s" * 32
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in plan.env  # SQLite's busy timeout only
    assert plan.env["PATH"].split(":")[0].endswith("bin")


def test_ports_come_from_settings_and_internal_ones_follow(tmp_path: Path):
    settings = Settings(home=tmp_path, stack_name="ci_1", stack_spark_port=17077, stack_spark_ui_port=18090,
                        stack_spark_workers=3, stack_airflow_port=18080, stack_mlflow_port=15000, stack_api_port=18000)
    plan = plan_stack(settings, secret="x" * 32, base_env={})
    assert plan.databases == ("ci_1_airflow", "ci_1_mlflow")
    assert plan.env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "ci_1"
    assert [_option(s.argv, "--webui-port") for s in plan.services if s.name.startswith("spark-worker-")] == ["18091", "18092", "18093"]
    assert [plan.env[k] for k in ("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                                  "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")] == ["18081", "18082", "18083"]
    assert (plan.airflow_url, plan.mlflow_url, plan.api_url, plan.spark_ui) == (
        "http://127.0.0.1:18080", "http://127.0.0.1:15000", "http://127.0.0.1:18000", "http://127.0.0.1:18090")
    assert plan.settings.spark_master == "spark://127.0.0.1:17077"


def test_bad_stack_settings_and_missing_services_get_a_message(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRESHREC_STACK_NAME", "Not-A-Name")
    assert main(["stack", "status"]) == 2
    assert "FRESHREC_STACK_NAME must match" in capsys.readouterr().err
    monkeypatch.setenv("FRESHREC_STACK_NAME", "freshrec_test")
    monkeypatch.setenv("FRESHREC_STACK_POSTGRES_URL", "mysql://root@127.0.0.1/x")
    assert main(["stack", "up"]) == 2
    assert "must be a postgresql:// URL" in capsys.readouterr().err
    assert main(["stack", "up", "--only", "spark,kafka"]) == 2
    assert "unknown service group(s) kafka; choose from spark, mlflow, airflow, freshrec" in capsys.readouterr().err
    monkeypatch.setenv("FRESHREC_STACK_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    assert main(["stack", "up", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL is not reachable at 127.0.0.1:1" in err and "FRESHREC_STACK_POSTGRES_URL" in err and "Traceback" not in err
    # Nothing started, so status says every service is stopped (exit 3), and down stops nothing.
    assert main(["stack", "status", "--json"]) == 3
    assert '"state": "stopped"' in capsys.readouterr().out
    assert main(["stack", "down"]) == 0
    assert "0 service(s) stopped" in capsys.readouterr().out


def test_stack_env_prints_exports_for_a_shell(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path / "home"))
    assert main(["stack", "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "export FRESHREC_SPARK_MASTER=spark://127.0.0.1:7077" in lines
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in lines
    assert "export AIRFLOW__CORE__EXECUTOR=CeleryExecutor" in lines
