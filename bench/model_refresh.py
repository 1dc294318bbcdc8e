"""Online refresh against a static model and a daily full retrain: a replay on Ta-Feng. Prints one JSON object.

    .venv/bin/python bench/model_refresh.py [--data ../shared/data/ta_feng.csv.zip] [--cutoff 2001-01-29]
                                            [--days 7] [--horizon-days 7] [--exclude-seen none] [--quick]

A champion (the pipeline's default model, the two-stage ranker, with the batch's settings) is
trained on Ta-Feng's purchases before ``--cutoff``. Then the following days arrive one at a time.
At the start of each day d (events before d known), three arms produce top-20 lists for the
returning customers who buy in [d, d + horizon):

- ``static``: the champion as a micro-batch serves it today: its candidate sources and
  statistics as of the cutoff, each user's history up to d;
- ``refresh``: the champion refreshed every day by ``TwoStageRanker.refresh`` (the code of
  ``freshrec run refresh``): more trees on the previous day's labels with a replay share, the
  candidate sources refitted on every event before d; chained from day to day;
- ``retrain``: a full fit on every event before d, as a daily batch would train.

Per day: recall@20 and NDCG@20 on those purchases (items the user bought before count as
targets with ``--exclude-seen none``, grocery's repeat buys), and the CPU seconds each arm spent
updating its model (process time: every thread). The summary: the mean gain of refresh and of
retrain over static, recovered = (refresh - static) / (retrain - static) on the mean NDCG@20,
cost ratio = refresh seconds / retrain seconds (target: recovered >= 0.8 at a cost ratio <= 0.2),
and the static arm's decay: its NDCG@20 over the retrain arm's, against days since training.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DAY = 86_400
K = 20


def list_metrics(recs: list[list[str]], targets: list[set[str]], code: "pd.Index") -> tuple[float, float]:
    """Mean recall@K and NDCG@K (models/metrics.per_user_metrics) of item-id lists, the ids coded
    in ``code`` (every item of the log)."""
    from freshrec.models.data import Ragged
    from freshrec.models.metrics import per_user_metrics

    coded = np.full((len(recs), K), -1, dtype=np.int64)
    for row, items in enumerate(recs):
        coded[row, :len(items[:K])] = code.get_indexer(items[:K])
    sizes = [len(t) for t in targets]
    wanted = Ragged.from_pairs(np.repeat(np.arange(len(targets)), sizes),
                               code.get_indexer([i for t in targets for i in t]), len(targets))
    out = per_user_metrics(coded, wanted, (K,))
    return float(out[f"recall_at_{K}"].mean()), float(out[f"ndcg_at_{K}"].mean())


def top_ids(model, events, users: list[str], now: int, exclude_seen: str) -> list[list[str]]:
    """Each user's top-K item ids from ``model``, their history (``events`` before ``now``)
    coded in the model's own catalogue, as a micro-batch re-scores them."""
    from freshrec.models.data import Histories
    from freshrec.models.split import seen_items

    hist = Histories.from_events(events, model.catalogue, users=users, now=now)
    exclude = seen_items(hist, exclude_seen) if exclude_seen != "none" else None
    items, _ = model.recommend(hist, K, exclude=exclude)
    return [[str(model.catalogue.item_ids[i]) for i in row if i >= 0] for row in items]


def main() -> int:
    from freshrec.models.data import Catalogue, Histories, normalize_events
    from freshrec.models.datasets import load_tafeng
    from freshrec.models.pipeline import TrainingConfig
    from freshrec.models.ranker import TwoStageRanker

    from freshrec.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ta_feng.csv.zip")
    parser.add_argument("--cutoff", default="2001-01-29", help="the champion learns from the purchases before this day (UTC)")
    parser.add_argument("--days", type=int, default=7, help="days replayed after the cutoff")
    parser.add_argument("--horizon-days", type=int, default=7, help="the purchases each day's lists are judged on")
    parser.add_argument("--exclude-seen", choices=("none", "purchased"), default="none")
    parser.add_argument("--trees", type=int, default=Settings().refresh_trees, help="FRESHREC_REFRESH_TREES")
    parser.add_argument("--replay-share", type=float, default=Settings().refresh_replay_share, help="FRESHREC_REFRESH_REPLAY_SHARE")
    parser.add_argument("--quick", action="store_true", help="3 days, 1,500 label users per window")
    args = parser.parse_args()
    if not args.data.is_file():  # `make bench` goes on to the next benchmark
        print(json.dumps({"benchmark": "model_refresh", "skipped": f"Ta-Feng not found at {args.data} "
                                                                   "(see ../shared/data/README.md); pass --data"}))
        return 0
    days = 3 if args.quick else args.days

    settings = Settings(exclude_seen=args.exclude_seen)
    config = TrainingConfig.from_settings(settings)
    ranker_cfg = dataclasses.replace(config.ranker, exclude_seen=args.exclude_seen, label_window_days=config.window_days,
                                     target_event_types=config.target_event_types, min_target_users=config.min_target_users,
                                     max_train_users=1500 if args.quick else config.ranker.max_train_users)
    started = time.monotonic()
    ev = normalize_events(load_tafeng(args.data))
    t = ev["t"].to_numpy()
    code = pd.Index(ev["item_id"].unique())
    cutoff = int(datetime.fromisoformat(args.cutoff).replace(tzinfo=timezone.utc).timestamp())
    if cutoff + (days - 1) * DAY + args.horizon_days * DAY > int(t.max()) + DAY:
        print(f"the log ends {datetime.fromtimestamp(int(t.max()), timezone.utc):%Y-%m-%d}: too early a horizon for "
              f"{days} days after {args.cutoff}", file=sys.stderr)
        return 2

    def before(day: int):
        return ev.loc[t < day]

    def bound(day: int) -> tuple[Catalogue, Histories]:  # as the batch and the refresh bind a log: as of its cutoff
        known = before(day)
        catalogue = Catalogue.from_events(known)
        return catalogue, Histories.from_events(known, catalogue, now=day)

    cpu = time.process_time()
    catalogue, hist = bound(cutoff)
    champion = TwoStageRanker(ranker_cfg).fit(hist, catalogue)
    champion_seconds = time.process_time() - cpu
    print(f"[{time.strftime('%H:%M:%S')}] champion: {champion_seconds:.0f} CPU s, {len(catalogue):,} items", file=sys.stderr, flush=True)

    refreshed = copy.deepcopy(champion)
    rows = []
    for k in range(days):
        day = cutoff + k * DAY
        window = ev.loc[(t >= day) & (t < day + args.horizon_days * DAY)]
        known = before(day)
        users = sorted(set(window["user_id"]) & set(known["user_id"]))  # returning customers
        wanted = window.loc[window["user_id"].isin(users)].groupby("user_id")["item_id"].agg(set)
        if args.exclude_seen == "purchased":
            bought = known.loc[known["user_id"].isin(users)].groupby("user_id")["item_id"].agg(set)
            wanted = wanted.combine(bought.reindex(wanted.index), lambda w, b: w - b if isinstance(b, set) else w)
            wanted = wanted.loc[wanted.map(len) > 0]
            users = list(wanted.index)
        targets = [wanted[u] for u in users]
        catalogue, hist = bound(day)
        row: dict = {"day": datetime.fromtimestamp(day, timezone.utc).strftime("%Y-%m-%d"), "days_since_training": k,
                     "users": len(users), "new_items_since_training": int(len(catalogue) - len(champion.catalogue))}

        arms: dict[str, tuple[object, float]] = {"static": (champion, 0.0)}
        if k:  # day 0: nothing new yet, every arm is the champion
            cpu = time.process_time()
            learned = refreshed.refresh(hist, catalogue, day - DAY, trees=args.trees, replay_share=args.replay_share)
            arms["refresh"] = (refreshed, time.process_time() - cpu)
            row["refresh_groups"], row["refresh_sources_reused"] = learned["fresh_groups"], learned["sources_reused"]
            cpu = time.process_time()
            arms["retrain"] = (TwoStageRanker(ranker_cfg).fit(hist, catalogue), time.process_time() - cpu)
        else:
            arms["refresh"] = arms["retrain"] = (champion, 0.0)
        scored: dict[int, tuple[float, float]] = {}  # day 0: one model in every arm, scored once
        for name, (model, seconds) in arms.items():
            if id(model) not in scored:
                scored[id(model)] = list_metrics(top_ids(model, known, users, day, args.exclude_seen), targets, code)
            recall, ndcg = scored[id(model)]
            row[name] = {"recall_at_20": round(recall, 5), "ndcg_at_20": round(ndcg, 5), "update_cpu_seconds": round(seconds, 1)}
        rows.append(row)
        print(f"[{time.strftime('%H:%M:%S')}] {row}", file=sys.stderr, flush=True)

    later = [r for r in rows if r["days_since_training"] > 0]

    def mean(arm: str, key: str) -> float:
        return float(np.mean([r[arm][key] for r in later]))

    gains = {arm: {m: round(mean(arm, m) - mean("static", m), 5) for m in ("recall_at_20", "ndcg_at_20")}
             for arm in ("refresh", "retrain")}
    retrain_gain = gains["retrain"]["ndcg_at_20"]
    recovered = gains["refresh"]["ndcg_at_20"] / retrain_gain if retrain_gain > 0 else None
    cost = mean("refresh", "update_cpu_seconds") / max(mean("retrain", "update_cpu_seconds"), 1e-9)
    out = {
        "benchmark": "model_refresh", "data": args.data.name, "model": "two_stage", "cutoff": args.cutoff, "days": days,
        "horizon_days": args.horizon_days, "exclude_seen": args.exclude_seen, "trees": args.trees,
        "replay_share": args.replay_share, "champion_cpu_seconds": round(champion_seconds, 1), "per_day": rows,
        "mean_gain_over_static": gains,
        "recovered": None if recovered is None else round(recovered, 3),
        "cost_ratio": round(cost, 3),
        "target_met": bool(recovered is not None and recovered >= 0.8 and cost <= 0.2),
        "static_decay": [{"days_since_training": r["days_since_training"],
                          "ndcg_at_20_over_retrain": round(r["static"]["ndcg_at_20"] / r["retrain"]["ndcg_at_20"], 4)
                          if r["retrain"]["ndcg_at_20"] else None} for r in rows],
        "seconds": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
