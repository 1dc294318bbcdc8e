"""freshrec_incremental: the micro-batch DAG (wiring only; the work is in freshrec.incremental).

Every FRESHREC_MICROBATCH_MINUTES it processes the landing files that arrived since the last
run, exactly once (the ledger records which micro-batch took each file), and refreshes the
lists of the users who just acted.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, DeltaDataIntervalTimetable, task

from freshrec.airflow.runtime import DEFAULT_RETRY_DELAY, dag_defaults, run_step
from freshrec.assets import LAKE_EVENTS, LAKE_QUARANTINE, SERVING
from freshrec.settings import Settings

MINUTES = Settings.load().microbatch_minutes

DOC_MD = f"""
### freshrec_incremental

Every {MINUTES} minutes (`FRESHREC_MICROBATCH_MINUTES`): the landing files that arrived since
the last run, and only those, through the same clean as the batch; then the users who acted
are re-scored with the live version's recommender (no retraining) and their lists upserted.

| task | what |
|---|---|
| `microbatch` | the complete landing files no run has taken (unreadable ones quarantined by name, see `freshrec quarantine --files`); per micro-batch: clean + quarantine + counts, append to the lake keyed on the batch id, keep the users' recent events, re-score exactly those users, refresh the popular lists, record freshness |

Exactly once: a killed or failed run leaves its micro-batch's claim open in the ledger, and
the next run replays it with the same batch id and files, replacing whatever the first attempt
wrote. A run started while another runs (the DAG, `freshrec run incremental`, `--watch`) returns
at once, successfully.
`max_active_runs=1`, so runs never overlap; a run that finds nothing new succeeds at once.
Freshness (landing -> served, newest event -> served, p50 and p95) is in `freshrec status`.
Continuous mode: `freshrec run incremental --watch` runs the same code every 15 s.
"""

with DAG(
    dag_id="freshrec_incremental",
    description="Every few minutes: new events only -> lake -> re-score the users who acted",
    schedule=DeltaDataIntervalTimetable(timedelta(minutes=MINUTES)),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=max(30, 3 * MINUTES)),
    **dag_defaults(retries=3, retry_delay=min(DEFAULT_RETRY_DELAY, timedelta(seconds=15)),
                   execution_timeout=timedelta(minutes=max(20, 2 * MINUTES))),
    tags=["freshrec", "incremental", "spark"],
    doc_md=DOC_MD,
) as dag:

    # Not in the freshrec_spark pool: a micro-batch must not wait behind a long training task.
    # It waits only for the lake lock while the batch's clean rewrites the lake.
    @task(outlets=[LAKE_EVENTS, LAKE_QUARANTINE, SERVING], priority_weight=10)
    def microbatch() -> dict:
        """New landing files -> clean -> lake -> re-score their users -> upsert; freshness."""
        from freshrec.incremental import incremental_step

        return run_step(incremental_step)

    microbatch()
