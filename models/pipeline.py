"""The training step as one call: split, baselines, model, tracking, promotion gate.

A pipeline task calls ``train_and_gate(settings)`` (events read from lake/events) or passes the
events DataFrame itself. Each baseline and the model get their own MLflow run on the same
window; the model is registered as ``freshrec`` (alias ``challenger``) and the gate moves
``champion``. The returned report says what to publish: the model version that holds
``champion`` or, when no model ever passed, the best baseline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
from freshrec.models.baselines import EASE, CategoryPopularity, CooccurrenceKNN, Popularity, Recommender, RepeatBuy, Trending
from freshrec.models.data import Catalogue, Histories, normalize_events, read_lake_events
from freshrec.models.evaluate import DEFAULT_KS, EvalResult, evaluate
from freshrec.models.gate import GateDecision, apply_decision, decide
from freshrec.models.seqrec import SeqRec, SeqRecConfig
from freshrec.models.split import DEFAULT_TARGET_EVENT_TYPES, EvalSet, build_eval_set, holdout_window, time_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Knobs of the training step. ``from_settings`` fills them from Settings."""

    window_days: float = 14.0  # the held-out test window (and the model's validation window before it)
    target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES
    min_target_users: int = 50  # below this many users with purchase/cart targets, all item events count
    ks: tuple[int, ...] = DEFAULT_KS
    gate_metric: str = "ndcg_at_10"
    gate_tolerance: float = 0.01  # fraction of the champion's metric a new model may trail it by
    ease_max_items: int = 10_000  # EASE needs a dense items x items inverse
    ease_l2: float = 500.0
    knn_neighbors: int = 100
    max_validation_users: int = 3000
    max_test_users: int | None = None
    register: bool = True
    model: SeqRecConfig = field(default_factory=SeqRecConfig)

    @classmethod
    def from_settings(cls, settings) -> "TrainingConfig":
        """The knobs a user sets (docs/settings.md) from ``settings``; the rest keep their defaults."""
        model = SeqRecConfig(
            max_len=settings.sequence_length,
            horizon_days=settings.eval_window_days,
            exclude_seen=settings.exclude_seen,
            event_weights=dict(settings.event_weights),
            trend_days=settings.trending_window_days,
            epochs=settings.model_epochs,
            seed=settings.model_seed,
            dim=settings.model_dim,
        )
        return cls(window_days=settings.eval_window_days, gate_tolerance=settings.gate_tolerance,
                   ease_max_items=settings.ease_max_items, model=model)


@dataclass
class TrainingReport:
    window: dict[str, Any]
    baselines: dict[str, dict[str, Any]]  # name -> run_id, metrics, seconds
    model: dict[str, Any]  # run_id, version, metrics, train_seconds, examples_per_second
    champion: dict[str, Any] | None  # the previous champion re-evaluated on this window
    decision: GateDecision
    publish: dict[str, Any]  # {"kind": "model", "version": ...} or {"kind": "baseline", "name": ...}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str, indent=2)


def make_baselines(config: TrainingConfig, exclude_seen: str, n_items: int, event_weights: dict[str, float] | None,
                   trending_days: float = 7.0) -> list[Recommender]:
    """The baselines evaluated beside the model: repeat-buy only where seen items may be shown
    (EXCLUDE_SEEN=none), EASE only for catalogues up to ``ease_max_items``."""
    out: list[Recommender] = [
        Popularity(event_weights=event_weights),
        CategoryPopularity(event_weights=event_weights),
        Trending(window_days=trending_days, event_weights=event_weights),
        CooccurrenceKNN(n_neighbors=config.knn_neighbors, event_weights=event_weights),
    ]
    if exclude_seen == "none":
        out.append(RepeatBuy(event_weights=event_weights))
    if n_items <= config.ease_max_items:
        out.append(EASE(l2=config.ease_l2, max_items=config.ease_max_items))
    return out


def prepare_window(events: pd.DataFrame, config: TrainingConfig, exclude_seen: str,
                   items: pd.DataFrame | None = None) -> EvalSet:
    """The held-out window every recommender is evaluated on."""
    ev = normalize_events(events)
    split = time_split(ev, config.window_days, config.target_event_types, config.min_target_users)
    catalogue = Catalogue.from_events(split.train, items)
    return build_eval_set(split, exclude_seen, catalogue, max_users=config.max_test_users, seed=config.model.seed)


def train_model(eval_set: EvalSet, config: TrainingConfig, on_epoch=None) -> SeqRec:
    """Fit SeqRec on the window's training data, validated on the window before it, and bind it
    to the full training log for scoring."""
    cfg = dataclasses.replace(config.model, exclude_seen=eval_set.exclude_seen, horizon_days=config.window_days,
                              target_event_types=eval_set.target_event_types)
    fit_histories, validation = holdout_window(eval_set.train, eval_set.catalogue, config.window_days, eval_set.exclude_seen,
                                               eval_set.target_event_types, config.min_target_users,
                                               config.max_validation_users, cfg.seed)
    model = SeqRec(cfg).fit(fit_histories, eval_set.catalogue, validation=validation, on_epoch=on_epoch)
    return model.prepare(eval_set.catalogue, eval_set.train)


def training_window(settings, config: TrainingConfig, events: pd.DataFrame | None = None,
                    items: pd.DataFrame | None = None, until: str | None = None) -> tuple[EvalSet, dict[str, Any]]:
    """The held-out window of the lake's events before ``until`` (or of ``events``), and its
    description for MLflow.

    Deterministic: the train, evaluate and gate tasks each rebuild the same window."""
    if events is None:
        events = read_lake_events(settings.events_path, end=pd.Timestamp(until) if until else None)
    eval_set = prepare_window(events, config, settings.exclude_seen, items)
    window = {
        "cutoff": pd.Timestamp(eval_set.cutoff, unit="s", tz="UTC").isoformat(),
        "window_days": config.window_days, "exclude_seen": eval_set.exclude_seen,
        "target_event_types": ",".join(eval_set.target_event_types), "n_users": len(eval_set),
        "n_new_users": int(eval_set.is_new.sum()), "n_items": len(eval_set.catalogue),
        "n_train_events": int(len(eval_set.train.t)),
    }
    return eval_set, window


def _run_tags(window: dict[str, Any], batch_id: str | None) -> dict[str, str]:
    from freshrec.models import tracking

    tags = {tracking.WINDOW_TAG: tracking.window_tag(window)}
    if batch_id is not None:
        tags[tracking.BATCH_TAG] = batch_id
    return tags


def train_stage(settings, eval_set: EvalSet, window: dict[str, Any], config: TrainingConfig,
                trainer: Callable[..., SeqRec] | None = None, batch_id: str | None = None) -> tuple[SeqRec, dict[str, Any]]:
    """Fit the model (its own MLflow run, per-epoch loss and validation metrics) and register it
    as a new version of ``freshrec`` with alias ``challenger``. The run stays open for the
    evaluate and gate stages; a failure marks it FAILED."""
    from freshrec.models import tracking

    trainer = trainer or train_model
    with tracking.tracking(settings) as client:
        run_id = tracking.start_run(client, "model", "seqrec", {**window, **config.model.to_params()},
                                    _run_tags(window, batch_id))
        try:
            model = trainer(eval_set, config, on_epoch=lambda epoch, row: tracking.log_metrics(client, run_id, row, step=epoch))
            tracking.log_metrics(client, run_id, {"train_seconds": model.train_seconds,
                                                  "examples_per_second": model.examples_per_second,
                                                  "n_examples": model.n_examples, "best_epoch": model.best_epoch,
                                                  "explore_offset": model.explore_offset})
            version = tracking.log_and_register_model(client, run_id, model) if config.register else None
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
    return model, {"run_id": run_id, "version": version, "window": window, "train_seconds": model.train_seconds,
                   "examples_per_second": model.examples_per_second, "best_epoch": model.best_epoch}


def load_trained(settings, trained: dict[str, Any], eval_set: EvalSet) -> SeqRec:
    """The registered version ``train_stage`` produced, bound to ``eval_set``'s catalogue and log."""
    from freshrec.models import tracking

    if trained.get("version") is None:
        raise ValueError("the trained model was not registered; nothing to evaluate")
    with tracking.tracking(settings):
        model = tracking.load_model_version(trained["version"])
    return model.prepare(eval_set.catalogue, eval_set.train)


def evaluate_stage(settings, eval_set: EvalSet, window: dict[str, Any], config: TrainingConfig, model: SeqRec,
                   trained: dict[str, Any], batch_id: str | None = None) -> dict[str, Any]:
    """Evaluate every baseline (one MLflow run each), the new model and the current champion on
    the same window; log the model's metrics and plots on its run. A rerun for the same batch
    replaces that batch's baseline runs instead of adding more."""
    from freshrec.models import tracking

    run_id = trained["run_id"]
    results: dict[str, EvalResult] = {}
    baselines: dict[str, dict[str, Any]] = {}
    with tracking.tracking(settings) as client:
        try:
            for old in tracking.batch_runs(client, "baseline", batch_id) if batch_id is not None else ():
                client.delete_run(old.info.run_id)
            for rec in make_baselines(config, eval_set.exclude_seen, len(eval_set.catalogue),
                                      dict(settings.event_weights), settings.trending_window_days):
                started = time.perf_counter()
                rec.fit(eval_set.train, eval_set.catalogue)
                result = evaluate(rec, eval_set, config.ks)
                b_run = tracking.start_run(client, "baseline", rec.name, {**window, **rec.params()},
                                           {**_run_tags(window, batch_id), "freshrec.baseline": rec.name})
                tracking.log_metrics(client, b_run, {**result.metrics,
                                                     "fit_seconds": time.perf_counter() - started - result.seconds})
                client.set_terminated(b_run)
                results[rec.name] = result
                baselines[rec.name] = {"run_id": b_run, "metrics": result.metrics, "seconds": result.seconds}

            result = evaluate(model, eval_set, config.ks)
            results["seqrec"] = result
            tracking.log_metrics(client, run_id, result.metrics)
            tracking.log_plots(client, run_id, eval_set, results, focus="seqrec")

            champion = None
            champion_version = tracking.champion_version(client) if config.register else None
            if champion_version is not None and champion_version != trained.get("version"):
                previous = tracking.load_model_version(champion_version)
                previous.prepare(eval_set.catalogue, eval_set.train)
                champion = {"version": champion_version, "metrics": evaluate(previous, eval_set, config.ks).metrics}
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
    return {"run_id": run_id, "version": trained.get("version"), "window": window, "metrics": result.metrics,
            "baselines": baselines, "champion": champion}


def gate_stage(settings, config: TrainingConfig, trained: dict[str, Any], evaluated: dict[str, Any]) -> TrainingReport:
    """The promotion gate on the evaluate stage's numbers; closes the model run."""
    from freshrec.models import tracking

    run_id, version, champion = trained["run_id"], trained.get("version"), evaluated["champion"]
    metric = config.gate_metric
    with tracking.tracking(settings) as client:
        try:
            decision = decide(
                evaluated["metrics"].get(metric),
                {name: b["metrics"][metric] for name, b in evaluated["baselines"].items()},
                None if champion is None else champion["metrics"].get(metric), config.gate_tolerance, metric)
            apply_decision(client, decision, tracking.REGISTERED_MODEL, version, run_id)
            client.set_terminated(run_id)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise

    if decision.promote:
        publish = {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": version, "run_id": run_id}
    elif decision.publish == "champion":
        publish = {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": champion["version"] if champion else None}
    else:
        best = decision.best_baseline
        publish = {"kind": "baseline", "name": best, "run_id": evaluated["baselines"][best]["run_id"]}
    return TrainingReport(
        window=trained["window"], baselines=evaluated["baselines"],
        model={"run_id": run_id, "version": version, "metrics": evaluated["metrics"],
               "train_seconds": trained["train_seconds"], "examples_per_second": trained["examples_per_second"],
               "best_epoch": trained["best_epoch"]},
        champion=champion, decision=decision, publish=publish,
    )


def serving_recommender(settings, publish: dict[str, Any], events: pd.DataFrame, items: pd.DataFrame | None = None,
                        config: TrainingConfig | None = None) -> tuple[Recommender, CooccurrenceKNN]:
    """What the gate chose to publish, bound to the whole log: the model version (no retraining;
    item popularity and trend are read from the full log, new items join the catalogue with
    their category and price), or the best baseline refit on the full log. Also returns the
    co-occurrence kNN of the full log, which the similar-items lists come from."""
    from freshrec.models import tracking

    config = config or TrainingConfig.from_settings(settings)
    ev = normalize_events(events)
    if ev.empty:
        raise ValueError("no item events to score from")
    catalogue = Catalogue.from_events(ev, items)
    histories = Histories.from_events(ev, catalogue)
    weights = dict(settings.event_weights)
    baselines = {b.name: b for b in make_baselines(config, settings.exclude_seen, len(catalogue), weights,
                                                   settings.trending_window_days)}
    if publish.get("kind") == "model" and publish.get("version") is not None:
        with tracking.tracking(settings):
            rec = tracking.load_model_version(str(publish["version"]))
        rec.prepare(catalogue, histories)
    else:
        name = publish.get("name") or "popularity"
        if name not in baselines:  # e.g. EASE chosen on a catalogue that has since outgrown it
            log.warning("baseline %r cannot be fit on the full log (have: %s); publishing popularity",
                        name, ", ".join(baselines))
            name = "popularity"
        rec = baselines[name].fit(histories, catalogue)
    knn = rec if isinstance(rec, CooccurrenceKNN) else baselines["cooccurrence_knn"].fit(histories, catalogue)
    return rec, knn


def train_and_gate(settings, events: pd.DataFrame | None = None, config: TrainingConfig | None = None,
                   items: pd.DataFrame | None = None, trainer: Callable[..., SeqRec] | None = None) -> TrainingReport:
    """The three stages in one call (the DAG runs them as separate tasks): split, train and
    register the model, evaluate it beside every baseline and the champion on the same window,
    and run the promotion gate (alias champion).

    ``trainer(eval_set, config, on_epoch)`` returns the fitted model (default ``train_model``);
    passing another one gates any model on the same protocol.
    """
    config = config or TrainingConfig.from_settings(settings)
    eval_set, window = training_window(settings, config, events, items)
    model, trained = train_stage(settings, eval_set, window, config, trainer)
    evaluated = evaluate_stage(settings, eval_set, window, config, model, trained)
    return gate_stage(settings, config, trained, evaluated)
