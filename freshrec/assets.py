"""Airflow Assets: what each DAG task produces, so the UI's asset graph links producers and
consumers across freshrec_batch and freshrec_incremental. Imported by the DAG files only."""

from airflow.sdk import Asset

# What each step produces, so downstream DAGs (and the UI's asset graph) can follow the data.
LAKE_EVENTS = Asset(name="freshrec_lake_events", uri="freshrec://lake/events")
LAKE_QUARANTINE = Asset(name="freshrec_lake_quarantine", uri="freshrec://lake/quarantine")
VALIDATED_EVENTS = Asset(name="freshrec_validated_events", uri="freshrec://lake/events/validated")
FEATURES = Asset(name="freshrec_features", uri="freshrec://features")
MODEL = Asset(name="freshrec_model", uri="freshrec://mlflow/models/freshrec")
RECS = Asset(name="freshrec_recs", uri="freshrec://recs")
SERVING = Asset(name="freshrec_serving", uri="freshrec://serving/live")
