-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
-- The `freshrec` role and database (the serving store when FRESHREC_SERVING_URL is a postgresql URL)
-- come from POSTGRES_USER / POSTGRES_DB; this adds one role and database each for Airflow's
-- metadata and MLflow's tracking store (named as `freshrec stack` names them: freshrec_airflow, freshrec_mlflow).
-- LOCAL-DEV PASSWORDS: change them (here and in docker-compose.yml) before exposing the stack.
CREATE ROLE airflow WITH LOGIN PASSWORD 'airflow';
CREATE DATABASE freshrec_airflow OWNER airflow;

CREATE ROLE mlflow WITH LOGIN PASSWORD 'mlflow';
CREATE DATABASE freshrec_mlflow OWNER mlflow;
