"""`freshrec airflow`: the environment handed to `airflow standalone` (nothing is started here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from freshrec.airflow.env import DAGS_DIR
from freshrec.airflow.standalone import (
    ProcessTree,
    passwords_file,
    standalone_banner,
    standalone_env,
    standalone_url,
)
from freshrec.cli import build_parser
from freshrec.settings import Settings

BIN_DIR = str(Path(sys.executable).parent)
BASE = {"PATH": "/usr/local/bin:/usr/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", spark_master="local[2]", spark_shuffle_partitions=4)


def test_env_points_airflow_at_freshrec_home(tmp_path):
    s = _settings(tmp_path)
    env = standalone_env(s, "127.0.0.1", 8123, base_env=BASE)
    airflow_home = (tmp_path / "home" / "airflow").resolve()
    assert env["AIRFLOW_HOME"] == str(airflow_home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_DIR)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{airflow_home / 'airflow.db'}"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # the tasks run in processes of their own and rebuild the settings from FRESHREC_*
    assert env["FRESHREC_HOME"] == str((tmp_path / "home").resolve())
    assert env["FRESHREC_SPARK_MASTER"] == "local[2]"
    assert env["FRESHREC_SPARK_SHUFFLE_PARTITIONS"] == "4"
    assert Settings.load(env=env, config_file=tmp_path / "none.toml").spark_shuffle_partitions == 4


def test_env_keeps_the_base_environment_and_puts_the_venv_first_on_path(tmp_path):
    env = standalone_env(_settings(tmp_path), base_env={**BASE, "PATH": f"/usr/bin:{BIN_DIR}:/bin"})
    assert env["HOME"] == "/root" and env["LANG"] == "C.UTF-8"
    parts = env["PATH"].split(os.pathsep)
    assert parts[0] == BIN_DIR
    assert parts.count(BIN_DIR) == 1
    assert parts[1:] == ["/usr/bin", "/bin"]


def test_env_without_path_still_finds_the_venv(tmp_path):
    env = standalone_env(_settings(tmp_path), base_env={})
    assert env["PATH"].split(os.pathsep)[0] == BIN_DIR


@pytest.mark.parametrize("host, port, url", [
    ("127.0.0.1", 8080, "http://127.0.0.1:8080"),
    ("0.0.0.0", 9001, "http://127.0.0.1:9001"),
    ("localhost", 8081, "http://localhost:8081"),
    ("::1", 8082, "http://[::1]:8082"),
])
def test_api_server_host_port_and_execution_api_url(tmp_path, host, port, url):
    env = standalone_env(_settings(tmp_path), host, port, base_env=BASE)
    assert env["AIRFLOW__API__HOST"] == host
    assert env["AIRFLOW__API__PORT"] == str(port)
    # tasks reach the execution API on the port actually served, not Airflow's localhost:8080 default
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{url}/execution/"
    assert standalone_url(host, port) == url


def test_everyone_is_admin_by_default(tmp_path):
    env = standalone_env(_settings(tmp_path), base_env=BASE)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "True"
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" not in env


def test_require_login_makes_one_admin_with_a_generated_password(tmp_path):
    s = _settings(tmp_path)
    base = {**BASE, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/elsewhere.json"}
    env = standalone_env(s, require_login=True, base_env=base)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    # exactly "admin:admin" (user admin, role admin) is what makes standalone generate the password
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" not in env
    pw = passwords_file(s)
    assert pw == (tmp_path / "home" / "airflow" / "simple_auth_manager_passwords.json.generated").resolve()
    banner = standalone_banner(s, "127.0.0.1", 8080, True)
    assert str(pw) in banner and "admin" in banner and "Ctrl-C" in banner
    assert "\n" not in banner


def test_dags_start_paused_and_executor_is_left_to_standalone(tmp_path):
    env = standalone_env(_settings(tmp_path), base_env=BASE)
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert "AIRFLOW__CORE__EXECUTOR" not in env
    assert "AIRFLOW__CORE__AUTH_MANAGER" not in env
    # an explicit choice of the caller is kept
    env = standalone_env(_settings(tmp_path), base_env={**BASE, "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"})
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"


def test_env_is_pure(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESHREC_SENTINEL_NOT_A_SETTING", "x")
    before = dict(os.environ)
    base = dict(BASE)
    env = standalone_env(_settings(tmp_path), require_login=True, base_env=base)
    assert dict(os.environ) == before
    assert base == BASE
    assert "FRESHREC_SENTINEL_NOT_A_SETTING" not in env
    assert not (tmp_path / "home").exists()


def test_banner_without_login(tmp_path):
    banner = standalone_banner(_settings(tmp_path), "0.0.0.0", 8080, False)
    assert banner.startswith("freshrec: Airflow UI on http://127.0.0.1:8080")
    assert "no login" in banner and "Ctrl-C" in banner


def test_cli_parses_airflow_command():
    args = build_parser().parse_args(["airflow"])
    assert (args.command, args.host, args.port, args.require_login) == ("airflow", "127.0.0.1", 8080, False)
    args = build_parser().parse_args(["airflow", "--host", "0.0.0.0", "--port", "8099", "--require-login"])
    assert (args.host, args.port, args.require_login) == ("0.0.0.0", 8099, True)


def _run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "freshrec"
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "freshrec.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FRESHREC_HOME": str(home)}, timeout=60)


def test_cli_bad_port_is_one_line(tmp_path):
    result = _run_cli(["airflow", "--port", "99999"], tmp_path / "home")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "port number" in result.stderr


def test_cli_port_in_use_is_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        result = _run_cli(["airflow", "--port", str(port)], tmp_path / "home")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


# A process that starts a grandchild deaf to SIGTERM (as a busy task or a JVM may be), then
# lives for argv[1] seconds: the shape of standalone and what it starts.
TREE_ROOT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
time.sleep(float(sys.argv[1]))
"""


def _tree(lifetime_s: float):

    tree = ProcessTree(psutil.Popen([sys.executable, "-c", TREE_ROOT, str(lifetime_s)]))
    deadline = time.monotonic() + 30
    while len(tree.refresh()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    procs = tree.refresh()
    assert len(procs) == 2, procs
    return tree, procs


def _gone(proc) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_terminates_the_tree_and_kills_what_ignores_sigterm():
    tree, procs = _tree(600)
    started = time.monotonic()
    tree.stop(timeout=1)
    assert all(_gone(p) for p in procs), procs
    assert time.monotonic() - started < 10


def test_stop_finds_descendants_orphaned_by_an_exited_parent():
    tree, procs = _tree(0.5)
    root, grandchild = tree.root, next(p for p in procs if p.pid != tree.root.pid)
    root.wait(timeout=30)  # the grandchild's parent is gone; it is no longer below the root
    assert grandchild.is_running() and grandchild.ppid() != root.pid
    tree.stop(timeout=1)
    assert _gone(grandchild)
