"""The training step as one call: windows, baselines, model, tracking, promotion gate.

A pipeline task calls ``train_and_gate(settings)`` (events read from lake/events) or passes the
events DataFrame itself. The model (``model_kind``: the two-stage ranker or SeqRec) is trained on
the newest window and registered as ``freshrec`` (alias ``challenger``); each baseline and the
model get their own MLflow run with their metrics on every evaluation window (rolling origin or
a random holdout) and the mean over them; the gate moves ``champion`` (models/README.md says how
it decides). The returned report says what to publish: the model version that holds
``champion`` or, when no model ever passed, the best baseline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from freshrec.models.baselines import (
    EASE,
    CategoryPopularity,
    CooccurrenceKNN,
    Popularity,
    Recommender,
    RepeatBuy,
    Trending,
    UserKNN,
)
from freshrec.models.candidates import CandidateConfig
from freshrec.models.data import Catalogue, Histories, normalize_events
from freshrec.models.evaluate import DEFAULT_KS, EvalResult, evaluate
from freshrec.models.gate import GateDecision, apply_decision, decide
from freshrec.models.metrics import per_user_metrics
from freshrec.models.protocols import choose_protocol, random_holdout, rolling_cutoffs, thin_evidence
from freshrec.models.ranker import RankerConfig, TwoStageRanker
from freshrec.models.seqrec import SeqRec, SeqRecConfig
from freshrec.models.split import DEFAULT_TARGET_EVENT_TYPES, EvalSet, holdout_window

log = logging.getLogger(__name__)


MODEL_KINDS = ("two_stage", "seqrec")
PROTOCOLS = ("auto", "time", "random")


@dataclass(frozen=True)
class TrainingConfig:
    """Knobs of the training step. ``from_settings`` fills them from Settings."""

    window_days: float = 14.0  # the held-out test window (and the model's validation window before it)
    target_event_types: tuple[str, ...] = DEFAULT_TARGET_EVENT_TYPES
    min_target_users: int = 50  # below this many users with purchase/cart targets, all item events count
    ks: tuple[int, ...] = DEFAULT_KS
    model_kind: str = "two_stage"  # the candidate: "two_stage" (candidates + LightGBM ranker) or "seqrec"
    protocol: str = "auto"  # "time" (rolling origin), "random" (per-user holdout) or "auto" (choose_protocol)
    n_cutoffs: int = 3  # rolling-origin windows, newest last (fewer when the log is too short for them)
    holdout_fraction: float = 0.2  # random protocol: share of each user's items held out
    min_test_users: int = 200  # per window; below it the gate does not promote
    bootstrap_resamples: int = 1000
    gate_metric: str = "ndcg_at_10"
    gate_tolerance: float = 0.01  # fraction of the champion's metric a new model may trail it by
    ease_max_items: int = 10_000  # EASE needs a dense items x items inverse
    ease_l2: float = 500.0
    knn_neighbors: int = 100
    max_validation_users: int = 3000
    max_test_users: int | None = None
    register: bool = True
    model: SeqRecConfig = field(default_factory=SeqRecConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)

    def __post_init__(self) -> None:
        if self.model_kind not in MODEL_KINDS:
            raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {self.model_kind!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    @classmethod
    def from_settings(cls, settings) -> "TrainingConfig":
        """The knobs a user sets (docs/settings.md) from ``settings``; the rest keep their defaults."""
        weights = dict(settings.event_weights)
        model = SeqRecConfig(
            max_len=settings.sequence_length,
            horizon_days=settings.eval_window_days,
            exclude_seen=settings.exclude_seen,
            event_weights=weights,
            trend_days=settings.trending_window_days,
            epochs=settings.model_epochs,
            seed=settings.model_seed,
            dim=settings.model_dim,
        )
        ranker = RankerConfig(candidates=CandidateConfig(event_weights=weights, trending_days=settings.trending_window_days),
                              seed=settings.model_seed)
        return cls(window_days=settings.eval_window_days, gate_tolerance=settings.gate_tolerance,
                   ease_max_items=settings.ease_max_items, model_kind=settings.model_kind, protocol=settings.eval_protocol,
                   n_cutoffs=settings.eval_cutoffs, min_test_users=settings.min_test_users, model=model, ranker=ranker)


@dataclass
class TrainingReport:
    window: dict[str, Any]
    baselines: dict[str, dict[str, Any]]  # name -> run_id, metrics, seconds
    model: dict[str, Any]  # run_id, version, metrics, train_seconds, examples_per_second
    champion: dict[str, Any] | None  # the previous champion re-evaluated on the newest window
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
        UserKNN(event_weights=event_weights),
    ]
    if exclude_seen == "none":
        out.append(RepeatBuy(event_weights=event_weights))
    if n_items <= config.ease_max_items:
        out.append(EASE(l2=config.ease_l2, max_items=config.ease_max_items))
    return out


def evaluation_folds(events: pd.DataFrame, config: TrainingConfig, exclude_seen: str,
                     items: pd.DataFrame | None = None) -> tuple[list[EvalSet], dict[str, Any]]:
    """The windows every recommender is evaluated on, newest last, and how they were chosen.

    Time protocol: ``config.n_cutoffs`` rolling-origin folds (protocols.rolling_cutoffs), fewer
    when the log is too short for them. Random protocol (ratings dumps): one per-user holdout.
    ``config.protocol="auto"`` lets protocols.choose_protocol read the log and say why."""
    ev = events if "t" in events else normalize_events(events)
    if config.protocol == "auto":
        protocol, reason = choose_protocol(ev, config.window_days)
    else:
        protocol, reason = config.protocol, f"set in settings (eval_protocol={config.protocol})"
    common = dict(exclude_seen=exclude_seen, target_event_types=config.target_event_types,
                  min_target_users=config.min_target_users, items=items, max_users=config.max_test_users,
                  seed=config.model.seed)
    if protocol == "random":
        return [random_holdout(ev, config.holdout_fraction, **common)], {"protocol": protocol, "protocol_reason": reason}
    n = config.n_cutoffs
    while True:
        try:
            folds = rolling_cutoffs(ev, n, config.window_days, **common)
            break
        except ValueError:
            if n <= 1:
                raise
            n -= 1
    if n < config.n_cutoffs:
        reason += f"; the log holds {n} of the {config.n_cutoffs} cutoffs asked for"
    return [f.eval_set for f in folds], {"protocol": protocol, "protocol_reason": reason}


def prepare_window(events: pd.DataFrame, config: TrainingConfig, exclude_seen: str,
                   items: pd.DataFrame | None = None) -> EvalSet:
    """The newest window of ``evaluation_folds``: what the model is trained for and registered on."""
    return evaluation_folds(events, config, exclude_seen, items)[0][-1]


def train_model(eval_set: EvalSet, config: TrainingConfig, on_epoch=None) -> Recommender:
    """The candidate of ``config.model_kind`` fitted on the window's training data and bound to it."""
    if config.model_kind == "two_stage":
        return train_ranker(eval_set, config)
    return train_seqrec(eval_set, config, on_epoch)


def ranker_config(eval_set: EvalSet, config: TrainingConfig) -> RankerConfig:
    """``config.ranker`` under the window's rules: its exclusion, target types and protocol (the
    labels are drawn inside the training data the way the window itself was drawn)."""
    return dataclasses.replace(config.ranker, exclude_seen=eval_set.exclude_seen, label_window_days=config.window_days,
                               target_event_types=eval_set.target_event_types, min_target_users=config.min_target_users,
                               label_protocol=eval_set.protocol, label_fraction=config.holdout_fraction)


def train_ranker(eval_set: EvalSet, config: TrainingConfig) -> TwoStageRanker:
    """The two-stage ranker fitted on the window's training data and bound to it."""
    return TwoStageRanker(ranker_config(eval_set, config)).fit(eval_set.train, eval_set.catalogue)


def train_seqrec(eval_set: EvalSet, config: TrainingConfig, on_epoch=None) -> SeqRec:
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
                    items: pd.DataFrame | None = None, until: str | None = None) -> tuple[list[EvalSet], dict[str, Any]]:
    """The evaluation windows of the lake's events before ``until`` (or of ``events``), newest
    last, and their description for MLflow (the newest window's cutoff and users).

    Deterministic: the train, evaluate and gate tasks each rebuild the same windows."""
    if events is None:
        from freshrec.lake import read_training_events

        events = read_training_events(settings, end=pd.Timestamp(until) if until else None)
    folds, how = evaluation_folds(events, config, settings.exclude_seen, items)
    eval_set = folds[-1]
    window = {
        "cutoff": pd.Timestamp(eval_set.cutoff, unit="s", tz="UTC").isoformat(),
        "window_days": config.window_days, "exclude_seen": eval_set.exclude_seen,
        "target_event_types": ",".join(eval_set.target_event_types), "n_users": len(eval_set),
        "n_new_users": int(eval_set.is_new.sum()), "n_items": len(eval_set.catalogue),
        "n_train_events": int(len(eval_set.train.t)), **how,
        "cutoffs": ",".join(pd.Timestamp(f.cutoff, unit="s", tz="UTC").isoformat() for f in folds),
        "n_users_per_cutoff": ",".join(str(len(f)) for f in folds),
    }
    return folds, window


def _run_tags(window: dict[str, Any], batch_id: str | None) -> dict[str, str]:
    from freshrec.models import tracking

    tags = {tracking.WINDOW_TAG: tracking.window_tag(window)}
    if batch_id is not None:
        tags[tracking.BATCH_TAG] = batch_id
    return tags


def train_stage(settings, eval_set: EvalSet, window: dict[str, Any], config: TrainingConfig,
                trainer: Callable[..., Recommender] | None = None, batch_id: str | None = None) -> tuple[Recommender, dict[str, Any]]:
    """Fit the model on the newest window (its own MLflow run with its learning curve) and
    register it as a new version of ``freshrec`` with alias ``challenger``. The run stays open
    for the evaluate and gate stages; a failure marks it FAILED."""
    from freshrec.models import tracking

    trainer = trainer or train_model
    params = config.model.to_params() if config.model_kind == "seqrec" else TwoStageRanker(config.ranker).params()
    with tracking.tracking(settings) as client:
        run_id = tracking.start_run(client, "model", config.model_kind, {**window, "model_kind": config.model_kind, **params},
                                    _run_tags(window, batch_id))
        try:
            model = trainer(eval_set, config, on_epoch=lambda epoch, row: tracking.log_metrics(client, run_id, row, step=epoch))
            if hasattr(model, "learning_curve"):
                tracking.log_curve(client, run_id, model.learning_curve())
            summary = model.training_summary()
            tracking.log_metrics(client, run_id, summary)
            version = tracking.log_and_register_model(client, run_id, model) if config.register else None
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
    return model, {"run_id": run_id, "version": version, "window": window, "model_kind": config.model_kind,
                   "train_seconds": summary["train_seconds"], "examples_per_second": summary["examples_per_second"],
                   "best_epoch": summary["best_epoch"]}


def load_trained(settings, trained: dict[str, Any], eval_set: EvalSet) -> Recommender:
    """The registered version ``train_stage`` produced, bound to ``eval_set``'s catalogue and log."""
    from freshrec.models import tracking

    if trained.get("version") is None:
        raise ValueError("the trained model was not registered; nothing to evaluate")
    with tracking.tracking(settings):
        model = tracking.load_model_version(trained["version"])
    return model.prepare(eval_set.catalogue, eval_set.train)


def _mean_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """The mean over windows of each metric (over the windows that have it), and each window's
    value as ``cutoff_<i>/<metric>`` (1 = the oldest) when there are several."""
    keys = sorted({k for m in per_fold for k in m})
    out = {k: float(np.mean([m[k] for m in per_fold if k in m])) for k in keys}
    if len(per_fold) > 1:
        out.update({f"cutoff_{i + 1}/{k}": v for i, m in enumerate(per_fold) for k, v in m.items() if "/" not in k})
    return out


def _train_on_earlier_window(trainer, eval_set: EvalSet, config: TrainingConfig) -> Recommender | None:
    """The candidate trained on an earlier window's own training data; None when that data is
    too short to train on (the window is then left out of the comparison, for every recommender)."""
    try:
        return trainer(eval_set, config)
    except ValueError as exc:
        log.warning("window at %s left out: %s", pd.Timestamp(eval_set.cutoff, unit="s", tz="UTC"), exc)
        return None


def evaluate_stage(settings, folds: list[EvalSet], window: dict[str, Any], config: TrainingConfig, model: Recommender,
                   trained: dict[str, Any], batch_id: str | None = None,
                   trainer: Callable[..., Recommender] | None = None) -> dict[str, Any]:
    """Evaluate every baseline (one MLflow run each) and the candidate on every window, the
    current champion on the newest one, and the paired bootstrap of candidate - best baseline.

    The candidate of the newest window is the registered ``model``; on each earlier window a
    candidate of the same kind is trained on that window's own training data with ``trainer``
    (not registered), so no window is scored by a model that saw its test events. A rerun for
    the same batch replaces that batch's baseline runs instead of adding more."""
    from freshrec.models import tracking
    from freshrec.models.stats import mean_over_cutoffs

    trainer = trainer or train_model
    run_id, metric = trained["run_id"], config.gate_metric
    k = int(metric.rsplit("_", 1)[1])
    per_fold: dict[str, list[dict[str, float]]] = {}
    per_user: dict[str, list[np.ndarray]] = {}
    newest: dict[str, EvalResult] = {}
    params: dict[str, dict[str, Any]] = {}
    with tracking.tracking(settings) as client:
        try:
            kept, dropped = [], 0
            for i, eval_set in enumerate(folds):
                is_newest = i == len(folds) - 1
                candidate = model if is_newest else _train_on_earlier_window(trainer, eval_set, config)
                if candidate is None:
                    dropped += 1
                    continue
                kept.append(eval_set)
                recs = make_baselines(config, eval_set.exclude_seen, len(eval_set.catalogue), dict(settings.event_weights),
                                      settings.trending_window_days)
                for rec in [*recs, candidate]:
                    name = "candidate" if rec is candidate else rec.name
                    started = time.perf_counter()
                    if rec is not candidate:
                        rec.fit(eval_set.train, eval_set.catalogue)
                    fitted = time.perf_counter() - started
                    result = evaluate(rec, eval_set, config.ks)
                    per_fold.setdefault(name, []).append(result.metrics if rec is candidate
                                                         else {**result.metrics, "fit_seconds": fitted})
                    per_user.setdefault(name, []).append(per_user_metrics(result.recs, eval_set.targets, (k,))[metric])
                    if is_newest:
                        newest[rec.name], params[rec.name] = result, rec.params()
            folds = kept
            for old in tracking.batch_runs(client, "baseline", batch_id) if batch_id is not None else ():
                client.delete_run(old.info.run_id)
            baselines: dict[str, dict[str, Any]] = {}
            for name, rows in per_fold.items():
                if name == "candidate":
                    continue
                metrics = _mean_metrics(rows)
                b_run = tracking.start_run(client, "baseline", name, {**window, **params[name]},
                                           {**_run_tags(window, batch_id), "freshrec.baseline": name})
                tracking.log_metrics(client, b_run, metrics)
                client.set_terminated(b_run)
                baselines[name] = {"run_id": b_run, "metrics": metrics, "seconds": newest[name].seconds}

            metrics = _mean_metrics(per_fold["candidate"])
            tracking.log_metrics(client, run_id, metrics)
            tracking.log_plots(client, run_id, folds[-1], newest, focus=model.name)

            best = max(sorted(baselines), key=lambda name: baselines[name]["metrics"][metric])
            boot = mean_over_cutoffs(per_user["candidate"], per_user[best], n_resamples=config.bootstrap_resamples,
                                     seed=config.model.seed)
            difference = {"baseline": best, "estimate": boot.estimate, "lo": boot.lo, "hi": boot.hi,
                          "p_value": boot.p_value, "confidence": boot.confidence}
            checks = [thin_evidence(f, config.min_test_users) for f in folds]
            thin = "; ".join(reason for is_thin, reason in checks if is_thin) or None
            evidence = "; ".join(reason for _, reason in checks)
            if dropped:
                evidence += f"; {dropped} earlier window(s) left out: too little history before them to train on"

            champion = None
            champion_version = tracking.champion_version(client) if config.register else None
            if champion_version is not None and champion_version != trained.get("version"):
                previous = tracking.load_model_version(champion_version)
                previous.prepare(folds[-1].catalogue, folds[-1].train)
                champion = {"version": champion_version, "metrics": evaluate(previous, folds[-1], config.ks).metrics}
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
    return {"run_id": run_id, "version": trained.get("version"), "window": window, "metrics": metrics,
            "latest": per_fold["candidate"][-1], "baselines": baselines, "champion": champion,
            "difference": difference, "thin": thin, "evidence": evidence}


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
                None if champion is None else champion["metrics"].get(metric), config.gate_tolerance, metric,
                difference=evaluated.get("difference"), thin=evaluated.get("thin"), evidence=evaluated.get("evidence"),
                latest=evaluated.get("latest", {}).get(metric))
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
                   items: pd.DataFrame | None = None, trainer: Callable[..., Recommender] | None = None) -> TrainingReport:
    """The three stages in one call (the DAG runs them as separate tasks): split, train and
    register the model, evaluate it beside every baseline and the champion on the same window,
    and run the promotion gate (alias champion).

    ``trainer(eval_set, config, on_epoch)`` returns the fitted model (default ``train_model``);
    passing another one gates any model on the same protocol.
    """
    config = config or TrainingConfig.from_settings(settings)
    folds, window = training_window(settings, config, events, items)
    model, trained = train_stage(settings, folds[-1], window, config, trainer)
    evaluated = evaluate_stage(settings, folds, window, config, model, trained, trainer=trainer)
    return gate_stage(settings, config, trained, evaluated)
