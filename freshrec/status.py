"""``freshrec status``: what is live, how fresh it is, what ran last, and the row counts.

Reads freshrec's own state under FRESHREC_HOME (the ledger, gate.json, the serving store), never
the Airflow metadata DB, so it works the same for runs started from the UI; once something is
live, one MLflow lookup finds its run and experiment. On an empty or missing FRESHREC_HOME it
reports zeros and empty lists and creates nothing.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from freshrec.intake import landing_report
from freshrec.ledger import COUNT_KEYS, Ledger
from freshrec.settings import Settings

FRESHNESS_WINDOW = 20
LAST_RUNS_LIMIT = 10
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


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


def freshness(microbatches: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest micro-batch that did work: when, how fresh (landing -> served and newest
    event -> served, p50 and p95, seconds), and the worst p95 over the recent ones."""
    fresh: dict[str, Any] = {"last_microbatch_at": None, "landing_to_served_p50_s": None, "landing_to_served_p95_s": None}
    worked = [m for m in microbatches if m.get("files")]
    if not worked:
        return fresh
    last = worked[0]
    fresh.update({
        "last_microbatch_at": last["finished_at"], "last_microbatch_id": last["batch_id"],
        "landing_to_served_p50_s": last.get("landing_to_served_p50_s"),
        "landing_to_served_p95_s": last.get("landing_to_served_p95_s"),
        "event_to_served_p50_s": last.get("event_to_served_p50_s"),
        "event_to_served_p95_s": last.get("event_to_served_p95_s"),
        "rows": last.get("rows"), "users": last.get("users"), "seconds": last.get("seconds"),
        "recent_microbatches": len(worked),
        "recent_landing_to_served_p95_max_s": max((m.get("landing_to_served_p95_s") or 0.0) for m in worked),
    })
    return fresh


def collect_status(settings: Settings) -> dict[str, Any]:
    """The ``freshrec status --json`` object (docs/commands.md); never raises for a missing home."""
    status: dict[str, Any] = {
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
            status["freshness"] = freshness(ledger.recent_microbatches(FRESHNESS_WINDOW))
            status["landing"] = landing_report(settings, ledger)
            for name in status["landing"]["changed_files"]:
                warnings.append(f"landing file {name} changed after a run took it: the next batch reads it again, whole")
        except (sqlite3.Error, ValueError, OSError) as exc:
            warnings.append(f"cannot read {settings.state_db}: {exc}")
        status["experiments"] = running_experiments(settings, warnings)
    status["quarantine_reasons"] = _quarantine_reasons(settings, warnings)
    from freshrec.realtime import latency_report

    status["realtime"] = latency_report(settings)  # POST /v1/events -> served; None before the first
    _serving_status(settings, status, warnings)
    if warnings:
        status["warnings"] = warnings
    return status


def running_experiments(settings: Settings, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """The running experiments (``freshrec experiment list`` has them all): name, mode, variants,
    the versions serving them, and their last report's exposed users and verdict."""
    from freshrec.experiments import ExperimentStore

    try:
        running = ExperimentStore(settings.state_db).running()
    except sqlite3.Error as exc:
        if warnings is not None:
            warnings.append(f"cannot read the experiments in {settings.state_db}: {exc}")
        return []
    out = []
    for exp in running:
        report = exp.report or {}
        out.append({"name": exp.name, "mode": exp.mode, "variants": exp.variants, "versions": exp.versions,
                    "started_at": exp.created_at, "exposed_users": report.get("exposed_users"),
                    "users": report.get("users"), "report_at": report.get("generated_at"),
                    "verdict": (report.get("decision") or {}).get("verdict"),
                    "reason": (report.get("decision") or {}).get("reason")})
    return out


def _quarantine_reasons(settings: Settings, warnings: list[str]) -> dict[str, int]:
    """Quarantined rows per reason code (``freshrec quarantine`` shows the rows)."""
    from freshrec.quarantine import reason_counts

    try:
        return reason_counts(settings.quarantine_path)
    except (OSError, ValueError) as exc:  # pyarrow's errors are both
        warnings.append(f"cannot read the quarantine at {settings.quarantine_path}: {exc}")
        return {}


def _serving_status(settings: Settings, status: dict[str, Any], warnings: list[str]) -> None:
    """live_version and model: what the serving store says is live, and the last gate decision."""
    from freshrec.serving import ServingError, open_store

    gate, refresh = (_report(settings.reports_dir / name, warnings) for name in ("gate.json", "refresh.json"))
    url = settings.serving
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        live = {}  # nothing published yet; do not create the database by looking
    else:
        try:
            with open_store(url) as store:
                live = store.status()
        except ServingError as exc:
            warnings.append(f"serving store: {exc}")
            live = {}
    status["live_version"] = live.get("live_version")
    source = (live.get("meta") or {}).get("model")
    if isinstance(source, dict):
        model: dict[str, Any] = {"name": source.get("name"), "version": source.get("version"), "alias": source.get("alias"),
                                 "kind": source.get("kind")}
        model.update(_mlflow_status(settings, source, gate, warnings))
    else:
        model = {}
    if gate:
        decision = gate.get("decision") or {}
        model["gate"] = {"batch_id": gate.get("batch_id"), "decided_at": gate.get("decided_at"),
                         "candidate_version": (gate.get("model") or {}).get("version"),
                         "promoted": decision.get("promote"), "reason": decision.get("reason")}
    if refresh:
        model["refresh"] = refresh
    status["model"] = model or None


def _report(path: Path, warnings: list[str]) -> dict[str, Any] | None:
    """A JSON report a step left under reports/ (None when there is none yet)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        warnings.append(f"cannot read {path}: {exc}")
        return None


def _mlflow_status(settings: Settings, source: dict[str, Any], gate: dict[str, Any] | None,
                   warnings: list[str]) -> dict[str, Any]:
    """Where to look in MLflow: the run of what is live (the model version's training run, or
    the baseline's run), its experiment, the run whose NDCG@K plot draws the model against every
    baseline (the live model's own run; beside a live baseline, the last gate's candidate), the
    command that opens the UI on a local store, and the UI's URLs."""
    from freshrec.models import tracking

    run_id = source.get("run_id")
    version = source.get("version") if source.get("kind") == "model" else None
    if run_id is None and version is None:
        return {}
    try:
        found = tracking.find_run(settings, run_id=run_id, version=version)
    except Exception as exc:  # status never fails on a store: a missing run or an unreachable server is a warning
        warnings.append(f"MLflow: {exc}")
        return {}
    if found is None:
        return {}
    uri, exp = settings.tracking_uri, found["experiment_id"]
    ui = uri if tracking.is_server(uri) else LOCAL_MLFLOW_UI
    out: dict[str, Any] = {**found, "run_url": tracking.run_url(ui, exp, found["run_id"]),
                           "mlflow_ui": None if tracking.is_server(uri) else
                           f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri}"}
    plot_run = found["run_id"] if source.get("kind") == "model" else ((gate or {}).get("model") or {}).get("run_id")
    if plot_run:
        out["plot"] = {"run_id": plot_run, "path": tracking.CURVES_PLOT,
                       "url": tracking.run_url(ui, exp, plot_run, tracking.CURVES_PLOT)}
    return out


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _mlflow_rows(model: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """The MLflow rows of the text view (the live run, the plot to look at) and the lines that
    open them, printed whole: a URL or a command cut at the terminal's width is no use."""
    if not model.get("run_id"):
        return [], []
    rows = [("mlflow run", f"{model['run_id']} (experiment {model.get('experiment_id')})")]
    links = [f"open MLflow: {model.get('mlflow_ui') or 'the tracking server'}", f"  the run:   {model.get('run_url')}"]
    plot = model.get("plot")
    if plot:
        rows.append(("plot", f"{plot['path']} of run {plot['run_id']}: NDCG@K and recall@K, the model against every baseline"))
        links.append(f"  the plot:  {plot['url']}")
    return rows, links


def format_status(status: dict[str, Any]) -> str:
    """A compact human view of :func:`collect_status`'s object."""
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None, highlight=False)

    model = status.get("model")
    gate = (model or {}).get("gate") if isinstance(model, dict) else None
    if isinstance(model, dict) and model.get("name"):
        if model.get("kind") == "baseline":
            model_text = f"baseline {model['name']} (no model has passed the gate)"
        else:
            model_text = f"{model['name']} v{model.get('version', '?')}" + (f" ({model['alias']})" if model.get("alias") else "")
    else:
        model_text = "-"
    counts = status.get("counts") or {}
    fresh = status.get("freshness") or {}

    overview = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 0))
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("home", _or_dash(status.get("home")))
    overview.add_row("live version", _or_dash(status.get("live_version")))
    overview.add_row("model", model_text)
    mlflow_rows, mlflow_links = _mlflow_rows(model if isinstance(model, dict) else {})
    for label, text in mlflow_rows:
        overview.add_row(label, text)
    if gate:
        verdict = "promoted" if gate.get("promoted") else "not promoted"
        overview.add_row("last gate", f"v{_or_dash(gate.get('candidate_version'))} {verdict} at {_or_dash(gate.get('decided_at'))}: "
                                      f"{_or_dash(gate.get('reason'))}")
    refresh = (model or {}).get("refresh") if isinstance(model, dict) else None
    if refresh:
        from freshrec.refresh import describe

        overview.add_row("last refresh", f"{_or_dash(refresh.get('at'))} {describe(refresh)}")
    overview.add_row("counts", "  ".join(f"{key} {int(counts.get(key, 0)):,}" for key in COUNT_KEYS))
    reasons = status.get("quarantine_reasons") or {}
    if reasons:
        overview.add_row("quarantined", ", ".join(f"{code} {n:,}" for code, n in reasons.items())
                         + "  (freshrec quarantine --reason CODE shows them)")
    files = (status.get("landing") or {}).get("quarantined_files") or []
    if files:
        shown = ", ".join(f"{f['name']} ({f['code']})" for f in files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        overview.add_row("quarantined files", shown + "  (freshrec quarantine --files)")
    p50, p95 = fresh.get("landing_to_served_p50_s"), fresh.get("landing_to_served_p95_s")
    overview.add_row("freshness", f"last micro-batch {_or_dash(fresh.get('last_microbatch_at'))}  "
                                  f"landing->served p50 {_or_dash(p50 if p50 is None else f'{p50:.1f}s')}  "
                                  f"p95 {_or_dash(p95 if p95 is None else f'{p95:.1f}s')}")
    realtime = status.get("realtime")
    if realtime:
        overview.add_row("real time", f"last served {realtime['last_served_at']}  event->served "
                                      f"p50 {realtime['event_to_served_p50_s']:.2f}s  p95 {realtime['event_to_served_p95_s']:.2f}s  "
                                      f"p99 {realtime['event_to_served_p99_s']:.2f}s  (last {realtime['events']:,} events)")
    for exp in status.get("experiments") or []:
        serving = ", ".join(f"{v}={spec}" for v, spec in exp["variants"].items())
        published = "" if exp["versions"] else "  (variants not published yet: the next batch publishes them)"
        seen = f"  {exp['exposed_users']:,} users exposed" if exp.get("exposed_users") is not None else ""
        overview.add_row("experiment", f"{exp['name']} ({exp['mode']}, since {exp['started_at']}): {serving}{published}{seen}"
                                       + (f"  {exp['verdict']}: {exp['reason']}" if exp.get("verdict") else ""))
    console.print(overview)
    for line in mlflow_links:
        console.print(line, soft_wrap=True)

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
