"""Full-catalogue scoring throughput, against a bare torch matmul + topk of the same shapes.

    .venv/bin/python bench/score.py --home /path/to/FRESHREC_HOME   # a home after `freshrec run batch`
    .venv/bin/python bench/score.py                                 # builds a synthetic home first

Measures, for the recommender the last score step published (recs/<version>/recommender.pkl), or
with ``--score model`` for the newest registered model version even where the gate published a
baseline (``--model-kind seqrec`` gives the matmul-shaped model the bare floor is the floor of):

- ``spark``: the score step's Spark job (``write_user_lists``: mapInArrow over user partitions,
  recommender broadcast, each task writing its lists' Parquet file) for every known user: the
  first (cold) run, and the median of three runs after it (warm: Python workers reused, the
  JVM's code compiled);
- ``in_process``: what each Spark task runs (``score_arrow`` on Arrow batches of 10,000 users)
  over the same users in this process, on one thread;
- ``bare``: ``(users x dim) @ (dim x items)`` + ``torch.topk(n)`` in batches of 1024 users, with
  the same thread count, i.e. the floor any full-catalogue scorer pays; and the same with the
  blocked top-k the sequence model scores with (``models.seqrec.top_k_rows``), a lower floor.

Prints JSON; ``ratio_*`` = bare seconds / measured seconds (1.0 = as fast as the bare matmul);
``ratio_spark_warm_blocked_top_k`` holds the Spark job to the lower floor.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path


def build_home(home: Path, events: int, model_kind: str):
    from freshrec.generate import GenerateOptions, generate_to_landing
    from freshrec.settings import Settings
    from freshrec.steps import clean_step, evaluate_step, gate_step, matrices_step, score_step, train_step

    settings = Settings(home=home, model_epochs=1, model_kind=model_kind)
    settings.ensure_dirs()
    generate_to_landing(settings, GenerateOptions(events=events, seed=5, days=30, start="2026-01-01"))
    clean_step(settings, "bench")
    matrices_step(settings)
    trained = train_step(settings, "bench")
    gate = gate_step(settings, trained, evaluate_step(settings, trained, "bench"), "bench")
    score_step(settings, "bench", gate)
    return settings


def trained_model(settings):
    """The newest registered model version, bound to the training window as the score step binds it."""
    from freshrec.models import tracking
    from freshrec.models.pipeline import serving_recommender

    from freshrec.lake import read_training_events

    with tracking.tracking(settings) as client:
        versions = client.search_model_versions(f"name='{tracking.REGISTERED_MODEL}'")
    if not versions:
        raise SystemExit("no registered model version: run `freshrec run batch` first")
    newest = max(versions, key=lambda v: int(v.version))
    rec, _ = serving_recommender(settings, {"kind": "model", "version": newest.version}, read_training_events(settings))
    return rec


def bare_seconds(n_users: int, n_items: int, dim: int, n: int, threads: int, batch: int = 1024, top_k=None) -> float:
    """Seconds for the bare matmul + top-k (``top_k(scores, n)``, torch.topk unless given)."""
    import torch

    top_k = top_k or (lambda x, k: torch.topk(x, k, dim=1))

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        users = torch.randn(n_users, dim, generator=gen)
        items = torch.randn(dim, n_items, generator=gen)
        top_k(users[:64] @ items, n)  # warm-up
        started = time.perf_counter()
        for start in range(0, n_users, batch):
            top_k(users[start:start + batch] @ items, n)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(prev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="a FRESHREC_HOME after a batch run (default: build one)")
    parser.add_argument("--events", type=int, default=200_000, help="synthetic events when building a home")
    parser.add_argument("--model-kind", choices=("two_stage", "seqrec"), default="two_stage",
                        help="FRESHREC_MODEL_KIND when building a home")
    parser.add_argument("--score", choices=("published", "model"), default="published",
                        help="score what the gate published (a baseline when the model lost), or the newest "
                             "registered model version whatever the gate said")
    parser.add_argument("--replicate", type=int, default=1,
                        help="score every user this many times (as distinct user ids), so that the Spark job's "
                             "fixed costs (Python workers, imports, the broadcast) weigh as on a large user base")
    args = parser.parse_args()

    import pyarrow as pa
    from freshrec.jobs.score import score_arrow, user_inputs, write_user_lists
    from freshrec.models.seqrec import top_k_rows
    from pyspark.sql import functions as F

    from freshrec.settings import Settings
    from freshrec.spark import get_spark

    settings = Settings.load(env={"FRESHREC_HOME": str(args.home)}) if args.home else None
    if settings is None:
        settings = build_home(Path(tempfile.mkdtemp(prefix="freshrec-bench-score-")) / "home", args.events, args.model_kind)
    if args.score == "model":
        rec = trained_model(settings)
    else:
        versions = sorted(settings.recs_dir.glob("*/recommender.pkl"), key=lambda p: p.stat().st_mtime)
        if not versions:
            raise SystemExit(f"no scored version under {settings.recs_dir}: run `freshrec run batch` first")
        with open(versions[-1], "rb") as fh:
            rec = pickle.load(fh)
    n_items = len(rec.catalogue)
    dim = getattr(getattr(rec, "config", None), "dim", 64)

    spark = get_spark(settings)
    feats = settings.features_dir
    inputs = user_inputs(spark.read.parquet(str(feats / "user_index")), spark.read.parquet(str(feats / "sequences")),
                         spark.read.parquet(str(feats / "interactions")), settings.exclude_seen)
    if args.replicate > 1:
        copies = spark.range(args.replicate).select(F.col("id").cast("string").alias("_copy"))
        inputs = inputs.crossJoin(copies).withColumn("user_id", F.concat_ws("#", "user_id", "_copy")).drop("_copy")
    inputs = inputs.cache()
    n_users = inputs.count()
    now = int(time.time())
    parallelism = spark.sparkContext.defaultParallelism
    out = Path(tempfile.mkdtemp(prefix="freshrec-bench-topn-"))
    spark_runs = []
    for _ in range(4):  # cold: Python workers start, import and unpickle; then warm: they are reused
        started = time.perf_counter()
        write_user_lists(spark, inputs.repartition(parallelism, "user_id"), rec, settings.top_n, now, out)
        spark_runs.append(time.perf_counter() - started)
    spark_s, warm_s = spark_runs[0], sorted(spark_runs[1:])[1]  # the median of three warm runs

    batches = pa.Table.from_pandas(inputs.toPandas(), preserve_index=False).to_batches(max_chunksize=10_000)
    single = rec.single_threaded()  # one thread, as each Spark worker
    started = time.perf_counter()
    for batch in batches:
        score_arrow(single, batch, settings.top_n, now)
    local_s = time.perf_counter() - started

    bare_1 = bare_seconds(n_users, n_items, dim, settings.top_n, threads=1)
    bare_p = bare_seconds(n_users, n_items, dim, settings.top_n, threads=parallelism)
    # the same floor with the blocked top-k the sequence model scores with (models.seqrec.top_k_rows)
    bare_b = bare_seconds(n_users, n_items, dim, settings.top_n, threads=parallelism, top_k=top_k_rows)
    print(json.dumps({
        "recommender": type(rec).__name__, "users": n_users, "items": n_items, "dim": dim, "n": settings.top_n,
        "spark": {"seconds": round(spark_s, 2), "users_per_second": round(n_users / spark_s, 1), "cores": parallelism,
                  "warm_seconds": round(warm_s, 2), "warm_users_per_second": round(n_users / warm_s, 1),
                  "warm_runs": [round(x, 2) for x in spark_runs[1:]]},
        "in_process": {"seconds": round(local_s, 2), "users_per_second": round(n_users / local_s, 1), "threads": 1},
        "bare": {"seconds_1_thread": round(bare_1, 3), f"seconds_{parallelism}_threads": round(bare_p, 3),
                 f"seconds_{parallelism}_threads_blocked_top_k": round(bare_b, 3)},
        "ratio_in_process": round(bare_1 / local_s, 3),
        "ratio_spark": round(bare_p / spark_s, 3),
        "ratio_spark_warm": round(bare_p / warm_s, 3),
        "ratio_spark_warm_blocked_top_k": round(bare_b / warm_s, 3),
        # the Spark job against the same work in one thread: cores x this is its parallel efficiency
        "spark_warm_over_in_process": round(local_s / warm_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
