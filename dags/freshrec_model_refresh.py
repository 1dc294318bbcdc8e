"""freshrec_model_refresh: the online model refresh DAG (wiring only; the work is in freshrec.refresh).

Every FRESHREC_MODEL_REFRESH_MINUTES the champion model learns from the events since it was
trained, warm-started from its own weights, and is published when it does at least as well as
the live model on the newest events.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, DeltaDataIntervalTimetable, task

from freshrec.airflow.runtime import DEFAULT_RETRY_DELAY, SPARK_POOL, dag_defaults, run_step
from freshrec.assets import MODEL, RECS, SERVING
from freshrec.settings import Settings

MINUTES = Settings.load().model_refresh_minutes

DOC_MD = f"""
### freshrec_model_refresh

Every {MINUTES} minutes (`FRESHREC_MODEL_REFRESH_MINUTES`): the champion learns from the events
since its training data ended, from its own weights (docs/model-refresh.md).

| task | what |
|---|---|
| `refresh` | the sequence model: ID rows for new items, a bounded number of steps of its own loss on the new examples plus a replay share of older ones; the two-stage ranker: more boosting rounds on the new labels, its candidate sources refitted. Judged against the live model on the newest `FRESHREC_REFRESH_HOLDOUT_DAYS` with the batch's gate; registered as a new version of `freshrec` tagged with its parent version and event range; when promoted, every user is re-scored and published, then `champion` moves |

It declines (and succeeds) while a full batch trains, with no champion model, after
`FRESHREC_MAX_REFRESHES` refreshes in a row, once the catalogue has grown by more than
`FRESHREC_REFRESH_MAX_ITEM_GROWTH`, or when too few new events have arrived; the reason is in
the task's return value and log. A rerun on the same events registers nothing new.
`max_active_runs=1`, so refreshes never overlap.
"""

with DAG(
    dag_id="freshrec_model_refresh",
    description="Every hour: the champion learns from the new events (warm start), judged, registered, published",
    schedule=DeltaDataIntervalTimetable(timedelta(minutes=MINUTES)),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    **dag_defaults(retries=1, retry_delay=DEFAULT_RETRY_DELAY, execution_timeout=timedelta(hours=1)),
    tags=["freshrec", "model", "spark"],
    doc_md=DOC_MD,
) as dag:

    @task(pool=SPARK_POOL, outlets=[MODEL, RECS, SERVING])
    def refresh() -> dict:
        """Warm-start update of the champion on the new events; judged, registered, published when promoted."""
        from freshrec.refresh import refresh_step

        return run_step(refresh_step)

    refresh()
