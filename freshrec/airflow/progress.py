"""What ``freshrec run`` shows while a DAG runs and after: the task that is running and for how
long, a line per task as it finishes, and the run's rows from the ledger, with a loud warning
when many were quarantined.

On a terminal (stdout a tty) the running task is a rich status line that updates itself;
elsewhere (tests, CI logs) every line is plain text on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from freshrec.settings import Settings

QUARANTINE_WARN_SHARE = 0.10  # a run quarantining more than this share of its rows is warned about


def task_line(dag_id: str, task_id: str, state: str | None, seconds: float) -> str:
    """The line printed when a task finishes."""
    return f"{dag_id}: {task_id} {state or 'finished'} ({seconds:.1f}s)"


class _Running:
    """The live status line: the current task and the time it and the run have taken."""

    def __init__(self, dag_id: str):
        from rich.spinner import Spinner

        self.dag_id, self.task, self.started, self.task_started = dag_id, None, time.monotonic(), time.monotonic()
        self.spinner = Spinner("dots")

    def __rich__(self):
        now = time.monotonic()
        doing = f"{self.task} running {now - self.task_started:.0f}s" if self.task else "starting Airflow"
        self.spinner.update(text=f"{self.dag_id}: {doing}  (run {now - self.started:.0f}s)")
        return self.spinner


class Progress:
    """Hears of each task starting and finishing (from ``airflow dags test``'s output)."""

    def __init__(self, dag_id: str, log_path: Any, live: bool | None = None):
        self.dag_id = dag_id
        self.live = sys.stdout.isatty() if live is None else live
        self._console = self._display = self._running = None
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(stderr=True, highlight=False)
            self._running = _Running(dag_id)
            self._display = Live(self._running, console=self._console, refresh_per_second=4, transient=True)
            self._display.start()
        self._say(f"{dag_id}: starting `airflow dags test` (its output: {log_path})")

    def _say(self, line: str) -> None:
        if self._console is not None:
            self._console.print(line, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def task_started(self, task_id: str) -> None:
        if self._running is not None:
            self._running.task, self._running.task_started = task_id, time.monotonic()
        else:
            self._say(f"{self.dag_id}: {task_id} running")

    def task_finished(self, task_id: str, state: str | None, seconds: float) -> None:
        if self._running is not None:
            self._running.task = None
        self._say(task_line(self.dag_id, task_id, state, seconds))

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None


# --------------------------------------------------------------------------------------------
# The run's rows, from the ledger
# --------------------------------------------------------------------------------------------
def run_rows(settings: Settings, dag_id: str, started_at: str, tasks: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The rows this run read, clean, quarantined and duplicate, the users it re-scored and its
    quarantine per reason code; None when it counted nothing (a batch whose clean did not run).

    A batch's clean recounts every landing file, so its rows are the ledger's totals; a
    micro-batch run's are those of the micro-batches that finished since it started."""
    from freshrec.ledger import COUNT_KEYS, Ledger
    from freshrec.quarantine import reason_counts

    if not settings.state_db.is_file() or dag_id == "freshrec_model_refresh":  # a refresh reads the lake, lands no rows
        return None
    ledger = Ledger(settings.state_db)
    # the landing files this run set aside whole, by name
    files = [{"name": name, "code": st["code"], "message": st["message"]} for name, st in ledger.landing_states().items()
             if st["state"] == "quarantined" and st["updated_at"] >= started_at]
    if dag_id == "freshrec_batch":
        if not any(t["task_id"] == "clean" and t["state"] == "success" for t in tasks):
            return None
        rows: dict[str, Any] = {**ledger.totals(), "users": None, "quarantined_files": files}
        rows["reasons"] = reason_counts(settings.quarantine_path)
        return rows
    batches = [m for m in ledger.recent_microbatches(limit=50) if m["finished_at"] >= started_at and m.get("files")]
    rows = {key: sum(int(m.get(key) or 0) for m in batches) for key in COUNT_KEYS}
    rows["users"] = sum(int(m.get("users") or 0) for m in batches)
    reasons: dict[str, int] = {}
    for m in batches:
        for code, n in reason_counts(settings.quarantine_path / f"batch_id={m['batch_id']}").items():
            reasons[code] = reasons.get(code, 0) + n
    rows["reasons"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    rows["quarantined_files"] = files
    return rows


def format_rows(rows: Mapping[str, Any]) -> str:
    """The run's rows and users re-scored, then a line per landing file it quarantined whole."""
    line = (f"rows: read {rows['read']:,} = clean {rows['clean']:,} + quarantined {rows['quarantined']:,} "
            f"+ duplicates {rows['duplicates']:,}")
    lines = [line + (f"; users re-scored {rows['users']:,}" if rows.get("users") is not None else "")]
    lines += [f"quarantined file: {f['name']} ({f['code']}): {f['message']}" for f in rows.get("quarantined_files") or []]
    return "\n".join(lines)


def quarantine_warning(rows: Mapping[str, Any]) -> str | None:
    """A loud line when more than QUARANTINE_WARN_SHARE of the run's rows were quarantined."""
    read, bad = rows["read"], rows["quarantined"]
    if not read or bad / read <= QUARANTINE_WARN_SHARE:
        return None
    top = ", ".join(f"{code} {n:,}" for code, n in list(rows.get("reasons", {}).items())[:3])
    files = rows.get("quarantined_files") or []
    return (f"freshrec: WARNING: {bad:,} of {read:,} rows ({bad / read:.0%}) were quarantined"
            + (f"; top reasons: {top}" if top else "")
            + (f"; {len(files)} file(s) quarantined whole (`freshrec quarantine --files`)" if files else "")
            + ". See them with `freshrec quarantine --reason CODE`")
