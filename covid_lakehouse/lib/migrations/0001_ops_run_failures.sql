-- Failed runs recorded by the record_run_failures sensor (covid_lakehouse/defs/platform/sensors.py).
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.run_failures (
    run_id    text PRIMARY KEY,
    job_name  text NOT NULL,
    message   text,
    failed_at timestamptz NOT NULL DEFAULT now()
);
