"""Every run the product starts carries `dagster/max_runtime`, so run monitoring fails a stuck run (and
the run-failure sensor reports it) instead of it holding its pool slot and its staging forever.

Runs of a named job inherit the job's tags (the schedule and sensor daemons merge them into the run);
runs of an asset selection inherit none, so those schedules and sensors are evaluated and their
RunRequests must carry the tag themselves."""

from datetime import UTC, datetime

import dagster as dg
import pytest

from covid_lakehouse.definitions import code_location
from covid_lakehouse.lib.policies import MAX_RUNTIME_TAG

DAY = 24 * 3600


def _seconds(tags) -> float:
    assert MAX_RUNTIME_TAG in tags, f"no {MAX_RUNTIME_TAG} tag in {dict(tags)}"
    seconds = float(tags[MAX_RUNTIME_TAG])
    assert 0 < seconds <= DAY
    return seconds


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    return code_location()


def _named_jobs(defs: dg.Definitions) -> dict[str, dg.JobDefinition]:
    # "__ASSET_JOB" and "__anonymous_asset_job_<target>" are Dagster's implicit jobs (no tags of ours).
    return {j.name: j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")}


def test_every_job_bounds_its_runtime(defs):
    jobs = _named_jobs(defs)
    assert jobs, "the code location defines jobs"
    for name, job in jobs.items():
        assert MAX_RUNTIME_TAG in job.tags, f"job {name} has no {MAX_RUNTIME_TAG} tag"
        _seconds(job.tags)


def _evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, name: str) -> list[dg.RunRequest]:
    """Run requests of the schedules and sensors that target an asset selection (cheap to evaluate)."""
    if name == "marketing_daily":
        schedule = defs.resolve_schedule_def(name)
        context = dg.build_schedule_context(instance=instance,
                                            scheduled_execution_time=datetime(2024, 5, 2, 6, tzinfo=UTC))
        return list(schedule.evaluate_tick(context).run_requests)
    sensor = defs.resolve_sensor_def(name)
    if name in FOLLOWERS:  # a downstream asset's sensor: requests runs once its upstream materialized
        upstream, partitions_name, partition = FOLLOWERS[name]
        if partitions_name:
            instance.add_dynamic_partitions(partitions_name, [partition])
        instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey.from_user_string(upstream),
                                                                    partition=partition))
        return list(sensor(dg.build_sensor_context(instance=instance)).run_requests)
    if name == "ny_testing_county_partitions":
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=dg.AssetKey(["ny_testing", "raw_rows_json"]),
            metadata={"counties": ["Albany", "Bronx"], "s3_key": "raw/ny_testing/xdss-u53e/sha256=ab.json"}))
    return list(sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs)).run_requests)


def _target_job(automation) -> str | None:
    try:
        return automation.job_name
    except dg.DagsterInvalidDefinitionError:  # a sensor over an asset selection names no job
        return None


# sensor -> (upstream asset, its dynamic partitions or None, a partition it materialized)
FOLLOWERS = {
    "ny_testing_positivity": ("ny_testing/county_tests", "ny_testing_counties", "Albany"),
    "omop_providers_per_specialty": ("omop/provider", "omop_tenants", "acme"),
    "marketing_cost_per_conversion": ("marketing/ad_performance_daily", None, "2024-05-01"),
}
ASSET_SELECTION_TARGETS = {"marketing_daily", "marketing_bootstrap", "ny_testing_county_partitions", *FOLLOWERS}


def test_every_scheduled_or_sensed_run_bounds_its_runtime(defs):
    jobs = _named_jobs(defs)
    automations = [*(defs.schedules or []), *(defs.sensors or [])]
    evaluated = set()
    with dg.instance_for_test() as instance:
        for automation in automations:
            if isinstance(automation, dg.RunStatusSensorDefinition):
                continue  # reacts to runs, requests none
            job = jobs.get(_target_job(automation))
            if job is not None:
                _seconds(job.tags)  # inherited by each run it requests
                continue
            assert automation.name in ASSET_SELECTION_TARGETS, (
                f"{automation.name} targets an asset selection: its RunRequests need {MAX_RUNTIME_TAG}; "
                "add it to ASSET_SELECTION_TARGETS here so that they are checked")
            requests = _evaluate(defs, instance, automation.name)
            assert requests, f"{automation.name} requested no run to check"
            for request in requests:
                _seconds(request.tags)
            evaluated.add(automation.name)
    assert evaluated == ASSET_SELECTION_TARGETS
