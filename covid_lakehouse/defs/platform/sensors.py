"""Run-failure alerting: every failed run is recorded in the warehouse (ops.run_failures) and, when
RUN_FAILURE_WEBHOOK_URL is set, posted to that webhook (Slack-compatible JSON).

A Slack webhook's path is its secret: the post goes through the product's HTTP client with the path
hidden, so no error (HTTP status, connection refused, DNS) carries the URL into the tick's error or a log.
"""

import dagster as dg
from psycopg import sql

from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse.lib.settings import RUN_FAILURE_WEBHOOK_URL, SETTINGS

WEBHOOK_ENV = RUN_FAILURE_WEBHOOK_URL
# A small budget: the post runs inside a sensor tick, which has its own time limit.
WEBHOOK_HTTP = HttpResource(max_attempts=3, connect_timeout_s=5.0, read_timeout_s=10.0, max_total_wait_s=15.0)


def record_failure(warehouse: PostgresResource, *, run_id: str, job_name: str, message: str) -> None:
    # ops.run_failures is created by migration lib/migrations/0001; `migrate` runs at start-up.
    with warehouse.connection() as conn:
        conn.execute(
            sql.SQL("INSERT INTO ops.run_failures (run_id, job_name, message) VALUES (%s, %s, %s) "
                    "ON CONFLICT (run_id) DO NOTHING"),
            (run_id, job_name, message[:4000]),
        )


def post_webhook(url: str, *, run_id: str, job_name: str, message: str, http: HttpResource | None = None) -> None:
    text = f"covid_lakehouse run {run_id} of {job_name} failed: {message[:500]}"
    with (http or WEBHOOK_HTTP).client(secret_path=True, auth_hint=RUN_FAILURE_WEBHOOK_URL) as client:
        client.post(url, json={"text": text, "run_id": run_id, "job_name": job_name}, ok_statuses=range(200, 300))


@dg.run_failure_sensor(name="record_run_failures", monitor_all_code_locations=False,
                       default_status=dg.DefaultSensorStatus.RUNNING)
def record_run_failures(context: dg.RunFailureSensorContext, warehouse: PostgresResource) -> None:
    run = context.dagster_run
    message = context.failure_event.message or "run failed"
    record_failure(warehouse, run_id=run.run_id, job_name=run.job_name, message=message)
    url = SETTINGS[WEBHOOK_ENV].get()
    if url:
        post_webhook(url, run_id=run.run_id, job_name=run.job_name, message=message)
