"""Benchmark of the training step on Ta-Feng: baselines, model, gate. Prints one JSON object.

    .venv/bin/python bench/train.py [--model-kind two_stage|seqrec] [--cutoffs 3] [--sequence-length 200]
                                    [--exclude-seen none] [--epochs 3] [--seed 0]

Reads ../shared/data/ta_feng.csv.zip (or FRESHREC_TAFENG_ZIP); tracks into a throw-away
FRESHREC_HOME (MLflow sqlite store included) unless --home is given. Reports per-recommender
ndcg_at_10 / recall_at_10, the mean over the rolling-origin windows, the model's training summary
(time, examples/s, its stages), and the full-catalogue scoring throughput of the model trained on
the newest window.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("FRESHREC_TAFENG_ZIP", REPO.parent / "shared" / "data" / "ta_feng.csv.zip")))
    parser.add_argument("--exclude-seen", default="none", choices=("none", "purchased", "all"))
    parser.add_argument("--sequence-length", type=int, default=200, help="events per user the model reads")
    parser.add_argument("--window-days", type=float, default=14.0)
    parser.add_argument("--epochs", type=int, default=None, help="seqrec's epochs")
    parser.add_argument("--model-kind", default="two_stage", choices=("two_stage", "seqrec"))
    parser.add_argument("--cutoffs", type=int, default=3, help="rolling-origin windows")
    parser.add_argument("--seed", type=int, default=None, help="the seed of seqrec and of the ranker (default 0)")
    parser.add_argument("--home", type=Path, default=None, help="FRESHREC_HOME (default: a temporary directory)")
    parser.add_argument("--score-users", type=int, default=4096, help="users scored for the throughput figure")
    args = parser.parse_args()

    import numpy as np
    import torch
    from freshrec.models.datasets import load_tafeng
    from freshrec.models.pipeline import TrainingConfig, train_and_gate

    from freshrec.settings import Settings

    home = args.home or Path(tempfile.mkdtemp(prefix="freshrec-bench-"))
    settings = Settings(home=home, exclude_seen=args.exclude_seen, sequence_length=args.sequence_length,
                        model_kind=args.model_kind, eval_cutoffs=args.cutoffs)
    settings.ensure_dirs()
    config = TrainingConfig.from_settings(settings)
    config = dataclasses.replace(config, window_days=args.window_days)
    if args.epochs is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, epochs=args.epochs))
    if args.seed is not None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, seed=args.seed),
                                     ranker=dataclasses.replace(config.ranker, seed=args.seed))

    started = time.perf_counter()
    events = load_tafeng(args.data)
    load_seconds = time.perf_counter() - started

    captured: dict = {}

    def trainer(eval_set, cfg, on_epoch=None):
        """train_model, keeping the first model: the newest window's (the earlier windows' come after)."""
        from freshrec.models.pipeline import train_model

        model = train_model(eval_set, cfg, on_epoch)
        captured.setdefault("model", model)
        captured.setdefault("eval_set", eval_set)
        return model

    started = time.perf_counter()
    report = train_and_gate(settings, events, config, trainer=trainer)
    step_seconds = time.perf_counter() - started

    model, eval_set = captured["model"], captured["eval_set"]
    n = min(args.score_users, len(eval_set))
    hist = eval_set.histories.subset(np.arange(n))
    model.score(hist.subset(np.arange(min(64, n))))  # warm-up
    t = time.perf_counter()
    for start in range(0, n, 1024):
        model.score(hist.subset(np.arange(start, min(start + 1024, n))))
    score_seconds = time.perf_counter() - t

    keys = ("ndcg_at_10", "recall_at_10", "recall_at_20", "map_at_10", "coverage_at_10",
            "new_users/ndcg_at_10", "returning_users/ndcg_at_10")
    table = {name: {k: round(b["metrics"][k], 5) for k in keys if k in b["metrics"]} for name, b in report.baselines.items()}
    name = model.name
    table[name] = {k: round(report.model["metrics"][k], 5) for k in keys if k in report.model["metrics"]}
    out = {
        "dataset": "ta_feng", "events": int(len(events)), "exclude_seen": args.exclude_seen,
        "sequence_length": args.sequence_length, "window": report.window,
        "metrics": table,
        "model_beats_every_baseline": all(table[name]["ndcg_at_10"] > v["ndcg_at_10"] for k, v in table.items() if k != name),
        "training": {k: round(v, 3) for k, v in model.training_summary().items()},
        "scoring": {
            "users": n, "items": len(eval_set.catalogue), "seconds": round(score_seconds, 2),
            "users_per_second": round(n / score_seconds, 1),
            "scores_per_second": round(n * len(eval_set.catalogue) / score_seconds),
        },
        "gate": {"promoted": report.decision.promote, "publish": report.publish, "reason": report.decision.reason,
                 "difference": report.decision.difference},
        "seconds": {"load": round(load_seconds, 1), "training_step_total": round(step_seconds, 1)},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "cuda": torch.cuda.is_available()},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
