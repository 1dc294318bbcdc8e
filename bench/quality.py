"""Model quality: the two-stage ranker (models/ranker.py) beside every baseline. Prints one JSON object.

    .venv/bin/python bench/quality.py [--dataset tafeng|movielens|synthetic] [--cutoffs 3] [--window-days 14]
                                      [--exclude-seen none,purchased] [--quick]

Folds, baselines and the ranker are the pipeline's own (pipeline.evaluation_folds, make_baselines,
ranker_config): what `freshrec run batch` gates on, with every number kept.

- tafeng (default): ../shared/data/ta_feng.csv.zip (or FRESHREC_TAFENG_ZIP), rolling origin
  (protocols.rolling_cutoffs): ``--cutoffs`` cutoffs ``--window-days`` apart, each exclusion mode.
- movielens: MovieLens-100k read from the recbole 1.2.1 wheel (fetched once with
  ``pip download --no-deps recbole==1.2.1 -d /tmp/recbole``; recbole is never installed, no data is
  kept in the repository); every rating is an interaction, the first genre is the category;
  protocols.random_holdout of 25% of each user's items (the 75/25 split of the published
  anchors) with EXCLUDE_SEEN=all, and the ranker's labels drawn the same way inside training.
- synthetic: datasets.synthetic_sequential, rolling origin.

Per fold and recommender: ndcg@10, recall@10/@20, split recall on repeat and new targets, distinct
items and pairwise overlap of the top-10 lists; then the mean over folds, and the paired
bootstrap (stats.mean_over_cutoffs, users resampled within each fold) of ranker minus the best
baseline (by mean ndcg@10). ``--quick`` evaluates 2,000 test users per fold and trains the ranker
on fewer users. Ranker timings per stage: candidates, features, LightGBM fit, sources refit, and
scoring every test user (split into candidates, features and prediction).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KS = (10, 20)
ROW_METRICS = ("ndcg_at_10", "recall_at_10", "recall_at_20", "recall_repeat_at_10", "recall_new_at_10", "recall_repeat_at_20",
               "recall_new_at_20", "distinct_items_at_10", "pairwise_overlap_at_10")
RECBOLE_WHEEL_DIR = Path("/tmp/recbole")
ML_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"


def load_movielens():
    """MovieLens-100k from the recbole wheel: every rating a purchase, the first genre its category."""
    import pandas as pd

    wheels = glob.glob(str(RECBOLE_WHEEL_DIR / "recbole-1.2.1-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "recbole==1.2.1", "-d", str(RECBOLE_WHEEL_DIR)],
                       check=True, capture_output=True)
        wheels = glob.glob(str(RECBOLE_WHEEL_DIR / "recbole-1.2.1-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        inter = pd.read_csv(io.BytesIO(wheel.read(ML_MEMBER.format("inter"))), sep="\t")
        item = pd.read_csv(io.BytesIO(wheel.read(ML_MEMBER.format("item"))), sep="\t")
    genre = dict(zip(item["item_id:token"].astype(str), item["class:token_seq"].fillna("").str.split().str[0], strict=True))
    items = inter["item_id:token"].astype(str)
    return pd.DataFrame({
        "user_id": inter["user_id:token"].astype(str), "item_id": items, "event_type": "purchase",
        "ts": pd.to_datetime(inter["timestamp:float"], unit="s", utc=True), "category": items.map(genre).fillna(""),
        "price": float("nan"),
    })


def load_events(args):
    from freshrec.models.data import normalize_events
    from freshrec.models.datasets import load_tafeng, synthetic_sequential

    if args.dataset == "tafeng":
        return normalize_events(load_tafeng(args.data))
    if args.dataset == "movielens":
        return normalize_events(load_movielens())
    return normalize_events(synthetic_sequential(n_users=3000, n_items=400, days=120, events_per_user=40, seed=0))


def training_config(args):
    """The pipeline's TrainingConfig for the bench's arguments: the same protocols, baselines and
    ranker as `freshrec run batch` (random holdout of 25% on MovieLens, the anchors' 75/25 split)."""
    from freshrec.models.pipeline import TrainingConfig
    from freshrec.models.ranker import RankerConfig

    return TrainingConfig(window_days=args.window_days, n_cutoffs=args.cutoffs, holdout_fraction=0.25,
                          protocol="random" if args.dataset == "movielens" else "time",
                          max_test_users=2000 if args.quick else None,
                          ranker=RankerConfig(max_train_users=1500 if args.quick else RankerConfig.max_train_users))


def make_folds(events, args, exclude_seen: str) -> list:
    """(cutoff label, EvalSet) per fold, as pipeline.evaluation_folds draws them."""
    from freshrec.models.pipeline import evaluation_folds

    folds, _ = evaluation_folds(events, training_config(args), exclude_seen)
    if args.dataset == "movielens":
        return [("random_holdout", folds[0])]
    return [(time.strftime("%Y-%m-%d", time.gmtime(f.cutoff)), f) for f in folds]


def recommenders(eval_set, args) -> list:
    """Every baseline the pipeline evaluates, then the ranker under the fold's own rules."""
    from freshrec.models.pipeline import make_baselines, ranker_config
    from freshrec.models.ranker import TwoStageRanker

    config = training_config(args)
    return [*make_baselines(config, eval_set.exclude_seen, len(eval_set.catalogue), None),
            TwoStageRanker(ranker_config(eval_set, config))]


def run_fold(eval_set, args) -> dict:
    """Fit and evaluate every recommender on one EvalSet: summary metrics and per-user arrays."""
    from freshrec.models.evaluate import evaluate
    from freshrec.models.metrics import per_user_metrics

    out = {}
    for rec in recommenders(eval_set, args):
        started = time.perf_counter()
        rec.fit(eval_set.train, eval_set.catalogue)
        fit_seconds = time.perf_counter() - started
        result = evaluate(rec, eval_set, ks=KS)
        per_user = per_user_metrics(result.recs, eval_set.targets, KS)
        row = {k: result.metrics.get(k) for k in ROW_METRICS}
        row.update(fit_seconds=fit_seconds, recommend_seconds=result.seconds)
        if rec.kind == "model":
            row["timings"] = {**rec.timings, "score_all_users": result.seconds}
            row["train_groups"], row["best_iteration"] = rec.n_train_groups, rec.best_iteration
            row["top_features"] = dict(list(rec.feature_importance().items())[:12])
        out[rec.name] = {"row": row, "ndcg": per_user["ndcg_at_10"], "recall20": per_user["recall_at_20"]}
        print(f"  {rec.name}: ndcg@10 {row['ndcg_at_10']:.4f} recall@20 {row['recall_at_20']:.4f} "
              f"({fit_seconds:.1f} s fit, {result.seconds:.1f} s recommend)", file=sys.stderr)
    return out


def compare(folds: list[dict], ranker: str = "two_stage") -> dict:
    """Means over folds, the best baseline, and ranker minus it with its bootstrap interval."""
    from freshrec.models.stats import mean_over_cutoffs, paired_bootstrap

    names = list(folds[0])
    metrics = [k for k, v in folds[0][names[0]]["row"].items() if isinstance(v, (int, float))]
    mean = {n: {m: _mean([f[n]["row"][m] for f in folds]) for m in metrics} for n in names}
    baselines = [n for n in names if n != ranker]
    best = max(baselines, key=lambda n: mean[n]["ndcg_at_10"])
    out = {"mean": mean, "best_baseline": best, "difference": {}}
    for key, metric in (("ndcg", "ndcg_at_10"), ("recall20", "recall_at_20")):
        res = mean_over_cutoffs([f[ranker][key] for f in folds], [f[best][key] for f in folds], seed=0)
        per_fold = [paired_bootstrap(f[ranker][key], f[best][key], seed=0) for f in folds]
        out["difference"][metric] = {
            "estimate": res.estimate, "ci95": [res.lo, res.hi], "p_value": res.p_value,
            "per_cutoff": [{"estimate": r.estimate, "ci95": [r.lo, r.hi]} for r in per_fold]}
    out["ranker_at_least_best_baseline_per_cutoff"] = [
        bool(f[ranker]["row"]["ndcg_at_10"] >= max(f[n]["row"]["ndcg_at_10"] for n in baselines)) for f in folds]
    out["best_baseline_per_cutoff"] = [max(baselines, key=lambda n: f[n]["row"]["ndcg_at_10"]) for f in folds]
    out["ranker_ndcg_at_10_over_popularity"] = mean[ranker]["ndcg_at_10"] / mean["popularity"]["ndcg_at_10"]
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tafeng", choices=("tafeng", "movielens", "synthetic"))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "FRESHREC_TAFENG_ZIP", REPO.parent / "shared" / "data" / "ta_feng.csv.zip")))
    parser.add_argument("--cutoffs", type=int, default=3)
    parser.add_argument("--window-days", type=float, default=14.0)
    parser.add_argument("--exclude-seen", default=None,
                        help="comma-separated modes (default: none,purchased; movielens: all)")
    parser.add_argument("--quick", action="store_true", help="2,000 test users per fold, a smaller ranker training set")
    args = parser.parse_args()
    modes = (args.exclude_seen or ("all" if args.dataset == "movielens" else "none,purchased")).split(",")

    started = time.perf_counter()
    events = load_events(args)
    report = {"dataset": args.dataset, "command": " ".join([".venv/bin/python", "bench/quality.py", *sys.argv[1:]]),
              "events": int(len(events)), "users": int(events["user_id"].nunique()),
              "items": int(events["item_id"].nunique()), "quick": args.quick, "modes": {}}
    for mode in modes:
        print(f"exclude_seen={mode}", file=sys.stderr)
        folds, rows = [], []
        for label, eval_set in make_folds(events, args, mode):
            print(f" cutoff {label}: {len(eval_set)} test users, {len(eval_set.catalogue)} items", file=sys.stderr)
            fold = run_fold(eval_set, args)
            folds.append(fold)
            rows.append({"cutoff": label, "test_users": len(eval_set), "items": len(eval_set.catalogue),
                         "target_event_types": list(eval_set.target_event_types),
                         "metrics": {n: f["row"] for n, f in fold.items()}})
        report["modes"][mode] = {"folds": rows, **compare(folds)}
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report, indent=2, default=_rounded))
    return 0


def _rounded(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
