"""End to end through the Airflow UI in a real headless Chromium (Playwright).

`freshrec airflow --require-login` runs Airflow standalone on a fresh FRESHREC_HOME; the test logs
in through the login form with the generated admin password, finds the freshrec DAGs in the DAG
list, unpauses freshrec_incremental, triggers a run from the UI and waits until the run page
says Success. One small event file is landed first, so the run has work to do.

Chromium comes from Debian (`apt-get install -y chromium`), never from `playwright install`.
Without it the test skips, except under CI=true where it fails. Run it alone with

    .venv/bin/python -m pytest -m e2e tests/e2e

A screenshot of the page at the moment of a failure, the `freshrec airflow` output and the task
logs are left in the test's tmp dir (their paths are in the failure message).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from freshrec.landing import atomic_write_jsonl
from freshrec.settings import Settings

pytestmark = pytest.mark.e2e

DAGS = ("freshrec_batch", "freshrec_incremental", "freshrec_model_refresh")
DAG = "freshrec_incremental"
STARTUP_TIMEOUT_S = 180
PARSE_TIMEOUT_S = 90
RUN_TIMEOUT_S = 240
UI_TIMEOUT_MS = 30_000
FINISHED = ("success", "failed")

EVENTS = [
    {"event_id": f"ui-e{i}", "ts": f"2026-11-20T10:{i:02d}:00Z", "user_id": f"ui-u{i % 3}", "session_id": f"ui-s{i % 3}",
     "event_type": "view" if i % 4 else "add_to_cart", "item_id": f"ui-i{i % 5}"}
    for i in range(12)
]


# --------------------------------------------------------------------------------------------
# `freshrec airflow` in a subprocess
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _processes_of(home: Path) -> list:
    """Live processes started for this FRESHREC_HOME (they all carry it in their environment)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get("FRESHREC_HOME") == str(home):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _stop(proc: subprocess.Popen, home: Path) -> list[str]:
    """SIGTERM `freshrec airflow` (it stops standalone and every process standalone started), SIGKILL
    what outlives it.

    Returns the processes that were still alive after the graceful window and had to be killed.
    """
    import psutil

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    stragglers = _processes_of(home)
    killed = []
    for p in stragglers:
        with contextlib.suppress(psutil.Error, OSError):
            killed.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        with contextlib.suppress(psutil.Error, OSError):
            os.killpg(os.getpgid(p.pid), signal.SIGKILL)
        with contextlib.suppress(psutil.Error, OSError):
            p.kill()
    psutil.wait_procs(stragglers, timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return killed


class Airflow:
    def __init__(self, base_url: str, home: Path, settings: Settings, proc: subprocess.Popen, log: Path):
        self.base_url, self.home, self.settings, self.proc, self.log = base_url, home, settings, proc, log

    @property
    def passwords_file(self) -> Path:
        return self.settings.airflow_home / "simple_auth_manager_passwords.json.generated"

    def password(self) -> str:
        return json.loads(self.passwords_file.read_text())["admin"]

    def token(self) -> str:
        resp = httpx.post(f"{self.base_url}/auth/token", json={"username": "admin", "password": self.password()}, timeout=10)
        resp.raise_for_status()
        return resp.json()["access_token"]

    def diagnostics(self) -> str:
        """The `freshrec airflow` output and every task log of the DAG, for a failure message."""
        errors = [line for line in _tail(self.log, 10**7).splitlines() if "Error:" in line or "Error)" in line]
        parts = [f"--- errors in the freshrec airflow output (last 20 of {len(errors)}):\n" + "\n".join(errors[-20:]),
                 f"--- freshrec airflow output ({self.log}):\n{_tail(self.log, 3000)}"]
        logs = sorted((self.settings.airflow_home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        for path in [p for p in logs if f"dag_id={DAG}" in str(p)][-4:]:
            parts.append(f"--- {path}:\n{_tail(path, 3000)}")
        return "\n".join(parts)


@pytest.fixture
def airflow(tmp_path: Path) -> Iterator[Airflow]:
    home = (tmp_path / "home").resolve()
    settings = Settings(home=home, spark_master="local[2]", spark_shuffle_partitions=4, spark_driver_memory="1g")
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "FRESHREC_")) and k != "MLFLOW_TRACKING_URI"}
    env.update({
        "FRESHREC_HOME": str(home),
        "FRESHREC_CONFIG": str(tmp_path / "no-freshrec.toml"),  # no freshrec.toml from the working dir
        "FRESHREC_SPARK_MASTER": settings.spark_master,
        "FRESHREC_SPARK_SHUFFLE_PARTITIONS": str(settings.spark_shuffle_partitions),
        "FRESHREC_SPARK_DRIVER_MEMORY": settings.spark_driver_memory,
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
    })
    exe = Path(sys.executable).parent / "freshrec"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "freshrec.cli"]
    log = tmp_path / "freshrec-airflow.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "airflow", "--port", str(port), "--require-login"], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    af = Airflow(f"http://127.0.0.1:{port}", home, settings, proc, log)
    try:
        _wait_healthy(af)
        _wait_dags_parsed(af)
        yield af
    finally:
        left = _stop(proc, home)
        remaining = _processes_of(home)
        assert not remaining, f"processes left behind: {[p.pid for p in remaining]}"
        assert not left, f"these outlived `freshrec airflow`'s shutdown and had to be killed: {left}"


def _wait_healthy(af: Airflow) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if af.proc.poll() is not None:
            pytest.fail(f"`freshrec airflow` exited with {af.proc.returncode} before it was healthy:\n{_tail(af.log)}")
        try:
            health = httpx.get(f"{af.base_url}/api/v2/monitor/health", timeout=5).json()
            last = json.dumps(health)
            if all(health.get(c, {}).get("status") == "healthy"
                   for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                if af.passwords_file.is_file():
                    return
        except (httpx.HTTPError, ValueError) as exc:
            last = repr(exc)
        time.sleep(1)
    pytest.fail(f"Airflow not healthy within {STARTUP_TIMEOUT_S}s (last: {last}):\n{_tail(af.log)}")


def _wait_dags_parsed(af: Airflow) -> None:
    deadline = time.monotonic() + PARSE_TIMEOUT_S
    headers = {"Authorization": f"Bearer {af.token()}"}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        resp = httpx.get(f"{af.base_url}/api/v2/dags", headers=headers, params={"limit": 100}, timeout=10)
        if resp.status_code == 200:
            seen = {d["dag_id"] for d in resp.json()["dags"]}
            if set(DAGS) <= seen:
                return
        time.sleep(1)
    errors = httpx.get(f"{af.base_url}/api/v2/importErrors", headers=headers, timeout=10).json()
    pytest.fail(f"DAGs {sorted(set(DAGS) - seen)} not parsed within {PARSE_TIMEOUT_S}s; import errors: "
                f"{json.dumps(errors.get('import_errors', []))[:3000]}")


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------
def _dag_run(af: Airflow, token: str, run_id: str) -> dict:
    resp = httpx.get(f"{af.base_url}/api/v2/dags/{DAG}/dagRuns/{run_id}", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)
    resp.raise_for_status()
    return resp.json()


def test_login_unpause_trigger_and_the_run_succeeds(airflow: Airflow, browser, tmp_path: Path):
    from playwright.sync_api import expect

    started = time.monotonic()
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        # 1. Login: any page redirects to the simple auth manager's form.
        page.goto(f"{airflow.base_url}/dags")
        page.wait_for_url("**/auth/login**")
        expect(page.get_by_text("Sign into Airflow")).to_be_visible()
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(airflow.password())
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url)

        # 2. The DAG list shows every freshrec DAG.
        if not page.url.rstrip("/").endswith("/dags"):
            page.goto(f"{airflow.base_url}/dags")
        for dag_id in DAGS:
            expect(page.get_by_role("link", name=dag_id, exact=True)).to_be_visible()
        expect(page.get_by_role("heading", name=f"{len(DAGS)} Dags")).to_be_visible()

        # The UI's login is a JWT in a cookie; the REST API accepts the same token.
        token = next(c["value"] for c in context.cookies() if c["name"] == "_token")

        # 3. Something for the run to do: one small canonical event file in the landing zone.
        path, rows = atomic_write_jsonl(airflow.settings.landing_events_dir, "ui-test.jsonl", EVENTS)
        assert rows == len(EVENTS)

        # 4. Open the DAG; it starts paused; unpause it with its toggle.
        page.get_by_role("link", name=DAG, exact=True).click()
        page.wait_for_url(f"**/dags/{DAG}")
        expect(page.get_by_role("heading", name=DAG, exact=True)).to_be_visible()
        toggle = page.get_by_test_id("toggle-pause").first
        expect(toggle).to_have_attribute("data-state", "unchecked")  # paused
        toggle.click()
        expect(toggle).to_have_attribute("data-state", "checked")
        resp = httpx.get(f"{airflow.base_url}/api/v2/dags/{DAG}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.json()["is_paused"] is False

        # 5. Trigger a run from the UI: the Trigger button, then Trigger in its dialog.
        page.get_by_test_id("trigger-dag-button").first.click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading", name=f"Trigger Dag - {DAG}")).to_be_visible()
        with page.expect_response(lambda r: r.url.endswith(f"/api/v2/dags/{DAG}/dagRuns") and r.request.method == "POST") as posted:
            dialog.get_by_test_id("trigger-dag-submit").click()
        assert posted.value.ok, posted.value.text()
        run_id = posted.value.json()["dag_run_id"]
        assert run_id.startswith("manual__")
        # The UI goes to the new run's page.
        page.wait_for_url(lambda url: f"/dags/{DAG}/runs/" in url)
        expect(page.get_by_text(run_id).first).to_be_visible()

        # 6. Wait until the run is finished (the page refreshes itself while the run is active).
        deadline = time.monotonic() + RUN_TIMEOUT_S
        state = "queued"
        while time.monotonic() < deadline:
            state = _dag_run(airflow, token, run_id)["state"]
            if state in FINISHED:
                break
            time.sleep(2)
        assert state == "success", f"run {run_id} ended {state!r} (or timed out)\n{airflow.diagnostics()}"

        # What the user sees: the run page says Success for the run and for its task.
        page.reload()
        header = page.get_by_test_id("state-badge").first
        expect(header).to_have_text("Success")
        task_row = page.get_by_role("row").filter(has=page.get_by_role("link", name="microbatch", exact=True))
        expect(task_row).to_contain_text("Success")

        # Unpausing lets the scheduler start a scheduled run at once (catchup=False still runs the
        # latest interval); max_active_runs=1 runs it before ours, and it may be the one that takes
        # the file. Every run of the DAG must have succeeded.
        resp = httpx.get(f"{airflow.base_url}/api/v2/dags/{DAG}/dagRuns", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
        runs = {r["dag_run_id"]: r["state"] for r in resp.json()["dag_runs"]}
        assert runs[run_id] == "success"
        assert all(st in ("success", "queued", "running") for st in runs.values()), f"{runs}\n{airflow.diagnostics()}"

        # The event file went into the lake (the incremental run cleans it there).
        assert any(airflow.settings.events_path.rglob("*.parquet")), "no Parquet under lake/events after the run"
        print(f"e2e UI flow took {time.monotonic() - started:.0f}s after Airflow was up")
    except BaseException:
        shot = tmp_path / "failure.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failure: {shot}")
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            print(f"no screenshot: {exc}")
        print(airflow.diagnostics())
        raise
    finally:
        context.close()
