"""The production-shaped stack, for real: ``freshrec stack up`` on this machine, then the DAGs
driven the way a data engineer's script and the scheduler drive them.

Spark standalone (a master and two workers), Airflow 3 on PostgreSQL with the CeleryExecutor
(broker: RabbitMQ), an MLflow tracking server on PostgreSQL, and ``freshrec serve`` on Redis.
PostgreSQL, Redis and RabbitMQ are the machine's own: the test runs when
FRESHREC_TEST_POSTGRES_URL, FRESHREC_TEST_REDIS_URL and FRESHREC_TEST_RABBITMQ_URL are set
(``.ci/run`` sets them) and skips otherwise. Its databases, Celery queue and Redis prefix are
named for this run and removed afterwards.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from freshrec.landing import atomic_write_jsonl
from freshrec.settings import Settings
from freshrec.spark import apps_log

pytestmark = [pytest.mark.integration, pytest.mark.stack]

FRESHREC = str(Path(sys.executable).parent / "freshrec")
BATCH_TIMEOUT_S = 900
MICROBATCH_TIMEOUT_S = 300
SPARK_BATCH_TASKS = {"clean", "validate", "matrices", "score"}


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> dict[str, int]:
    """A block of free ports: the master, 3 web UIs, Airflow and its 3 internal ports, MLflow, the API."""
    for _ in range(50):
        base = random.randrange(20_000, 60_000, 100)
        ports = {"spark": base, "spark_ui": base + 10, "airflow": base + 20, "mlflow": base + 30, "api": base + 31}
        needed = [base, *range(base + 10, base + 13), *range(base + 20, base + 24), base + 30, base + 31]
        if all(_free(p) for p in needed):
            return ports
    pytest.fail("no free block of ports")


def _with_path(url: str, path: str, query: str = "") -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    urls = {k: os.environ.get(f"FRESHREC_TEST_{k}_URL") for k in ("POSTGRES", "REDIS", "RABBITMQ")}
    missing = [k for k, v in urls.items() if not v]
    if missing:
        pytest.skip(f"FRESHREC_TEST_{'/'.join(missing)}_URL unset: no server to build the stack on")
    home = tmp_path_factory.mktemp("stack") / "home"
    name = f"frtest_{os.getpid()}"
    ports = _ports()
    env = {
        **os.environ,
        "FRESHREC_HOME": str(home),
        "FRESHREC_STACK_NAME": name,
        "FRESHREC_STACK_POSTGRES_URL": _with_path(urls["POSTGRES"], "/postgres"),
        "FRESHREC_STACK_BROKER_URL": urls["RABBITMQ"],
        "FRESHREC_STACK_SERVING_URL": _with_path(urls["REDIS"], urlsplit(urls["REDIS"]).path, f"prefix={name}"),
        "FRESHREC_STACK_SPARK_PORT": str(ports["spark"]),
        "FRESHREC_STACK_SPARK_UI_PORT": str(ports["spark_ui"]),
        "FRESHREC_STACK_AIRFLOW_PORT": str(ports["airflow"]),
        "FRESHREC_STACK_MLFLOW_PORT": str(ports["mlflow"]),
        "FRESHREC_STACK_API_PORT": str(ports["api"]),
        # The data engineer triggers the batch; the micro-batch runs every minute on its own.
        "FRESHREC_BATCH_SCHEDULE": "manual",
        "FRESHREC_MICROBATCH_MINUTES": "1",
        # This test is about the wiring: a small model (test_models_* are about the model).
        "FRESHREC_MODEL_EPOCHS": "1",
        "FRESHREC_MODEL_DIM": "16",
        "FRESHREC_SPARK_DRIVER_MEMORY": "1g",
        "FRESHREC_SPARK_SHUFFLE_PARTITIONS": "4",
    }
    for key in ("MLFLOW_TRACKING_URI", "FRESHREC_SERVING_URL", "FRESHREC_SPARK_MASTER", "FRESHREC_CONFIG"):
        env.pop(key, None)
    up = subprocess.run([FRESHREC, "stack", "up", "--timeout", "300"], env=env, capture_output=True, text=True, timeout=420)
    try:
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
        yield {"env": env, "home": home, "name": name,
               "airflow": f"http://127.0.0.1:{ports['airflow']}", "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
               "api": f"http://127.0.0.1:{ports['api']}", "spark_ui": f"http://127.0.0.1:{ports['spark_ui']}",
               "spark_master": f"spark://127.0.0.1:{ports['spark']}"}
    finally:
        down = subprocess.run([FRESHREC, "stack", "down"], env=env, capture_output=True, text=True, timeout=300)
        _drop(env, name)
        assert down.returncode == 0, down.stderr


def _drop(env: dict, name: str) -> None:
    """Remove what the stack left on the shared servers: its databases, Celery queue and Redis keys."""
    import psycopg
    import redis

    with psycopg.connect(env["FRESHREC_STACK_POSTGRES_URL"], autocommit=True) as conn:
        for db in (f"{name}_airflow", f"{name}_mlflow"):
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    from kombu import Connection

    with Connection(env["FRESHREC_STACK_BROKER_URL"]) as broker:
        broker.default_channel.queue_delete(name)
    client = redis.Redis.from_url(env["FRESHREC_STACK_SERVING_URL"].split("?")[0])
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


def _logs(stack, *services: str) -> str:
    out = []
    for service in services:
        path = stack["home"] / "stack" / "logs" / f"{service}.log"
        if path.is_file():
            out.append(f"--- {service}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
    return "\n".join(out)


def _wait_run(api: httpx.Client, dag_id: str, run_id: str, timeout_s: float, stack) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = api.get(f"/dags/{dag_id}/dagRuns/{run_id}").raise_for_status().json()
        if run["state"] in ("success", "failed"):
            tasks = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").raise_for_status().json()["task_instances"]
            states = {t["task_id"]: t["state"] for t in tasks}
            assert run["state"] == "success", f"{dag_id} {run_id}: {states}\n{_logs(stack, 'airflow-worker', 'airflow-scheduler')}"
            return {"run": run, "tasks": tasks}
        time.sleep(3)
    pytest.fail(f"{dag_id} {run_id} still {run['state']} after {timeout_s} s\n{_logs(stack, 'airflow-worker', 'airflow-scheduler')}")


def test_the_dags_run_on_the_stack_and_publish_through_its_services(stack):
    env = stack["env"]
    gen = subprocess.run([FRESHREC, "generate", "--events", "20000", "--days", "10"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr

    api = httpx.Client(base_url=stack["airflow"] + "/api/v2", timeout=30)
    deadline = time.monotonic() + 120
    while api.get("/dags/freshrec_batch").status_code != 200:  # the dag-processor parses the DAGs first
        assert time.monotonic() < deadline, _logs(stack, "airflow-dag-processor")
        time.sleep(2)

    # 1. The batch, as a data engineer's script triggers it: through the REST API.
    api.patch("/dags/freshrec_batch", json={"is_paused": False}).raise_for_status()
    now = datetime.now(timezone.utc).isoformat()
    run = api.post("/dags/freshrec_batch/dagRuns", json={"dag_run_id": "stack-test-batch", "logical_date": now})
    assert run.status_code == 200, run.text
    batch = _wait_run(api, "freshrec_batch", "stack-test-batch", BATCH_TIMEOUT_S, stack)
    assert {t["task_id"]: t["state"] for t in batch["tasks"]} == {t["task_id"]: "success" for t in batch["tasks"]}
    assert all(t["hostname"] and t["queue"] == stack["name"] for t in batch["tasks"]), batch["tasks"]

    # 2. MLflow, through the tracking server: the runs, the registered model and its champion.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack["mlflow"], registry_uri=stack["mlflow"])
    experiment = client.get_experiment_by_name("freshrec")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    assert len(runs) >= 3, [r.info.run_name for r in runs]
    champion = client.get_model_version_by_alias("freshrec", "champion")
    assert champion.version

    # 3. The lists, from Redis through the API.
    with next((stack["home"] / "landing" / "events").glob("*.jsonl")).open() as landed:
        user = json.loads(landed.readline())["user_id"]
    serve = httpx.Client(base_url=stack["api"], timeout=10)
    assert serve.get("/healthz").status_code == 200
    before = serve.get(f"/v1/users/{user}/recommendations", params={"n": 10}).raise_for_status().json()
    assert before["source"] == "personal" and len(before["items"]) == 10
    assert serve.get("/v1/popular", params={"n": 5}).raise_for_status().json()["items"]
    import redis

    assert redis.Redis.from_url(env["FRESHREC_STACK_SERVING_URL"].split("?")[0]).get(f"{stack['name']}:live") is not None

    # 4. New events, and the scheduler's own micro-batch (every minute) refreshes that user.
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [{"event_id": f"stack-{i}", "ts": stamp, "user_id": user, "session_id": "stack-s", "event_type": kind,
             "item_id": item, "category": "stack/test", "price": 9.5}
            for i, (kind, item) in enumerate([("view", "i1"), ("view", "i2"), ("add_to_cart", "i2"), ("view", "i3")])]
    atomic_write_jsonl(stack["home"] / "landing" / "events", "stack-new-events.jsonl", rows)
    api.patch("/dags/freshrec_incremental", json={"is_paused": False}).raise_for_status()
    deadline = time.monotonic() + MICROBATCH_TIMEOUT_S
    while True:
        after = serve.get(f"/v1/users/{user}/recommendations", params={"n": 10}).raise_for_status().json()
        if after["updated_at"] != before["updated_at"]:
            break
        assert time.monotonic() < deadline, f"the user's list was not refreshed\n{_logs(stack, 'airflow-worker', 'airflow-scheduler')}"
        time.sleep(3)
    # The list changes while the task still runs (it then records its watermark and stops Spark),
    # so the scheduled run may reach "success" a little after the list does.
    deadline = time.monotonic() + MICROBATCH_TIMEOUT_S
    while True:
        scheduled = api.get("/dags/freshrec_incremental/dagRuns", params={"state": "success"}).raise_for_status().json()["dag_runs"]
        if any(r["run_type"] == "scheduled" for r in scheduled):
            break
        assert time.monotonic() < deadline, f"no scheduled micro-batch succeeded: {scheduled}\n{_logs(stack, 'airflow-scheduler')}"
        time.sleep(3)
    status = json.loads(subprocess.run([FRESHREC, "status", "--json"], env=env, capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    assert status["counts"]["read"] == 20_000 + len(rows)
    assert status["freshness"]["last_microbatch_at"]

    # 5. Every Spark application ran on the standalone master, and the cluster knows each one.
    apps = [json.loads(line) for line in apps_log(Settings(home=stack["home"])).read_text().splitlines()]
    assert apps and {a["master"] for a in apps} == {stack["spark_master"]}
    cluster = httpx.get(stack["spark_ui"] + "/json/", timeout=10).raise_for_status().json()
    known = {a["id"]: a for a in cluster["activeapps"] + cluster["completedapps"]}
    assert {a["app_id"] for a in apps} <= set(known), (apps, list(known))
    names = {a["name"] for a in apps}
    assert {f"freshrec freshrec_batch.{t}" for t in SPARK_BATCH_TASKS} <= names, names
    assert "freshrec freshrec_incremental.microbatch" in names, names
    assert cluster["aliveworkers"] == 2
