"""``freshrec airflow``: the Airflow 3 UI and scheduler on one machine (``airflow standalone``)
on the SQLite metadata DB under FRESHREC_HOME."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import psutil

from freshrec.airflow.env import airflow_bin, airflow_env, migrate_in_child, path_with_bin
from freshrec.errors import UserError
from freshrec.settings import Settings

ADMIN_USER = "admin"
PASSWORDS_FILE_NAME = "simple_auth_manager_passwords.json.generated"
STANDALONE_STOP_TIMEOUT_S = 30.0
KILL_AFTER_S = 10.0  # after SIGTERM to what is left, before SIGKILL


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
    env["PATH"] = path_with_bin(base.get("PATH"))
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
    bind_host = "" if host in ("0.0.0.0", "::") else host.strip("[]")
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another port with --port") from None


# --------------------------------------------------------------------------------------------
# Stopping: the standalone process and every descendant
# --------------------------------------------------------------------------------------------
class ProcessTree:
    """A process and every descendant it has been seen with.

    Descendants are remembered: once a parent exits its children are re-parented away from
    the tree, and ``children(recursive=True)`` of the root no longer finds them. Call
    :meth:`refresh` while the tree runs so late starters are known before their parent goes.
    """

    def __init__(self, root: psutil.Process):
        self.root = root
        self.known: dict[int, psutil.Process] = {root.pid: root}

    def refresh(self) -> list[psutil.Process]:
        """The known processes still running, after adding their current descendants (the
        root's while it runs: one scan of the process table; each survivor's after it)."""
        known = dict(self.known)
        for proc in [self.root] if _running(self.root) else list(known.values()):
            with contextlib.suppress(psutil.Error):
                known.update((child.pid, child) for child in proc.children(recursive=True))
        self.known = {pid: proc for pid, proc in known.items() if _running(proc)}
        return list(self.known.values())

    def kill(self) -> None:
        """SIGKILL every process of the tree known now (safe in a signal handler: it only reads
        ``known``, which :meth:`refresh` replaces whole)."""
        for proc in list(self.known.values()):
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def stop(self, timeout: float = KILL_AFTER_S) -> None:
        """SIGTERM every process of the tree, wait up to ``timeout`` seconds, SIGKILL the rest."""
        procs = self.refresh()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _supervise(proc: psutil.Popen) -> tuple[int, bool]:
    """Wait for standalone while relaying the stop signals; its exit code and whether it was
    asked to stop.

    1. SIGINT or SIGTERM here -> SIGINT to standalone, its own Ctrl-C path: it terminates each
       component, which finishes its loop (about 5 s when idle);
    2. standalone still running ``STANDALONE_STOP_TIMEOUT_S`` later (a long task) -> SIGTERM to
       the whole tree, SIGKILL ``KILL_AFTER_S`` after that; a second signal -> SIGKILL at once.
    """
    tree = ProcessTree(proc)
    stopping: dict[str, float] = {}

    def _on_signal(_signum: int, _frame: Any) -> None:
        if "since" in stopping:  # second signal: no more patience
            tree.kill()
            return
        stopping["since"] = time.monotonic()
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (rc := proc.poll()) is None:
            tree.refresh()
            since = stopping.get("since")
            if since is not None and time.monotonic() - since > STANDALONE_STOP_TIMEOUT_S:
                tree.stop()
            time.sleep(0.5)
    finally:
        # Whatever is left of the tree (a task process, a Spark JVM, or all of it after an
        # exception of our own) goes with it.
        tree.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return rc, "since" in stopping


def run_standalone(settings: Settings, host: str = "127.0.0.1", port: int = 8080, require_login: bool = False) -> int:
    """``freshrec airflow``: run ``airflow standalone`` until Ctrl-C/SIGTERM; returns an exit code.

    Creates or migrates the metadata DB and sizes the ``freshrec_spark`` pool first (in a
    child), then starts standalone in a session of its own, so the terminal's Ctrl-C reaches
    only this process, which stops standalone and every process it started (scheduler,
    dag-processor, triggerer, api-server, their task processes and Spark JVMs) as
    :func:`_supervise` says; once standalone has exited, whatever is left of them gets
    SIGTERM, then SIGKILL ``KILL_AFTER_S`` later, so nothing outlives the command.
    """
    settings = settings.replace(home=settings.home.resolve())
    settings.ensure_dirs()
    _check_port_free(host, port)
    command = [str(airflow_bin()), "standalone"]
    migrate_in_child(settings)  # every start: the machine or the settings may have changed the pool
    env = standalone_env(settings, host, port, require_login)
    print(standalone_banner(settings, host, port, require_login), file=sys.stderr, flush=True)
    proc = psutil.Popen(command, env=env, cwd=str(settings.airflow_home), start_new_session=True)
    rc, stopped = _supervise(proc)
    if stopped:
        print("freshrec: Airflow stopped", file=sys.stderr)
        return 0
    print(f"freshrec: airflow standalone exited with code {rc}", file=sys.stderr)
    return 0 if rc == 0 else 1
