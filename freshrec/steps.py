"""Pipeline steps: the I/O around the pure jobs. DAG tasks call these and nothing else.

Each step takes Settings explicitly, is idempotent (outputs are overwritten, id maps only
grow by ids they lack) and returns a small JSON-able summary for logs and XCom. Re-scoring
without retraining (the micro-batch and the publish step's catch-up) is ``freshrec.rescore``;
reads of the feature tables are ``freshrec.features``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import shutil
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from freshrec.errors import QualityGateError, UserError
from freshrec.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from freshrec.lake import has_table, model_lock
from freshrec.ledger import Ledger
from freshrec.settings import Settings

log = logging.getLogger(__name__)


def clean_step(settings: Settings, batch_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Clean every landing file into lake/events; quarantine bad rows and unreadable files;
    record per-file counts.

    A full rebuild from the landing zone: the lake is rewritten with dynamic partition overwrite
    and the ledger's per-file counts are replaced, so a rerun changes nothing and counts never
    double. Which files are read is :func:`freshrec.intake.take_files`, shared with the
    micro-batch: a file still being written waits, an unreadable one is moved aside by name.
    """
    from pyspark.sql import functions as F

    from freshrec.intake import landing_files, take_files
    from freshrec.jobs.clean import clean_raw, read_landing
    from freshrec.lake import lake_lock
    from freshrec.spark import get_spark

    spark = get_spark(settings)
    # Micro-batches wait while the lake is rebuilt: every file they have added is in this
    # listing, so the rebuild replaces their rows instead of dropping or doubling them.
    with lake_lock(settings, f"batch clean {batch_id}"):
        if not landing_files(settings.landing_events_dir):
            raise UserError(f"no landing files under {settings.landing_events_dir}: run `freshrec import` or `freshrec generate` first")
        intake = take_files(settings, batch_id, "batch")
        files = [path for path, _ in intake.files]
        if not files:
            raise UserError(_nothing_readable(settings, intake))
        result = clean_raw(read_landing(spark, files), now=now or datetime.now(timezone.utc),
                           min_event_ts=settings.min_event_ts, max_future_skew_hours=settings.max_future_skew_hours,
                           max_id_length=settings.max_id_length, pseudonym_key=settings.pseudonym_key_bytes)
        try:
            # One file per date instead of one per (date, shuffle partition).
            (result.clean.repartition("event_date").write.mode("overwrite").partitionBy("event_date")
             .parquet(str(settings.events_path)))
            # The quarantine of a full rebuild replaces the whole table: it is derived from the
            # same landing files, so nothing is lost and nothing piles up twice.
            (result.quarantine.withColumn("batch_id", F.lit(batch_id)).write.mode("overwrite")
             .option("partitionOverwriteMode", "static").partitionBy("batch_id").parquet(str(settings.quarantine_path)))
            per_file = [r.asDict() for r in result.per_file.collect()]  # one row per landing file
        finally:
            result.release()
        ledger = Ledger(settings.state_db)
        ledger.record_file_counts(per_file, batch_id, replace_all=True)
        counts = {k: sum(int(r[k]) for r in per_file + intake.counts) for k in ("read", "clean", "quarantined", "duplicates")}
        # the newest clean event, read before the lock lets a micro-batch append: train and
        # evaluate read the lake up to here, so the window is the rebuild's and stays one
        newest = spark.read.parquet(str(settings.events_path)).agg(F.max(F.unix_micros("ts"))).first()[0] if counts["clean"] else None
    until = (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=newest + 1)).isoformat() if newest is not None else None
    log.info("clean %s: %s over %d files", batch_id, counts, len(files))
    return {"batch_id": batch_id, "files": len(files), **counts, **intake.summary(), "until": until}


def _nothing_readable(settings: Settings, intake) -> str:
    parts = []
    if intake.quarantined:
        names = ", ".join(f"{q['name']} ({q['code']})" for q in intake.quarantined[:5])
        parts.append(f"{len(intake.quarantined)} quarantined as unreadable ({names}; see `freshrec quarantine --files`)")
    if intake.pending:
        parts.append(f"{len(intake.pending)} still being written ({', '.join(intake.pending[:5])}); run again in a moment")
    return f"no landing file under {settings.landing_events_dir} can be read: " + "; ".join(parts or ["none is complete"])


def validate_step(settings: Settings, batch_id: str) -> dict[str, Any]:
    """Run the Great Expectations suite on lake/events; raise QualityGateError on failure."""
    from freshrec.quality import validate_events
    from freshrec.spark import get_spark

    ledger = Ledger(settings.state_db)
    counts = ledger.totals()
    # The quarantine ratio judges the rows of the files that could be read: a file set aside
    # whole is reported by name and never fails the batch of the files beside it.
    whole = ledger.whole_file_rows()
    counts = {**counts, "read": counts["read"] - whole, "quarantined": counts["quarantined"] - whole}
    if not has_table(settings.events_path):
        # Every row was quarantined: there is nothing to validate, and nothing fit to publish.
        raise QualityGateError(
            f"no clean events: all {counts['quarantined']:,} of {counts['read']:,} rows read were quarantined; "
            f"see the reasons in {settings.quarantine_path}")
    spark = get_spark(settings)
    events = spark.read.parquet(str(settings.events_path))
    return validate_events(events, settings, batch_id, counts)


def matrices_step(settings: Settings) -> dict[str, Any]:
    """Id maps (append-only), interactions, recent sequences and item stats under features/, and
    the per-user key-value copy of the last two (``freshrec.userstate``); folds in (and drops)
    the micro-batches' features/recent partitions."""
    from freshrec.features import read_catalogue
    from freshrec.jobs.matrices import interactions, item_stats, new_id_rows, recent_sequences
    from freshrec.lake import features_lock, recent_partitions
    from freshrec.spark import get_spark
    from freshrec.userstate import build_user_state

    spark = get_spark(settings)
    if not has_table(settings.events_path):
        raise UserError(f"no clean events at {settings.events_path}: run the clean step first")
    # Micro-batches append to the lake before they write features/recent, so the recent
    # partitions listed before the lake is read are all in it: those are folded in below.
    covered = recent_partitions(settings)
    events = spark.read.parquet(str(settings.events_path)).cache()
    feats = settings.features_dir
    indexes = {}
    added = {}
    for key, name, source in (("user_id", "user_index", events), ("item_id", "item_index", events.where("item_id IS NOT NULL"))):
        path = feats / name
        existing = spark.read.parquet(str(path)) if has_table(path) else None
        new = new_id_rows(source, existing, key).cache()
        added[name] = new.count()
        if added[name]:
            new.coalesce(1).write.mode("append").parquet(str(path))
        new.unpersist()
        indexes[name] = spark.read.parquet(str(path))

    user_index, item_index = indexes["user_index"], indexes["item_index"]
    outputs = {
        "interactions": interactions(events, settings.event_weights, settings.decay_half_life_days, user_index, item_index),
        "sequences": recent_sequences(events, settings.sequence_length, item_index, user_index),
        "item_stats": item_stats(events, settings.event_weights, settings.decay_half_life_days, settings.trending_window_days,
                                 item_index, read_catalogue(settings)),
    }
    rows = {}
    with features_lock(settings, "batch matrices"):
        for name, df in outputs.items():
            df.write.mode("overwrite").option("partitionOverwriteMode", "static").parquet(str(feats / name))
            rows[name] = spark.read.parquet(str(feats / name)).count()
        build_user_state(settings)
        for part in covered:
            shutil.rmtree(part, ignore_errors=True)
    events.unpersist()
    summary = {"new_users": added["user_index"], "new_items": added["item_index"], "recent_folded": len(covered),
               **{f"{k}_rows": v for k, v in rows.items()}}
    log.info("matrices: %s", summary)
    return summary


# -- models: train -> evaluate -> gate (models/pipeline.py holds the logic) -----------------

def _training(settings: Settings, until: str | None):
    from freshrec.models.pipeline import TrainingConfig, training_window

    config = TrainingConfig.from_settings(settings)
    if not has_table(settings.events_path):
        raise UserError(f"no clean events at {settings.events_path}: run the clean step first")
    folds, window = training_window(settings, config, until=until)
    return config, folds, window


def train_step(settings: Settings, batch_id: str, until: str | None = None) -> dict[str, Any]:
    """Fit the model on the held-out split of the lake (events before ``until``, the clean
    step's snapshot, when given) and register it (alias challenger).

    A rerun for the same batch and window reuses the version already registered for them
    instead of adding a second one."""
    from freshrec.models import tracking
    from freshrec.models.pipeline import train_stage

    try:
        config, folds, window = _training(settings, until)
    except ValueError as exc:  # too little history for a held-out window: publish what is there
        log.warning("train %s skipped: %s", batch_id, exc)
        return {"skipped": f"not enough history to train and evaluate: {exc}"}
    with tracking.tracking(settings) as client:
        previous = tracking.registered_for_batch(client, batch_id, window)
    if previous is not None:
        log.info("train %s: reusing model version %s registered for this batch and window", batch_id, previous["version"])
        return previous
    try:
        with model_lock(settings, f"train {batch_id}"):  # no online refresh while a batch trains
            _, trained = train_stage(settings, folds[-1], window, config, batch_id=batch_id)
    except ValueError as exc:  # e.g. no user of the training log has a label the ranker could learn from
        log.warning("train %s failed: %s", batch_id, exc)
        return {"skipped": f"the {config.model_kind} model could not be trained: {exc}"}
    log.info("train %s: version %s, %.0f s", batch_id, trained["version"], trained["train_seconds"])
    return trained


def evaluate_step(settings: Settings, trained: dict[str, Any], batch_id: str, until: str | None = None) -> dict[str, Any]:
    """Evaluate the new version, every baseline and the current champion on the same window."""
    from freshrec.models.pipeline import evaluate_stage, load_trained

    if trained.get("skipped"):
        return {"skipped": trained["skipped"]}
    config, folds, window = _training(settings, until)
    model = load_trained(settings, trained, folds[-1])
    evaluated = evaluate_stage(settings, folds, window, config, model, trained, batch_id=batch_id)
    log.info("evaluate %s: %s=%.5f; baselines %s", batch_id, config.gate_metric, evaluated["metrics"][config.gate_metric],
             {k: round(v["metrics"][config.gate_metric], 5) for k, v in evaluated["baselines"].items()})
    return evaluated


def gate_step(settings: Settings, trained: dict[str, Any], evaluated: dict[str, Any], batch_id: str) -> dict[str, Any]:
    """Promote the new version to champion or not; record the decision for `freshrec status`."""
    from freshrec.models import tracking
    from freshrec.models.pipeline import TrainingConfig, gate_stage

    decided_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if trained.get("skipped"):
        with tracking.tracking(settings) as client:
            champion = tracking.champion_version(client)
        publish = ({"kind": "model", "name": tracking.REGISTERED_MODEL, "version": champion} if champion is not None
                   else {"kind": "baseline", "name": "popularity"})
        reason = f"{trained['skipped']}; publishing the {'champion' if champion else 'popularity baseline'}"
        decision = {"promote": False, "publish": "champion" if champion else "baseline", "reason": reason}
        out = {"batch_id": batch_id, "decided_at": decided_at, "decision": decision, "publish": publish, "model": {}}
    else:
        report = gate_stage(settings, TrainingConfig.from_settings(settings), trained, evaluated)
        publish, decision = report.publish, report.decision.as_dict()
        out = {"batch_id": batch_id, "decided_at": decided_at, "decision": decision, "publish": publish,
               "model": report.model | {"metrics": {k: v for k, v in report.model["metrics"].items() if "/" not in k}},
               "baselines": {k: v["metrics"].get("ndcg_at_10") for k, v in report.baselines.items()}}
    atomic_write_text(settings.reports_dir / "gate.json", json.dumps(out, indent=2, default=str))
    log.info("gate %s: %s", batch_id, decision["reason"])
    return {"batch_id": batch_id, "promoted": decision["promote"], "reason": decision["reason"], "publish": publish}


# -- score -> publish ----------------------------------------------------------------------

def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def score_step(settings: Settings, batch_id: str, gate: dict[str, Any]) -> dict[str, Any]:
    """Score every known user with what the gate chose, and build the similar-items, popular and
    search-query lists, under recs/<version>/ (Parquet). Nothing is served until `publish`.

    The version id is the batch id plus a fingerprint of the inputs, so a rerun on the same
    data writes the same directory and the publish step sees it is already live."""
    import pandas as pd
    from pyspark.sql import functions as F

    from freshrec.features import read_catalogue, read_features, require_features
    from freshrec.jobs.score import (
        POPULAR_COLUMNS,
        popular_lists,
        query_items,
        similar_item_blocks,
        user_inputs,
        write_user_lists,
    )
    from freshrec.lake import read_training_events
    from freshrec.models.pipeline import serving_recommender
    from freshrec.serving.publish import write_list_blocks, write_list_table
    from freshrec.spark import get_spark

    started = time.perf_counter()
    spark = get_spark(settings)
    require_features(settings, "user_index", "sequences", "interactions", "item_stats")
    # the model binds to the bounded window training reads (FRESHREC_TRAIN_WINDOW_DAYS and
    # FRESHREC_TRAIN_MAX_EVENTS), never the whole lake; the catalogue is every item of
    # features/item_stats (one row per item, built in Spark) and of the catalogue files, so no
    # item drops out with a sample
    events = read_training_events(settings)
    catalogue_df = read_catalogue(settings)
    items = catalogue_df.toPandas() if catalogue_df is not None else None
    stats = read_features(settings, "item_stats")
    known = stats.select("item_id", "category", "price", "last_seen").toPandas()
    table = pd.concat([known[["item_id", "category", "price"]]]  # the catalogue files' values win
                      + ([items[[c for c in ("item_id", "category", "price") if c in items]]] if items is not None else []),
                      ignore_index=True)
    rec, knn = serving_recommender(settings, gate["publish"], events, table)
    cat = rec.catalogue
    now = int(pd.Timestamp(known["last_seen"].max()).timestamp()) + 1  # every user is scored as of the newest item event
    blocked = {r.item_id for r in stats.where(~F.coalesce("available", F.lit(True))).select("item_id").collect()}
    if items is not None and "available" in items:
        blocked |= set(items.loc[items["available"] == False, "item_id"].astype(str))  # noqa: E712 - pandas mask
    unavailable = cat.lookup(sorted(blocked))
    unavailable = unavailable[unavailable >= 0]

    totals = Ledger(settings.state_db).totals()
    version = f"{batch_id}-{_fingerprint(gate['publish'], totals, now, settings.top_n, settings.exclude_seen, sorted(blocked))}"
    recs_dir = settings.recs_dir / version
    user_index = read_features(settings, "user_index")
    n_users = user_index.count()
    inputs = user_inputs(user_index, read_features(settings, "sequences"), read_features(settings, "interactions"),
                         settings.exclude_seen)
    # users spread over every core (and, on a cluster, every executor); ~20k users per task
    inputs = inputs.repartition(max(spark.sparkContext.defaultParallelism, -(-n_users // 20_000)), "user_id")
    scoring = time.perf_counter()
    # every table appears whole, fsynced, by a rename (fileio.atomic_path)
    with atomic_path(recs_dir / "user_topn") as tmp:
        written = write_user_lists(spark, inputs, rec, settings.top_n, now, tmp, unavailable)
        if written != n_users:  # raised inside atomic_path: the last good version keeps serving
            raise RuntimeError(f"score: lists written for {written} users, but the user index holds {n_users}")
    scored_at = time.perf_counter()
    with atomic_path(recs_dir / "popular") as tmp:
        write_list_table(tmp, "category", popular_lists(stats.select(*POPULAR_COLUMNS).toPandas(), settings.top_n))
    lake = spark.read.parquet(str(settings.events_path))
    blocked_df = spark.createDataFrame([(i,) for i in sorted(blocked)], "item_id string") if blocked else None
    with atomic_path(recs_dir / "query_items") as tmp:
        (query_items(lake, settings.event_weights, settings.top_n, settings.query_min_users, blocked_df)
         .coalesce(1).write.parquet(str(tmp)))
    with atomic_path(recs_dir / "similar") as tmp:
        write_list_blocks(tmp, "item_id", similar_item_blocks(knn.similarity, cat, knn.popularity, settings.top_n, unavailable))
    # the incremental path re-scores users with it; it checks the checksum before unpickling
    payload = pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(recs_dir / "recommender.pkl", payload)
    atomic_write_text(recs_dir / "unavailable.json", json.dumps(sorted(blocked)))
    source = dict(gate["publish"])
    source["alias"] = "champion" if source["kind"] == "model" else None
    summary = {"batch_id": batch_id, "version": version, "recs_dir": str(recs_dir), "source": source,
               "recommender_sha256": hashlib.sha256(payload).hexdigest(),
               "scored_at_epoch": now, "users": n_users, "items": len(cat), "unavailable": len(unavailable),
               "events_read": len(events),
               "score_users_seconds": round(scored_at - scoring, 1), "seconds": round(time.perf_counter() - started, 1)}
    log.info("score: %s", summary)
    return summary


def publish_step(settings: Settings, scored: dict[str, Any]) -> dict[str, Any]:
    """Publish recs/<version>/ as a new serving version and switch it live (atomically), keep
    the last FRESHREC_KEEP_VERSIONS versions. A version already published is left as it is."""
    from freshrec.experiments import protected_versions
    from freshrec.rescore import catch_up_step
    from freshrec.serving import open_store
    from freshrec.serving.publish import publish_tables

    version = scored["version"]
    meta = {"batch_id": scored["batch_id"], "model": scored["source"], "users": scored["users"], "items": scored["items"],
            "recommender_sha256": scored["recommender_sha256"]}
    with open_store(settings.serving) as store:
        record = store.version_info(version)
        if record is not None and record["state"] in ("complete", "live"):
            log.info("publish: version %s is already %s; nothing to do", version, record["state"])
            return {"version": version, "state": record["state"], "skipped": True}
        live = store.status()
        newer = _interval_end(live["meta"].get("batch_id"))
        if newer is not None and (_interval_end(scored["batch_id"]) or newer) < newer:
            # a backfill (or a late retry) of an older interval: the live lists, built from a
            # later interval's run over the same landing zone, stay
            reason = f"the live version {live['live_version']} comes from a later data interval ({newer})"
            log.info("publish: %s not published: %s", version, reason)
            return {"version": version, "state": "not published", "skipped": True, "reason": reason}
        result = publish_tables(store, version, scored["recs_dir"], meta, keep=settings.keep_versions,
                                details=settings.features_dir / "item_stats", protect=protected_versions(settings))
        kept = {r["version"] for r in store.versions() if r["state"] in ("writing", "complete", "live")}
    for old in settings.recs_dir.iterdir() if settings.recs_dir.is_dir() else ():
        if old.is_dir() and old.name not in kept:  # the Parquet behind pruned versions
            shutil.rmtree(old, ignore_errors=True)
    result["catch_up"] = catch_up_step(settings)
    log.info("publish: %s", result)
    return result


def _interval_end(batch_id: str | None) -> str | None:
    """The data interval end a batch id names (``batch-20260301T020000Z``), comparable as text."""
    match = re.search(r"-(\d{8}T\d{6}Z)$", batch_id or "")
    return match.group(1) if match else None


def experiments_step(settings: Settings) -> dict[str, Any]:
    """The batch's last task: publish every running experiment's variants from this batch's
    features (``freshrec.experiments.publish_variants_step``) and refresh their reports."""
    from freshrec.experiment_report import report_step
    from freshrec.experiments import publish_variants_step

    published = publish_variants_step(settings)
    if not published["experiments"]:
        return published
    reports = report_step(settings)
    return {**published, "decisions": {name: r["decision"]["verdict"] for name, r in reports.items()}}
