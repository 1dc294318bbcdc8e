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
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd

from models.baselines import EASE, CategoryPopularity, CooccurrenceKNN, Popularity, Recommender, RepeatBuy, Trending
from models.data import Catalogue, normalize_events, read_lake_events
from models.evaluate import DEFAULT_KS, EvalResult, evaluate
from models.gate import GateDecision, apply_decision, decide
from models.seqrec import SeqRec, SeqRecConfig
from models.split import DEFAULT_TARGET_EVENT_TYPES, EvalSet, build_eval_set, holdout_window, time_split


@dataclass(frozen=True)
class TrainingConfig:
    """Knobs of the training step. ``from_settings`` fills them from Settings and FRESHREC_* variables."""

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
    def from_settings(cls, settings, env: Mapping[str, str] | None = None) -> "TrainingConfig":
        """Settings supply the shared knobs (exclude_seen, sequence_length, event weights, trending
        window); FRESHREC_EVAL_WINDOW_DAYS, FRESHREC_GATE_TOLERANCE, FRESHREC_EASE_MAX_ITEMS,
        FRESHREC_MODEL_EPOCHS, FRESHREC_MODEL_SEED and FRESHREC_MODEL_DIM the rest."""
        env = os.environ if env is None else env

        def read(name: str, cast, default):
            value = getattr(settings, name.lower(), None)
            raw = env.get(f"FRESHREC_{name}")
            return cast(raw) if raw not in (None, "") else (value if value is not None else default)

        window = read("EVAL_WINDOW_DAYS", float, cls.window_days)
        model = SeqRecConfig(
            max_len=settings.sequence_length,
            horizon_days=window,
            exclude_seen=settings.exclude_seen,
            event_weights=dict(settings.event_weights),
            trend_days=settings.trending_window_days,
            epochs=read("MODEL_EPOCHS", int, SeqRecConfig.epochs),
            seed=read("MODEL_SEED", int, SeqRecConfig.seed),
            dim=read("MODEL_DIM", int, SeqRecConfig.dim),
        )
        return cls(window_days=window, gate_tolerance=read("GATE_TOLERANCE", float, cls.gate_tolerance),
                   ease_max_items=read("EASE_MAX_ITEMS", int, cls.ease_max_items), model=model)


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


def train_and_gate(settings, events: pd.DataFrame | None = None, config: TrainingConfig | None = None,
                   items: pd.DataFrame | None = None, trainer: Callable[..., SeqRec] | None = None) -> TrainingReport:
    """Split, evaluate every baseline and the new model on the same window, track them in MLflow,
    register the model (alias challenger) and run the promotion gate (alias champion).

    ``trainer(eval_set, config, on_epoch)`` returns the fitted model (default ``train_model``);
    passing another one gates any model on the same protocol.
    """
    trainer = trainer or train_model
    from models import tracking

    config = config or TrainingConfig.from_settings(settings)
    if events is None:
        events = read_lake_events(settings.events_path)
    eval_set = prepare_window(events, config, settings.exclude_seen, items)
    window = {
        "cutoff": pd.Timestamp(eval_set.cutoff, unit="s", tz="UTC").isoformat(),
        "window_days": config.window_days, "exclude_seen": eval_set.exclude_seen,
        "target_event_types": ",".join(eval_set.target_event_types), "n_users": len(eval_set),
        "n_new_users": int(eval_set.is_new.sum()), "n_items": len(eval_set.catalogue),
        "n_train_events": int(len(eval_set.train.t)),
    }
    window_tag = {"freshrec.window": f"{window['cutoff']}/{config.window_days}d/{eval_set.exclude_seen}"}
    results: dict[str, EvalResult] = {}
    baseline_report: dict[str, dict[str, Any]] = {}
    with tracking.tracking(settings.tracking_uri) as client:
        for rec in make_baselines(config, eval_set.exclude_seen, len(eval_set.catalogue), dict(settings.event_weights),
                                  settings.trending_window_days):
            started = time.perf_counter()
            rec.fit(eval_set.train, eval_set.catalogue)
            result = evaluate(rec, eval_set, config.ks)
            run_id = tracking.start_run(client, "baseline", rec.name, {**window, **rec.params()},
                                        {**window_tag, "freshrec.baseline": rec.name})
            tracking.log_metrics(client, run_id, {**result.metrics, "fit_seconds": time.perf_counter() - started - result.seconds})
            client.set_terminated(run_id)
            results[rec.name] = result
            baseline_report[rec.name] = {"run_id": run_id, "metrics": result.metrics, "seconds": result.seconds}

        run_id = tracking.start_run(client, "model", "seqrec", {**window, **config.model.to_params()}, window_tag)
        try:
            model = trainer(eval_set, config, on_epoch=lambda epoch, row: tracking.log_metrics(client, run_id, row, step=epoch))
            result = evaluate(model, eval_set, config.ks)
            results["seqrec"] = result
            tracking.log_metrics(client, run_id, {**result.metrics, "train_seconds": model.train_seconds,
                                                  "examples_per_second": model.examples_per_second,
                                                  "n_examples": model.n_examples, "best_epoch": model.best_epoch,
                                                  "explore_offset": model.explore_offset})
            tracking.log_plots(client, run_id, eval_set, results, focus="seqrec")
            version = tracking.log_and_register_model(client, run_id, model) if config.register else None

            champion = None
            champion_version = tracking.champion_version(client) if config.register else None
            if champion_version is not None and champion_version != version:
                previous = tracking.load_model_version(champion_version)
                previous.prepare(eval_set.catalogue, eval_set.train)
                champ_metrics = evaluate(previous, eval_set, config.ks).metrics
                champion = {"version": champion_version, "metrics": champ_metrics}
            decision = decide(
                result.metrics[config.gate_metric],
                {name: r.metrics[config.gate_metric] for name, r in results.items() if name != "seqrec"},
                None if champion is None else champion["metrics"][config.gate_metric],
                config.gate_tolerance, config.gate_metric)
            apply_decision(client, decision, tracking.REGISTERED_MODEL, version, run_id)
            client.set_terminated(run_id)
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise

    if decision.promote:
        publish = {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": version, "run_id": run_id}
    elif decision.publish == "champion":
        publish = {"kind": "model", "name": tracking.REGISTERED_MODEL, "version": champion["version"] if champion else None}
    else:
        best = decision.best_baseline
        publish = {"kind": "baseline", "name": best, "run_id": baseline_report[best]["run_id"]}
    return TrainingReport(
        window=window, baselines=baseline_report,
        model={"run_id": run_id, "version": version, "metrics": result.metrics, "train_seconds": model.train_seconds,
               "examples_per_second": model.examples_per_second, "best_epoch": model.best_epoch},
        champion=champion, decision=decision, publish=publish,
    )
