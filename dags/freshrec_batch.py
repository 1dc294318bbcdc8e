"""freshrec_batch: the daily batch DAG (wiring only; the work is in freshrec.steps).

Heavy imports (pyspark, torch, great_expectations) happen inside the task functions, so this
file parses in well under a second. Settings come from FRESHREC_* environment variables
(``Settings.load()``), so the UI, ``airflow dags test`` and ``freshrec run batch`` agree.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, CronDataIntervalTimetable, task

from freshrec.airflow.runtime import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY,
    SPARK_POOL,
    batch_id_from_context,
    dag_defaults,
    run_step,
)
from freshrec.assets import FEATURES, LAKE_EVENTS, LAKE_QUARANTINE, MODEL, RECS, SERVING, VALIDATED_EVENTS
from freshrec.settings import Settings

CRON = Settings.load().batch_schedule
WHEN = "triggered runs only" if CRON == "manual" else f"cron `{CRON}` UTC; each run covers the interval before it"

DOC_MD = f"""
### freshrec_batch

Daily batch of the freshrec pipeline ({WHEN}; `FRESHREC_BATCH_SCHEDULE`).

| task | what | produces |
|---|---|---|
| `clean` | Spark clean of every landing file; bad rows go to quarantine with a reason | `lake/events`, `lake/quarantine`, ledger counts |
| `validate` | Great Expectations gate on the clean events; fails the run (no retries) when the data is unfit | - |
| `matrices` | stable id maps, weighted interactions, recent sequences, item stats | `features/` |
| `train` | fit the PyTorch model on the time split; register it in MLflow (alias `challenger`) | model version |
| `evaluate` | model, every baseline and the champion on the same held-out window (MLflow runs) | metrics |
| `gate` | promote to `champion` only if it beats the best baseline and the champion | `reports/gate.json` |
| `score` | Spark job over user partitions: top-N per user, similar items, popular, query lists | `recs/<version>/` |
| `publish` | write the version beside the live one, switch the live pointer atomically, prune; re-score the users of micro-batches the version was not built from | serving store |
| `experiments` | for each running experiment (`freshrec experiment create`), publish each variant that is not the live version as a version of its own beside it, and refresh the reports (MLflow runs tagged `freshrec.kind=experiment`) | serving store, `reports/experiments/` |

`freshrec_incremental` may run at any time beside it: `clean` holds the lake lock while it
rebuilds the lake (a micro-batch waits, then its rows are in the rebuild), train and evaluate
read the lake only up to the newest event `clean` saw, and `matrices` folds the micro-batches'
recent events into the batch features.

Every task is idempotent: rerunning a run (or a whole day) overwrites the same outputs; train
reuses the version it registered for the same batch, and publish skips a version already live.
Heavy tasks share the `freshrec_spark` pool (1 slot) so two jobs never compete for one
machine. Data-quality failures are not retried; anything else is retried twice. A failure
anywhere leaves the last published version serving.

Run it locally with `freshrec run batch` (`airflow dags test` with the environment from
`freshrec.airflow.env.airflow_env`), or `airflow dags test freshrec_batch` in a shell set up by
`python -m freshrec.airflow.env env`.
"""

with DAG(
    dag_id="freshrec_batch",
    description="Daily: clean, validate, features, train, evaluate, gate, score and publish",
    # A data interval, not a trigger timetable: tasks name their batch after it. Manual: a
    # triggered run's interval is its logical date.
    schedule=None if CRON == "manual" else CronDataIntervalTimetable(CRON, timezone="UTC"),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    **dag_defaults(retries=DEFAULT_RETRIES, retry_delay=DEFAULT_RETRY_DELAY, execution_timeout=timedelta(hours=3)),
    tags=["freshrec", "batch", "spark"],
    doc_md=DOC_MD,
) as dag:

    @task(pool=SPARK_POOL, outlets=[LAKE_EVENTS, LAKE_QUARANTINE])
    def clean(**context) -> dict:
        """Clean every landing file into lake/events; quarantine the rest."""
        from freshrec.steps import clean_step

        return run_step(clean_step, batch_id=batch_id_from_context(context))

    @task(pool=SPARK_POOL, outlets=[VALIDATED_EVENTS])
    def validate(**context) -> dict:
        """Great Expectations gate: a QualityGateError fails the run without retries."""
        from freshrec.steps import validate_step

        return run_step(validate_step, batch_id=batch_id_from_context(context))

    @task(pool=SPARK_POOL, outlets=[FEATURES])
    def matrices() -> dict:
        """Id maps, weighted interactions, recent sequences and item stats under features/."""
        from freshrec.steps import matrices_step

        return run_step(matrices_step)

    @task(pool=SPARK_POOL, outlets=[MODEL])
    def train(cleaned: dict, **context) -> dict:
        """Fit the model on the held-out split (the lake as clean left it); register it as the challenger."""
        from freshrec.steps import train_step

        return run_step(train_step, batch_id=batch_id_from_context(context), until=cleaned.get("until"))

    @task(pool=SPARK_POOL)
    def evaluate(trained: dict, cleaned: dict, **context) -> dict:
        """Evaluate the challenger, every baseline and the champion on the same window."""
        from freshrec.steps import evaluate_step

        return run_step(evaluate_step, trained=trained, batch_id=batch_id_from_context(context), until=cleaned.get("until"))

    @task
    def gate(trained: dict, evaluated: dict, **context) -> dict:
        """Promotion gate: champion only when better than the best baseline and the champion."""
        from freshrec.steps import gate_step

        return run_step(gate_step, trained=trained, evaluated=evaluated, batch_id=batch_id_from_context(context))

    @task(pool=SPARK_POOL, outlets=[RECS])
    def score(decision: dict, **context) -> dict:
        """Score every user with what the gate chose; similar, popular and query lists."""
        from freshrec.steps import score_step

        return run_step(score_step, batch_id=batch_id_from_context(context), gate=decision)

    @task(outlets=[SERVING])
    def publish(scored: dict) -> dict:
        """Publish the scored version and switch it live atomically."""
        from freshrec.steps import publish_step

        return run_step(publish_step, scored=scored)

    @task(pool=SPARK_POOL, outlets=[SERVING])
    def experiments(published: dict) -> dict:
        """Publish every running experiment's variants from this batch, and refresh their reports."""
        from freshrec.steps import experiments_step

        return run_step(experiments_step)

    cleaned = clean()
    trained = train(cleaned)
    cleaned >> validate() >> matrices() >> trained
    evaluated = evaluate(trained, cleaned)
    experiments(publish(score(gate(trained, evaluated))))
