"""Online model refresh: the champion learns from the events since it was trained, between full
batches (``freshrec run refresh``, the ``freshrec_model_refresh`` DAG).

One refresh:

1. **Declines**, with its reason and nothing registered, while a batch trains (the two share the
   ``model`` run lock), when there is no champion model (a baseline is published), after
   ``max_refreshes`` refreshes in a row on top of one full batch's model, once the catalogue has
   grown by more than ``refresh_max_item_growth`` since that model, or when the new events are
   too few to learn from and to judge on.
2. **Learns** from the champion's weights (no retraining from scratch): the new events are those
   after the champion's training data ended (a batch's model: its window's cutoff; a refreshed
   one: what it learned up to). The newest ``refresh_holdout_days`` of them are held out; the
   rest are learned from. The sequence model gets ID rows for new items and categories (copied
   from the unknown rows, so no score moves) and ``refresh_steps`` optimizer steps of its own
   loss on the new examples mixed with a replay share of older ones (``SeqRec.refresh``); the
   two-stage ranker gets ``refresh_trees`` more boosting rounds on the new labels with replay,
   and its candidate sources refitted (``TwoStageRanker.refresh``). Either way the popularity and
   trend statistics the model reads are re-read from the log.
3. **Judges** the refreshed model against the live one on the held-out slice, with the batch's
   metrics and gate (``gate.decide``): it must beat the best of the cheap baselines (popularity,
   trending) with a 95% paired-bootstrap interval above 0, on enough test users, and be at least
   the live model's value minus ``refresh_tolerance``.
4. **Registers** a new version of ``freshrec``, tagged with its parent version, the event range it
   learned from and its place in the chain (``freshrec.refresh.*``; the MLflow UI shows them on
   the version and on its run, whose description links the parent).
5. **Publishes** when promoted: every user is re-scored through the batch's own ``score`` and
   ``publish`` steps (the model changed, so any list may change); then ``champion`` moves. A
   refresh that is not promoted leaves the champion serving.

A rerun with the same champion and the same new events registers nothing new: it finds the
version by its ``freshrec.refresh.key`` tag (and finishes its publish if that was cut short).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from freshrec.fileio import atomic_write_text
from freshrec.settings import Settings

log = logging.getLogger(__name__)

PARENT_TAG = "freshrec.refresh.parent_version"
KEY_TAG = "freshrec.refresh.key"
DEPTH_TAG = "freshrec.refresh.depth"  # refreshes in a row on top of one full batch's model
FROM_TAG = "freshrec.refresh.events_from"
UNTIL_TAG = "freshrec.refresh.events_until"  # what the version learned up to (exclusive)
BATCH_ITEMS_TAG = "freshrec.refresh.batch_items"  # the catalogue size of the full batch's model


def _iso(epoch: int) -> str:
    return pd.Timestamp(int(epoch), unit="s", tz="UTC").isoformat()


def _declined(reason: str, **extra: Any) -> dict[str, Any]:
    log.info("refresh declined: %s", reason)
    return {"refreshed": False, "declined": reason, **extra}


def refresh_step(settings: Settings) -> dict[str, Any]:
    """One online refresh of the champion (see the module docstring); what it did, or why not."""
    from freshrec.lake import run_lock

    with run_lock(settings, "model") as held:
        if not held:
            out = _declined("a full batch is training the model (or another refresh is running); the next run tries again")
        else:
            out = _refresh(settings)
    out = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **out}
    atomic_write_text(settings.reports_dir / "refresh.json", json.dumps(out, indent=2, default=str))  # freshrec status
    return out


def outcome_line(settings: Settings, since: str | None = None) -> str | None:
    """The last refresh's outcome in one line (``freshrec run refresh`` prints it), or None when
    none was recorded (at or after ``since``, an ISO time)."""
    path = settings.reports_dir / "refresh.json"
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if since is not None and str(out.get("at", "")) < since[:19]:
        return None
    return f"refresh {describe(out)}"


def describe(out: dict[str, Any]) -> str:
    """A refresh's outcome (``refresh_step``'s return value) in words."""
    if not out.get("refreshed"):
        return f"declined: {out.get('declined')}"
    verdict = "promoted and published" if out.get("promoted") else "registered, not promoted"
    return f"version {out.get('version')} from {out.get('parent_version')} {verdict}: {out.get('reason')}"


def _lineage(client, version: str) -> dict[str, Any]:
    """What the champion ``version`` learned up to, how many refreshes it sits on, and the
    catalogue size of the full batch's model at the root of its chain."""
    from freshrec.models import tracking

    mv = client.get_model_version(tracking.REGISTERED_MODEL, version)
    tags = mv.tags or {}
    if UNTIL_TAG in tags:
        until = int(pd.Timestamp(tags[UNTIL_TAG]).timestamp())
    else:  # a full batch's model learned from the events before its window's cutoff
        until = int(pd.Timestamp(client.get_run(mv.run_id).data.params["cutoff"]).timestamp())
    return {"until": until, "depth": int(tags.get(DEPTH_TAG, 0)), "batch_items": int(tags[BATCH_ITEMS_TAG]) if BATCH_ITEMS_TAG in tags else None,
            "run_id": mv.run_id}


def _find_refresh(client, key: str) -> str | None:
    from freshrec.models import tracking

    found = client.search_model_versions(f"name = '{tracking.REGISTERED_MODEL}' and tags.`{KEY_TAG}` = '{key}'")
    return str(found[0].version) if found else None


def _refresh(settings: Settings) -> dict[str, Any]:
    from freshrec.features import read_catalogue
    from freshrec.lake import has_table, read_training_events
    from freshrec.models import tracking

    started = time.perf_counter()
    with tracking.tracking(settings) as client:
        champion = tracking.champion_version(client)
        if champion is None:
            return _declined("no champion model to refresh: the last batch published a baseline")
        lineage = _lineage(client, champion)
    if lineage["depth"] >= settings.max_refreshes:
        return _declined(f"version {champion} is refresh {lineage['depth']} in a row on top of a full batch's model "
                         f"(FRESHREC_MAX_REFRESHES={settings.max_refreshes}): waiting for the next full batch",
                         champion=champion)
    if not has_table(settings.events_path):
        return _declined("no clean events in the lake", champion=champion)
    events = read_training_events(settings)
    catalogue_df = read_catalogue(settings)
    items = catalogue_df.toPandas() if catalogue_df is not None else None
    return refresh_model(settings, champion, lineage, events, items, started)


def refresh_model(settings: Settings, champion: str, lineage: dict[str, Any], events: pd.DataFrame,
                  items: pd.DataFrame | None = None, started: float | None = None) -> dict[str, Any]:
    """Refresh ``champion`` (whose ``lineage`` is :func:`_lineage`'s) on ``events`` (the whole
    log; the part after ``lineage["until"]`` is new), judge, register and publish it."""
    from freshrec.models import tracking
    from freshrec.models.data import normalize_events
    from freshrec.models.pipeline import TrainingConfig
    from freshrec.models.protocols import rolling_cutoffs

    started = time.perf_counter() if started is None else started
    config = TrainingConfig.from_settings(settings)
    ev = normalize_events(events)
    since = lineage["until"]
    holdout = int(round(settings.refresh_holdout_days * 86_400))
    newest = int(ev["t"].max()) if len(ev) else since
    if newest - holdout <= since:
        return _declined(f"the events after {_iso(since)} span less than the held-out slice of "
                         f"{settings.refresh_holdout_days:g} days (newest {_iso(newest)}): nothing to learn from yet",
                         champion=champion)
    fold = rolling_cutoffs(ev, 1, settings.refresh_holdout_days, exclude_seen=settings.exclude_seen,
                           target_event_types=config.target_event_types, min_target_users=config.min_target_users,
                           items=items, max_users=config.max_test_users, seed=config.model.seed)[0].eval_set
    until = int(fold.cutoff)
    key = f"{champion}:{_iso(since)}:{_iso(until)}"
    with tracking.tracking(settings) as client:
        existing = _find_refresh(client, key)
        if existing is not None:
            log.info("refresh: version %s already learned these events (%s)", existing, key)
            return _finish(settings, client, existing, reused=True, started=started)
        model = tracking.load_model_version(champion)
    batch_items = lineage["batch_items"] or len(model.catalogue)
    growth = len(fold.catalogue) / batch_items - 1.0
    if growth > settings.refresh_max_item_growth:
        return _declined(f"the catalogue grew by {growth:.0%} since the full batch's model ({batch_items:,} -> "
                         f"{len(fold.catalogue):,} items; FRESHREC_REFRESH_MAX_ITEM_GROWTH={settings.refresh_max_item_growth:g}): "
                         "waiting for the next full batch", champion=champion)
    budget = {"steps": settings.refresh_steps} if model.name == "seqrec" else {"trees": settings.refresh_trees}
    try:
        learned = model.refresh(fold.train, fold.catalogue, since, replay_share=settings.refresh_replay_share,
                                seed=settings.model_seed, **budget)
    except ValueError as exc:
        return _declined(f"nothing to learn from the events since {_iso(since)}: {exc}", champion=champion)
    judged = judge(settings, config, champion, model, fold)
    tags = {PARENT_TAG: champion, KEY_TAG: key, DEPTH_TAG: str(lineage["depth"] + 1), FROM_TAG: _iso(since),
            UNTIL_TAG: _iso(until), BATCH_ITEMS_TAG: str(batch_items)}
    with tracking.tracking(settings) as client:
        params = {"model_kind": model.name, "parent_version": champion, "events_from": _iso(since), "events_until": _iso(until),
                  "holdout_days": settings.refresh_holdout_days, "replay_share": settings.refresh_replay_share,
                  "steps": settings.refresh_steps, "trees": settings.refresh_trees, "seed": settings.model_seed}
        run_id = tracking.start_run(
            client, "model", f"{model.name} refresh of v{champion}", params,
            {**tags, "mlflow.note.content": f"Online refresh of version {champion} (run {lineage['run_id']}) on the events "
                                             f"[{_iso(since)}, {_iso(until)}); judged on the {settings.refresh_holdout_days:g} "
                                             "days after them against the live model."})
        try:
            tracking.log_metrics(client, run_id, {**{f"refresh_{k}": float(v) for k, v in learned.items()},
                                                  **judged["metrics"], **{f"live/{k}": v for k, v in judged["live"].items()}})
            version = tracking.log_and_register_model(client, run_id, model, alias=None)
            for name, value in tags.items():
                client.set_model_version_tag(tracking.REGISTERED_MODEL, version, name, value)
            client.update_model_version(tracking.REGISTERED_MODEL, version,
                                        description=f"Refreshed from version {champion} on the events "
                                                    f"[{_iso(since)}, {_iso(until)}) (refresh {lineage['depth'] + 1} in a row).")
            from freshrec.models.gate import apply_decision

            apply_decision(client, judged["decision"], tracking.REGISTERED_MODEL, version, run_id, move_alias=False)
            client.set_terminated(run_id)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        log.info("refresh: version %s from %s: %s", version, champion, judged["decision"].reason)
        return _finish(settings, client, version, reused=False, started=started,
                       extra={"learned": learned, "metric": config.gate_metric, "refreshed_value": judged["decision"].candidate,
                              "live_value": judged["decision"].champion})


def judge(settings: Settings, config, champion: str, refreshed, fold) -> dict[str, Any]:
    """The refreshed model (``refresh`` left it bound to ``fold``'s catalogue and training log) and
    the live one (``champion``) on the held-out slice ``fold``: the batch's metrics, and
    ``gate.decide`` against the cheap baselines with the live model as the champion
    (``refresh_tolerance``)."""
    from freshrec.models import tracking
    from freshrec.models.baselines import Popularity, Trending
    from freshrec.models.evaluate import evaluate
    from freshrec.models.gate import decide
    from freshrec.models.metrics import per_user_metrics
    from freshrec.models.protocols import thin_evidence
    from freshrec.models.stats import paired_bootstrap

    metric = config.gate_metric
    k = int(metric.rsplit("_", 1)[1])
    with tracking.tracking(settings):
        live = tracking.load_model_version(champion)
    live.prepare(fold.catalogue, fold.train)
    weights = dict(settings.event_weights)
    results = {"refreshed": evaluate(refreshed, fold, config.ks), "live": evaluate(live, fold, config.ks)}
    baselines = {}
    for rec in (Popularity(event_weights=weights), Trending(window_days=settings.trending_window_days, event_weights=weights)):
        baselines[rec.name] = evaluate(rec.fit(fold.train, fold.catalogue), fold, config.ks)
    best = max(sorted(baselines), key=lambda name: baselines[name].metrics[metric])

    def per_user(result):
        return per_user_metrics(result.recs, fold.targets, (k,))[metric]

    boot = paired_bootstrap(per_user(results["refreshed"]), per_user(baselines[best]),
                            n_resamples=config.bootstrap_resamples, seed=config.model.seed)
    thin, evidence = thin_evidence(fold, config.min_test_users)
    decision = decide(results["refreshed"].metrics[metric], {n: r.metrics[metric] for n, r in baselines.items()},
                      results["live"].metrics[metric], settings.refresh_tolerance, metric,
                      difference={"baseline": best, "estimate": boot.estimate, "lo": boot.lo, "hi": boot.hi,
                                  "p_value": boot.p_value, "confidence": boot.confidence},
                      thin=evidence if thin else None, evidence=evidence)
    return {"decision": decision, "metrics": {n: v for n, v in results["refreshed"].metrics.items() if "/" not in n},
            "live": {n: v for n, v in results["live"].metrics.items() if "/" not in n}}


def _finish(settings: Settings, client, version: str, reused: bool, started: float,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Publish ``version`` when its gate promoted it and it is not champion yet (score and
    publish every user, then move ``champion``); the refresh's summary."""
    from freshrec.models import tracking
    from freshrec.models.gate import CHAMPION
    from freshrec.steps import publish_step, score_step

    mv = client.get_model_version(tracking.REGISTERED_MODEL, version)
    promoted = (mv.tags or {}).get("freshrec.gate.promoted") == "true"
    out: dict[str, Any] = {"refreshed": True, "version": version, "parent_version": (mv.tags or {}).get(PARENT_TAG),
                           "promoted": promoted, "reason": (mv.tags or {}).get("freshrec.gate.reason"), "reused": reused,
                           **(extra or {})}
    if promoted and tracking.champion_version(client) != version:
        gate = {"publish": {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": version}}
        scored = score_step(settings, f"refresh-v{version}", gate)
        out["published"] = publish_step(settings, scored)
        client.set_registered_model_alias(tracking.REGISTERED_MODEL, CHAMPION, version)
    out["seconds"] = round(time.perf_counter() - started, 1)
    log.info("refresh: %s", out)
    return out
