"""Full-catalogue scoring throughput, against a bare torch matmul + topk of the same shapes.

    .venv/bin/python bench/score.py --home /path/to/FRESHREC_HOME   # a home after `freshrec run batch`
    .venv/bin/python bench/score.py                                 # builds a synthetic home first

Measures, for the recommender the last score step published (recs/<version>/recommender.pkl):

- ``spark``: the score step's Spark job (``score_users``: mapInPandas over user partitions,
  recommender broadcast) for every known user, written to Parquet;
- ``in_process``: ``score_frame`` over the same users in this process (one thread);
- ``bare``: ``(users x dim) @ (dim x items)`` + ``topk(n)`` in batches of 1024 users, with the
  same thread count, i.e. the floor any full-catalogue scorer pays.

Prints JSON; ``ratio_*`` = bare seconds / measured seconds (1.0 = as fast as the bare matmul).
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path


def build_home(home: Path, events: int):
    from freshrec.generate import GenerateOptions, generate_to_landing
    from freshrec.settings import Settings
    from freshrec.steps import clean_step, evaluate_step, gate_step, matrices_step, score_step, train_step

    settings = Settings(home=home, model_epochs=1)
    settings.ensure_dirs()
    generate_to_landing(settings, GenerateOptions(events=events, seed=5, days=30, start="2026-01-01"))
    clean_step(settings, "bench")
    matrices_step(settings)
    trained = train_step(settings, "bench")
    gate = gate_step(settings, trained, evaluate_step(settings, trained, "bench"), "bench")
    score_step(settings, "bench", gate)
    return settings


def bare_seconds(n_users: int, n_items: int, dim: int, n: int, threads: int, batch: int = 1024) -> float:
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        users = torch.randn(n_users, dim, generator=gen)
        items = torch.randn(dim, n_items, generator=gen)
        torch.topk(users[:64] @ items, n, dim=1)  # warm-up
        started = time.perf_counter()
        for start in range(0, n_users, batch):
            torch.topk(users[start:start + batch] @ items, n, dim=1)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(prev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="a FRESHREC_HOME after a batch run (default: build one)")
    parser.add_argument("--events", type=int, default=200_000, help="synthetic events when building a home")
    args = parser.parse_args()

    from freshrec.jobs.score import score_frame, score_users, user_inputs

    from freshrec.settings import Settings
    from freshrec.spark import get_spark

    settings = Settings.load(env={"FRESHREC_HOME": str(args.home)}) if args.home else None
    if settings is None:
        settings = build_home(Path(tempfile.mkdtemp(prefix="freshrec-bench-score-")) / "home", args.events)
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
                         spark.read.parquet(str(feats / "interactions")), settings.exclude_seen).cache()
    n_users = inputs.count()
    now = int(time.time())
    parallelism = spark.sparkContext.defaultParallelism
    out = Path(tempfile.mkdtemp(prefix="freshrec-bench-topn-"))
    started = time.perf_counter()
    score_users(spark, inputs.repartition(parallelism, "user_id"), rec, settings.top_n, now).write.mode("overwrite").parquet(str(out))
    spark_s = time.perf_counter() - started

    frame = inputs.toPandas()
    started = time.perf_counter()
    score_frame(rec, frame, settings.top_n, now)
    local_s = time.perf_counter() - started

    bare_1 = bare_seconds(n_users, n_items, dim, settings.top_n, threads=1)
    bare_p = bare_seconds(n_users, n_items, dim, settings.top_n, threads=parallelism)
    print(json.dumps({
        "recommender": type(rec).__name__, "users": n_users, "items": n_items, "dim": dim, "n": settings.top_n,
        "spark": {"seconds": round(spark_s, 2), "users_per_second": round(n_users / spark_s, 1), "cores": parallelism},
        "in_process": {"seconds": round(local_s, 2), "users_per_second": round(n_users / local_s, 1), "threads": 1},
        "bare": {"seconds_1_thread": round(bare_1, 3), f"seconds_{parallelism}_threads": round(bare_p, 3)},
        "ratio_in_process": round(bare_1 / local_s, 3),
        "ratio_spark": round(bare_p / spark_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
