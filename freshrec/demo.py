"""`make demo`: the whole pipeline on a seeded synthetic log, end to end, in a fresh home.

Uses FRESHREC_HOME when set, else ./.freshrec/demo (wiped first, so the demo is repeatable).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

from freshrec.settings import Settings


def main() -> int:
    home = Path(os.environ.get("FRESHREC_HOME") or ".freshrec/demo").resolve()
    if "FRESHREC_HOME" not in os.environ and home.exists():
        shutil.rmtree(home)
    os.environ["FRESHREC_HOME"] = str(home)
    settings = Settings.load()
    settings.ensure_dirs()

    from freshrec.generate import generate_to_landing
    from freshrec.orchestration import run_dag
    from freshrec.status import collect_status, format_status

    start = (datetime.now(timezone.utc) - timedelta(days=30)).date().isoformat()
    print(f"1/2 generating a synthetic shop (200,000 events over 30 days, with malformed rows) into {settings.landing_events_dir}")
    n = generate_to_landing(settings, SimpleNamespace(events=200_000, seed=7, users=None, items=None, days=30, start=start,
                                                      dirty=True, rows_per_file=100_000, prefix="demo"))
    print(f"    {n:,} rows landed")
    print("2/2 running the freshrec_batch DAG through Airflow "
          "(clean -> validate -> matrices -> train -> evaluate -> gate -> score -> publish)")
    if not run_dag(settings, "freshrec_batch"):
        print("the batch run failed; see the message above", file=sys.stderr)
        return 1
    status = collect_status(settings)
    print(format_status(status))
    print(json.dumps({"counts": status["counts"]}))
    shopper = _a_shopper(settings)
    if shopper is not None:
        from freshrec.client import RecsClient

        recs = RecsClient(settings.serving).recs(shopper, n=5)
        print(f"\nshopper {shopper}'s top 5 ({recs['source']}, version {recs['version']}): "
              + ", ".join(r["item_id"] for r in recs["items"]))
    print(f"\nEverything lives under {home}. Data Docs: {settings.reports_dir / 'data_docs'}")
    print(f"Inspect: FRESHREC_HOME={home} .venv/bin/freshrec status --json")
    print(f"         FRESHREC_HOME={home} .venv/bin/freshrec recs {shopper or 'USER_ID'} -n 10")
    print(f"MLflow:  .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}   (then http://127.0.0.1:5000)")
    return 0


def _a_shopper(settings: Settings) -> str | None:
    """The user with the most purchases: a shopper whose list is worth looking at."""
    import pyarrow.dataset as ds

    path = settings.features_dir / "interactions"
    if not path.is_dir():
        return None
    table = ds.dataset(str(path), format="parquet").to_table(columns=["user_id", "n_purchase"]).to_pandas()
    if table.empty:
        return None
    return str(table.groupby("user_id")["n_purchase"].sum().sort_values(kind="mergesort").index[-1])


if __name__ == "__main__":
    sys.exit(main())
