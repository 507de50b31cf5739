"""Operations: a failed run is recorded in the warehouse and posted to the configured webhook."""

import dagster as dg
import pytest

from covid_lakehouse.defs.platform.sensors import WEBHOOK_ENV, record_run_failures
from covid_lakehouse_dev.apis.harness import MockApi, MockResponse

pytestmark = pytest.mark.integration


@dg.op
def explode():
    raise RuntimeError("the source was on fire")


@dg.job
def doomed():
    explode()


def _failed_run_context(instance):
    result = doomed.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return dg.build_run_status_sensor_context(
        sensor_name="record_run_failures", dagster_instance=instance, dagster_event=failure,
        dagster_run=result.dagster_run,
    ).for_run_failure(), result.run_id


def test_failed_run_is_recorded_and_posted_to_the_webhook(services, warehouse, instance, pg, monkeypatch):
    with MockApi() as hook:
        hook.route("POST", "/hook", lambda req: MockResponse.json_body({"ok": True}))
        monkeypatch.setenv(WEBHOOK_ENV, f"{hook.url}/hook")
        context, run_id = _failed_run_context(instance)
        record_run_failures(context, warehouse=warehouse)
        posted = hook.wait_for_requests(1)
    row = pg.execute("select job_name, message from ops.run_failures where run_id = %s", (run_id,)).fetchone()
    assert row[0] == "doomed" and "explode" in row[1]
    body = posted[0].json()
    assert body["run_id"] == run_id and "doomed" in body["text"]


def test_without_a_webhook_the_failure_is_still_recorded_once(services, warehouse, instance, pg, monkeypatch):
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    context, run_id = _failed_run_context(instance)
    record_run_failures(context, warehouse=warehouse)
    record_run_failures(context, warehouse=warehouse)  # a re-evaluated tick must not duplicate
    assert pg.execute("select count(*) from ops.run_failures where run_id = %s", (run_id,)).fetchone()[0] == 1
