"""Everything freshrec does with Airflow: what DAG files import at run time (runtime), the
Airflow environment under FRESHREC_HOME (env), `freshrec run` (local) and `freshrec airflow`
(standalone)."""
