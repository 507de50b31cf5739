"""Run-failure alerting: every failed run is recorded in the warehouse (ops.run_failures) and, when
RUN_FAILURE_WEBHOOK_URL is set, posted to that webhook (Slack-compatible JSON)."""



import dagster as dg
import requests
from psycopg import sql

from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.settings import RUN_FAILURE_WEBHOOK_URL, SETTINGS

WEBHOOK_ENV = RUN_FAILURE_WEBHOOK_URL


def record_failure(warehouse: PostgresResource, *, run_id: str, job_name: str, message: str) -> None:
    # ops.run_failures is created by migration lib/migrations/0001; `migrate` runs at start-up.
    with warehouse.connection() as conn:
        conn.execute(
            sql.SQL("INSERT INTO ops.run_failures (run_id, job_name, message) VALUES (%s, %s, %s) "
                    "ON CONFLICT (run_id) DO NOTHING"),
            (run_id, job_name, message[:4000]),
        )


def post_webhook(url: str, *, run_id: str, job_name: str, message: str) -> None:
    text = f"covid_lakehouse run {run_id} of {job_name} failed: {message[:500]}"
    response = requests.post(url, json={"text": text, "run_id": run_id, "job_name": job_name}, timeout=10)
    response.raise_for_status()


@dg.run_failure_sensor(name="record_run_failures", monitor_all_code_locations=False,
                       default_status=dg.DefaultSensorStatus.RUNNING)
def record_run_failures(context: dg.RunFailureSensorContext, warehouse: PostgresResource) -> None:
    run = context.dagster_run
    message = context.failure_event.message or "run failed"
    record_failure(warehouse, run_id=run.run_id, job_name=run.job_name, message=message)
    url = SETTINGS[WEBHOOK_ENV].get()
    if url:
        post_webhook(url, run_id=run.run_id, job_name=run.job_name, message=message)
