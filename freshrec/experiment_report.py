"""An experiment's report: attribution and statistics over the impression log and the lake's
events (``freshrec.experiment_stats`` does the arithmetic), kept current by the batch's
``experiments`` task and the micro-batch, saved under ``reports/experiments/<name>.json``, and
logged to MLflow as one run per report (tags ``freshrec.kind=experiment`` and
``freshrec.experiment``): its metrics, and a plot of the decision metric over time with its
interval.

The report counts an event once a micro-batch (or the batch) has put it in the lake, and an
impression once the API has written it (folded or not). docs/experiments.md explains every
number.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from freshrec.errors import UserError
from freshrec.experiments import Experiment, ExperimentStore
from freshrec.fileio import atomic_write_text
from freshrec.settings import Settings

log = logging.getLogger(__name__)

#: the significance of every decision the report makes
ALPHA = 0.05
#: points of the metric-over-time plot and table
TIMELINE_POINTS = 8
EVENT_COLUMNS = ("event_id", "ts", "user_id", "item_id", "event_type", "price", "quantity", "recommendation_id")
KIND = "experiment"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def experiment_events(settings: Settings, since: pd.Timestamp) -> pd.DataFrame:
    """The lake's item events at or after ``since``: EVENT_COLUMNS (a column older files lack is null)."""
    import pyarrow.parquet as pq

    root = settings.events_path
    parts = []
    first = since.tz_convert("UTC").strftime("%Y-%m-%d")
    for folder in sorted(root.glob("event_date=*")) if root.is_dir() else []:
        if folder.name.split("=", 1)[1] < first:
            continue
        for path in sorted(folder.glob("*.parquet")):
            names = pq.read_schema(path).names
            frame = pq.read_table(path, columns=[c for c in EVENT_COLUMNS if c in names]).to_pandas()
            parts.append(frame.reindex(columns=list(EVENT_COLUMNS)))
    if not parts:
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    events = pd.concat(parts, ignore_index=True)
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    events = events.loc[(events["ts"] >= since) & events["item_id"].notna()]
    return events.drop_duplicates("event_id").reset_index(drop=True)


def build_report(exp: Experiment, impressions: pd.DataFrame, events: pd.DataFrame,
                 now: datetime | None = None) -> dict[str, Any]:
    """The report of ``exp`` from its impressions (``impressions.read_impressions``) and the
    events since it started: pure, no I/O."""
    from freshrec.experiment_stats import attribute, compare, interleave_preference, per_user, srm

    now = now or datetime.now(timezone.utc)
    imp = impressions.loc[impressions["kind"] == "user"].rename(columns={"key": "user_id"})
    credited = attribute(events, imp)
    control, treatment = exp.control, exp.treatment
    report: dict[str, Any] = {
        "experiment": exp.name, "mode": exp.mode, "state": exp.state, "metric": exp.metric,
        "variants": {v: {"spec": spec} for v, spec in exp.variants.items()},
        "split": dict(zip(exp.variants, exp.split, strict=True)), "traffic": exp.traffic,
        "versions": exp.versions, "started_at": exp.created_at, "generated_at": now.isoformat(timespec="seconds"),
        "impressions": int(len(imp)), "exposed_users": int(imp["user_id"].nunique()),
        "credited_events": {how: int(n) for how, n in credited["how"].value_counts().items()} if len(credited) else {},
    }
    if exp.mode == "ab":
        users = per_user(imp, credited) if len(imp) else None
        observed = users.groupby("variant").size().to_dict() if users is not None else {}
        report["users"] = {v: int(observed.get(v, 0)) for v in exp.variants}
        report["srm"] = srm(report["users"], report["split"])
        per_variant = {}
        if users is not None:
            for variant, rows in users.groupby("variant"):
                per_variant[variant] = {"users": int(len(rows)), "impressions": int(rows["impressions"].sum()),
                                        "views": int(rows["views"].sum()), "carts": int(rows["carts"].sum()),
                                        "purchases": int(rows["purchases"].sum()),
                                        "revenue": round(float(rows["revenue"].sum()), 2)}
        report["per_variant"] = per_variant
        report["comparisons"] = ([{k: _clean(v) for k, v in c.__dict__.items()} for c in compare(users, control, treatment)]
                                 if users is not None else [])
        report["timeline"] = _ab_timeline(exp, imp, credited)
    else:
        pref = interleave_preference(credited, teams=(control, treatment), alpha=ALPHA)
        report["preference"] = {k: _clean(v) for k, v in pref.items()}
        report["team_events"] = ({team: {etype: int(n) for etype, n in rows["event_type"].value_counts().items()}
                                  for team, rows in credited.groupby("team")} if len(credited) else {})
        report["timeline"] = _interleave_timeline(exp, imp, credited)
    report["decision"] = decide(exp, report)
    _summary(exp, report, users if exp.mode == "ab" else None)
    return report


def _summary(exp: Experiment, report: dict[str, Any], users: pd.DataFrame | None) -> None:
    """The report's headline, one entry per variant (``users``, ``value`` of the decision metric,
    its 95% ``ci``), then ``winner``, ``p_value`` (what the decision rests on: the always-valid
    p of A/B, the binomial p of interleaving) and ``srm_p_value`` (A/B only)."""
    from scipy.stats import norm

    from freshrec.experiment_stats import metric_values

    z = float(norm.ppf(1 - ALPHA / 2))
    for variant, entry in report["variants"].items():
        if exp.mode == "ab":
            rows = users.loc[users["variant"] == variant] if users is not None else None
            values = metric_values(rows, exp.metric) if rows is not None and len(rows) else None
            n = 0 if values is None else len(values)
            mean = float(values.mean()) if n else None
            half = z * float(values.std(ddof=1)) / n ** 0.5 if n > 1 else None
            entry.update(users=n, value=mean, ci=[mean - half, mean + half] if half is not None else None)
        else:
            pref = report["preference"]
            decided = sum(pref["wins"].values())
            if variant == exp.treatment:
                low, high = pref["ci_low"], pref["ci_high"]
            else:
                low, high = (1 - pref["ci_high"], 1 - pref["ci_low"]) if pref["ci_high"] is not None else (None, None)
            entry.update(users=report["exposed_users"], wins=pref["wins"][variant],
                         value=pref["wins"][variant] / decided if decided else None,
                         ci=[low, high] if low is not None else None)
    report["winner"] = report["decision"]["winner"]
    if exp.mode == "ab":
        main = next((c for c in report["comparisons"] if c["metric"] == exp.metric), None)
        report["p_value"] = main["always_valid_p"] if main else 1.0
        report["srm_p_value"] = report["srm"]["p_value"]
    else:
        report["p_value"] = report["preference"]["p_value"]
        report["srm_p_value"] = None  # every user sees both teams: there is no split to check


def _checkpoints(imp: pd.DataFrame) -> list[pd.Timestamp]:
    if imp.empty:
        return []
    times = imp["served_at"].sort_values()
    picks = sorted({times.iloc[min(len(times) - 1, math.ceil(len(times) * q) - 1)] for q in
                    [(i + 1) / TIMELINE_POINTS for i in range(TIMELINE_POINTS)]})
    return picks


def _ab_timeline(exp: Experiment, imp: pd.DataFrame, credited: pd.DataFrame) -> list[dict[str, Any]]:
    """The decision metric's difference (treatment - control) with its interval and always-valid
    p-value, as it stood at each checkpoint: impressions and credited events up to it."""
    from freshrec.experiment_stats import compare, per_user

    out = []
    for at in _checkpoints(imp):
        shown = imp.loc[imp["served_at"] <= at]
        acted = credited.loc[pd.to_datetime(credited["ts"], utc=True) <= at] if len(credited) else credited
        users = per_user(shown, acted)
        c = compare(users, exp.control, exp.treatment, [exp.metric])[0]
        out.append({"at": at.isoformat(), "users": int(len(users)), "difference": _clean(c.difference),
                    "ci_low": _clean(c.ci_low), "ci_high": _clean(c.ci_high), "always_valid_p": _clean(c.always_valid_p)})
    return out


def _interleave_timeline(exp: Experiment, imp: pd.DataFrame, credited: pd.DataFrame) -> list[dict[str, Any]]:
    from freshrec.experiment_stats import interleave_preference

    out = []
    for at in _checkpoints(imp):
        acted = credited.loc[pd.to_datetime(credited["ts"], utc=True) <= at] if len(credited) else credited
        pref = interleave_preference(acted, teams=(exp.control, exp.treatment), alpha=ALPHA) if len(acted) else {}
        out.append({"at": at.isoformat(), "users": int(imp.loc[imp["served_at"] <= at, "user_id"].nunique()),
                    "share": _clean(pref.get("share")), "ci_low": _clean(pref.get("ci_low")),
                    "ci_high": _clean(pref.get("ci_high")), "p_value": _clean(pref.get("p_value", 1.0))})
    return out


def decide(exp: Experiment, report: dict[str, Any]) -> dict[str, Any]:
    """``{"winner", "verdict", "reason"}``: verdict ``stop-srm`` (the split is broken: trust nothing),
    ``winner`` (a variant is better at ALPHA, always-valid for A/B), or ``keep-running``."""
    if exp.mode == "ab":
        if report["srm"]["mismatch"]:
            return {"winner": None, "verdict": "stop-srm",
                    "reason": (f"sample ratio mismatch: users per variant {report['users']} against the split "
                               f"{report['split']} (chi-square p = {report['srm']['p_value']:.2g} < 0.001): assignment "
                               "or logging is broken; no metric of this experiment can be trusted")}
        main = next((c for c in report["comparisons"] if c["metric"] == exp.metric), None)
        if main is None or main["difference"] is None:
            return {"winner": None, "verdict": "keep-running", "reason": "no exposed users in one of the variants yet"}
        p = main["always_valid_p"]
        if p < ALPHA:
            winner = exp.treatment if main["difference"] > 0 else exp.control
            return {"winner": winner, "verdict": "winner",
                    "reason": (f"{exp.metric}: {exp.treatment} - {exp.control} = {main['difference']:+.4g} "
                               f"[{main['ci_low']:+.4g}, {main['ci_high']:+.4g}], always-valid p = {p:.3g} < {ALPHA}")}
        return {"winner": None, "verdict": "keep-running",
                "reason": (f"{exp.metric}: difference {main['difference']:+.4g} [{main['ci_low']:+.4g}, "
                           f"{main['ci_high']:+.4g}], always-valid p = {p:.3g}: no decision yet (it stays valid at "
                           "every look; keep running)")}
    pref = report["preference"]
    if pref["preferred"]:
        return {"winner": pref["preferred"], "verdict": "winner",
                "reason": (f"users preferred {pref['preferred']}: {exp.treatment}'s share {pref['share']:.3f} "
                           f"[{pref['ci_low']:.3f}, {pref['ci_high']:.3f}] of {sum(pref['wins'].values())} decided users, "
                           f"p = {pref['p_value']:.3g} < {ALPHA}")}
    decided = sum(pref["wins"].values())
    return {"winner": None, "verdict": "keep-running",
            "reason": (f"no preference yet: {decided} decided user(s)"
                       + (f", {exp.treatment}'s share {pref['share']:.3f}, p = {pref['p_value']:.3g}" if decided else ""))}


# -- the step ---------------------------------------------------------------------------------

def report_step(settings: Settings, name: str | None = None, *, min_interval_s: float = 0.0,
                mlflow: bool = True) -> dict[str, Any]:
    """Refresh the report of ``name`` (or of every running experiment whose report is older than
    ``min_interval_s``): save it, record it in the state DB and (``mlflow``) log it to the
    experiment's MLflow run. Returns ``{name: report}``."""
    from freshrec.impressions import read_impressions

    store = ExperimentStore(settings.state_db)
    todo = [store.get(name)] if name else store.running()
    now = datetime.now(timezone.utc)
    out: dict[str, Any] = {}
    for exp in todo:
        last = (exp.report or {}).get("generated_at")
        if not name and last and (now - datetime.fromisoformat(last)).total_seconds() < min_interval_s:
            continue
        since = pd.Timestamp(exp.created_at)
        report = build_report(exp, read_impressions(settings, exp.name), experiment_events(settings, since), now)
        run_id = _log_run(settings, exp, report) if mlflow else exp.run_id
        report["mlflow_run_id"] = run_id
        path = settings.reports_dir / "experiments" / f"{exp.name}.json"
        atomic_write_text(path, json.dumps(report, indent=2, default=str))
        store.set_report(exp.name, report, run_id)
        out[exp.name] = report
        log.info("experiment %s: %s", exp.name, report["decision"]["reason"])
    return out


def _log_run(settings: Settings, exp: Experiment, report: dict[str, Any]) -> str:
    """Each report is one MLflow run (tag ``freshrec.kind=experiment`` and ``freshrec.experiment``
    = its name, so the MLflow UI lists and compares an experiment's reports over time): its
    numbers as metrics, the plot of the decision metric over time, and the report itself."""
    from freshrec.models import tracking

    with tracking.tracking(settings) as client:
        run_id = tracking.start_run(client, KIND, f"experiment {exp.name} {report['generated_at']}",
                                    {"mode": exp.mode, "variants": json.dumps(exp.variants), "split": exp.split,
                                     "traffic": exp.traffic, "metric": exp.metric, "started_at": exp.created_at},
                                    tags={"freshrec.experiment": exp.name, "freshrec.verdict": report["decision"]["verdict"],
                                          "freshrec.previous_report_run": exp.run_id or ""})
        tracking.log_metrics(client, run_id, _run_metrics(report))
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "metric_over_time.png"
            plot_timeline(report, plot)
            client.log_artifact(run_id, str(plot), "experiment")
            (Path(tmp) / "report.json").write_text(json.dumps(report, indent=2, default=str))
            client.log_artifact(run_id, str(Path(tmp) / "report.json"), "experiment")
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _run_metrics(report: dict[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {"exposed_users": report["exposed_users"], "impressions": report["impressions"]}
    if report["mode"] == "ab":
        for variant, users in report["users"].items():
            metrics[f"users_{variant}"] = users
        metrics["srm_p_value"] = report["srm"]["p_value"]
        for c in report["comparisons"]:
            for key in ("control", "treatment", "difference", "ci_low", "ci_high", "always_valid_p"):
                if c[key] is not None:
                    metrics[f"{c['metric']}_{key}"] = c[key]
    else:
        pref = report["preference"]
        for key in ("share", "ci_low", "ci_high", "p_value"):
            if pref.get(key) is not None:
                metrics[f"preference_{key}"] = pref[key]
    return metrics


def plot_timeline(report: dict[str, Any], path: Path) -> None:
    """The decision metric over time with its 95% interval (A/B: the difference; interleave:
    the treatment's preference share), against the line of no effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["timeline"] if r.get("ci_low") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ab = report["mode"] == "ab"
    value = "difference" if ab else "share"
    if rows:
        at = pd.to_datetime([r["at"] for r in rows])
        ax.fill_between(at, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.25, label="95% interval")
        ax.plot(at, [r[value] for r in rows], marker="o", label=value)
    ax.axhline(0.0 if ab else 0.5, color="black", lw=0.8)
    variants = list(report["variants"])
    ax.set_title(f"{report['experiment']}: " + (f"{report['metric']}, {variants[1]} - {variants[0]}" if ab
                                                 else f"preference share of {variants[1]}"))
    ax.set_xlabel("time")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- promote ----------------------------------------------------------------------------------

def promote(settings: Settings, name: str, variant: str | None = None) -> dict[str, Any]:
    """Move alias ``champion`` to the winning variant's model version (``variant``: this one,
    whatever the report says), record the decision and its evidence on that version, make its
    published version live, and stop the experiment."""
    from freshrec.models import tracking
    from freshrec.serving import open_store

    store = ExperimentStore(settings.state_db)
    exp = store.get(name)
    report = report_step(settings, name)[name]
    winner = variant or report["decision"]["winner"]
    if winner is None:
        raise UserError(f"experiment {name} has no winner yet ({report['decision']['reason']}); "
                        "run it longer, or name the variant with --variant")
    if winner not in exp.variants:
        raise UserError(f"experiment {name} has no variant {winner!r} (it has {', '.join(exp.variants)})")
    source = exp.sources.get(winner) or {}
    if source.get("kind") != "model":
        raise UserError(f"variant {winner} serves the {source.get('name') or exp.variants[winner]} baseline: only a "
                        "registered model version can become champion")
    evidence = {"experiment": name, "variant": winner, "decision": report["decision"], "report": f"reports/experiments/{name}.json",
                "mlflow_run_id": report.get("mlflow_run_id"), "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tracking.tracking(settings) as client:
        before = tracking.champion_version(client)
        client.set_registered_model_alias(tracking.REGISTERED_MODEL, tracking.CHAMPION, source["version"])
        client.set_model_version_tag(tracking.REGISTERED_MODEL, source["version"], "freshrec.promoted_by_experiment", name)
        client.set_model_version_tag(tracking.REGISTERED_MODEL, source["version"], "freshrec.experiment_decision",
                                     json.dumps(evidence)[:5000])
    version = exp.versions.get(winner)
    with open_store(settings.serving) as serving:
        live = serving.live_version()
        if version and version != live:
            live = serving.rollback(version)
    store.set_decision(name, evidence)
    store.stop(name)
    report_step(settings, name)  # the final report, and the MLflow run finished
    return {"experiment": name, "winner": winner, "champion": {"before": before, "after": source["version"]},
            "live_version": live, "reason": report["decision"]["reason"]}


# -- text -------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_report(report: dict[str, Any]) -> str:
    variants = list(report["variants"])
    lines = [f"experiment {report['experiment']} ({report['mode']}, {report['state']}), metric {report['metric']}",
             "  variants: " + ", ".join(f"{v}={e['spec']}" for v, e in report["variants"].items())
             + f"; split {report['split']}; traffic {report['traffic']:.0%}",
             f"  started {report['started_at']}; report of {report['generated_at']}",
             f"  exposed users {report['exposed_users']:,}; impressions {report['impressions']:,}; credited events "
             + (", ".join(f"{k} {v:,}" for k, v in report["credited_events"].items()) or "none")]
    if report["mode"] == "ab":
        srm = report["srm"]
        lines.append(f"  users per variant {report['users']}; sample-ratio check p = {srm['p_value']:.3g}"
                     + ("  ** MISMATCH **" if srm["mismatch"] else ""))
        lines.append(f"  {'metric':<20} {variants[0]:>12} {variants[1]:>12} {'difference':>11}  {'95% interval':<23} "
                     f"{'p':>7} {'always-valid p':>15}")
        for c in report["comparisons"]:
            interval = f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"
            lines.append(f"  {c['metric']:<20} {_pct(c['control']):>12} {_pct(c['treatment']):>12} "
                         f"{_pct(c['difference']):>11}  {interval:<23} {_pct(c['p_value']):>7} {_pct(c['always_valid_p']):>15}")
    else:
        pref = report["preference"]
        lines.append(f"  wins per team {pref['wins']}, ties {pref['ties']}; {variants[1]}'s share {_pct(pref['share'])} "
                     f"[{_pct(pref['ci_low'])}, {_pct(pref['ci_high'])}], p = {_pct(pref['p_value'])}")
    lines.append(f"  decision: {report['decision']['verdict']}: {report['decision']['reason']}")
    return "\n".join(lines)


__all__ = ["build_report", "report_step", "promote", "format_report", "experiment_events"]
