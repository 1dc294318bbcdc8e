"""``freshrec status``: what is live, how fresh it is, what ran last, and the row counts.

Reads only freshrec's own state under FRESHREC_HOME (the ledger), never the Airflow metadata
DB, so it answers in milliseconds and works the same for runs started from the UI. On an
empty or missing FRESHREC_HOME it reports zeros and empty lists and creates nothing.
"""

from __future__ import annotations

import io
import sqlite3
from typing import Any

from freshrec.ledger import COUNT_KEYS, Ledger
from freshrec.settings import Settings

LAST_RUNS_LIMIT = 10


def _zero_counts() -> dict[str, int]:
    return {key: 0 for key in COUNT_KEYS}


def _split_run_key(run_key: str, kind: str) -> str:
    """The ledger keys runs as ``<dag_id>:<run_id>``; run ids contain ':' themselves."""
    prefix = f"{kind}:"
    return run_key[len(prefix):] if run_key.startswith(prefix) else run_key


def _last_runs(ledger: Ledger, limit: int) -> list[dict[str, Any]]:
    runs = []
    for row in ledger.recent_runs(limit=limit):
        detail = row.get("detail") or {}
        run = {
            "dag_id": row["kind"],
            "run_id": _split_run_key(row["run_key"], row["kind"]),
            "state": row["state"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
        }
        if isinstance(detail, dict):
            if detail.get("failed_task"):
                run["failed_task"] = detail["failed_task"]
            if detail.get("error"):
                run["error"] = detail["error"]
        runs.append(run)
    return runs


def collect_status(settings: Settings) -> dict[str, Any]:
    """The ``freshrec status --json`` object (interface.md); never raises for a missing home."""
    status: dict[str, Any] = {
        # Filled in once publishing and model registration exist (later issues).
        "live_version": None,
        "model": None,
        "counts": _zero_counts(),
        "freshness": {"last_microbatch_at": None, "landing_to_served_p50_s": None, "landing_to_served_p95_s": None},
        "last_runs": [],
        "home": str(settings.home.resolve()),
    }
    warnings: list[str] = []
    if settings.state_db.is_file():  # do not create a ledger just by looking
        ledger = Ledger(settings.state_db)
        try:
            status["counts"] = ledger.totals()
            status["last_runs"] = _last_runs(ledger, LAST_RUNS_LIMIT)
        except (sqlite3.Error, ValueError) as exc:
            warnings.append(f"cannot read {settings.state_db}: {exc}")
    if warnings:
        status["warnings"] = warnings
    return status


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_status(status: dict[str, Any]) -> str:
    """A compact human view of :func:`collect_status`'s object."""
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None, highlight=False)

    model = status.get("model")
    if isinstance(model, dict):
        model_text = f"{model.get('name', '?')} v{model.get('version', '?')}" + (f" ({model['alias']})" if model.get("alias") else "")
    else:
        model_text = _or_dash(model)
    counts = status.get("counts") or {}
    fresh = status.get("freshness") or {}

    overview = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 0))
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("home", _or_dash(status.get("home")))
    overview.add_row("live version", _or_dash(status.get("live_version")))
    overview.add_row("model", model_text)
    overview.add_row("counts", "  ".join(f"{key} {int(counts.get(key, 0)):,}" for key in COUNT_KEYS))
    p50, p95 = fresh.get("landing_to_served_p50_s"), fresh.get("landing_to_served_p95_s")
    overview.add_row("freshness", f"last micro-batch {_or_dash(fresh.get('last_microbatch_at'))}  "
                                  f"landing->served p50 {_or_dash(p50 if p50 is None else f'{p50:.1f}s')}  "
                                  f"p95 {_or_dash(p95 if p95 is None else f'{p95:.1f}s')}")
    console.print(overview)

    runs = status.get("last_runs") or []
    if runs:
        table = Table(title=None, box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
        for col in ("dag_id", "run_id", "state", "finished_at"):
            table.add_column(col, no_wrap=True)
        table.add_column("error", overflow="fold")
        for run in runs:
            error = run.get("error") or ""
            if error and run.get("failed_task"):
                error = f"{run['failed_task']}: {error}"
            table.add_row(_or_dash(run.get("dag_id")), _or_dash(run.get("run_id")), _or_dash(run.get("state")),
                          _or_dash(run.get("finished_at")), error)
        console.print("last runs", style="bold")
        console.print(table)
    else:
        console.print("last runs  none yet (run `freshrec run batch`)")
    for warning in status.get("warnings") or []:
        console.print(f"warning: {warning}")
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip().splitlines())
