"""The automation around the loads: the 09:00 New York schedule, the partition sensor, the definitions,
and the demo procedure (runtime.run_demo's steps) on the full bundled snapshot."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from covid_lakehouse.defs.ny_testing.assets import county_tests
from covid_lakehouse.defs.ny_testing.definitions import defs
from covid_lakehouse.defs.ny_testing.resources import LIVE_URL, SOURCE_URL_ENV, NyTestingSettings
from covid_lakehouse.defs.ny_testing.schedules import ny_testing_daily
from covid_lakehouse.defs.ny_testing.warehouse import COUNTY_SCHEMA, REFERENCE_SCHEMA
from covid_lakehouse.lib.policies import rebuilt
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.ny_testing import register
from covid_lakehouse_tests.ny_testing.support import COUNTY_KEY, dataset, materialized

RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.mark.parametrize(("after", "utc_hour"), [
    (dt.datetime(2024, 1, 15, tzinfo=dt.UTC), 14),  # EST, UTC-5
    (dt.datetime(2024, 7, 15, tzinfo=dt.UTC), 13),  # EDT, UTC-4
])
def test_the_schedule_fires_at_nine_new_york_time_in_winter_and_summer(after, utc_hour):
    ticks = cron_string_iterator(after.timestamp(), ny_testing_daily.cron_schedule,
                                 ny_testing_daily.execution_timezone)
    first, second = next(ticks), next(ticks)
    assert (first.astimezone(ZoneInfo("America/New_York")).hour, first.astimezone(dt.UTC).hour) == (9, utc_hour)
    assert second - first == dt.timedelta(days=1)

    context = dg.build_schedule_context(scheduled_execution_time=first)
    request = ny_testing_daily.evaluate_tick(context).run_requests[0]
    assert request.tags["ny_testing/scheduled_for"] == first.isoformat()
    assert ny_testing_daily.job_name == "ny_testing_raw_job"


def test_the_schedule_crosses_the_dst_change_at_nine_local():
    # 2024-03-10: clocks jump forward in New York; 09:00 moves from 14:00 to 13:00 UTC.
    ticks = cron_string_iterator(dt.datetime(2024, 3, 9, tzinfo=dt.UTC).timestamp(), ny_testing_daily.cron_schedule,
                                 ny_testing_daily.execution_timezone)
    assert [t.astimezone(dt.UTC).hour for t in (next(ticks), next(ticks))] == [14, 13]


def test_the_sensor_adds_partitions_requests_one_run_over_all_and_keeps_a_cursor(ny):
    assert ny.tick().skip_message.endswith("has not been materialized yet")

    ny.serve(dataset(("St. Lawrence", "Albany", "New York")))
    assert ny.download().success
    data = ny.tick()
    [add] = data.dynamic_partitions_requests
    assert add.partitions_def_name == "ny_testing_counties"
    assert list(add.partition_keys) == ["Albany", "New York", "St. Lawrence"]  # names as they appear, sorted
    [request] = data.run_requests
    assert request.asset_selection == [COUNTY_KEY]
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("Albany", "St. Lawrence")
    assert request.tags["ny_testing/raw_key"] == ny.latest_raw()["s3_key"]
    first_cursor = data.cursor
    assert int(first_cursor) > 0

    again = ny.tick()  # no new download: nothing to do
    assert again.run_requests == [] and not again.dynamic_partitions_requests
    assert "no download since" in again.skip_message

    ny.serve(dataset(("St. Lawrence", "Albany", "New York", "Bronx")))
    assert ny.download().success
    data = ny.tick()
    [add] = data.dynamic_partitions_requests
    assert list(add.partition_keys) == ["Bronx"]
    [request] = data.run_requests  # still one run, over every county; the range follows partition order
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("Albany", "Bronx")
    assert int(data.cursor) > int(first_cursor)
    result = ny.run(request)
    assert set(materialized(result)) == {"Albany", "Bronx", "New York", "St. Lawrence"}


def test_the_definitions_resolve_with_the_platform_resources(services):
    merged = dg.Definitions.merge(defs, dg.Definitions(resources=platform_resources()))
    merged.resolve_all_job_defs()
    graph = merged.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "ny_testing/raw_rows_json", "ny_testing/county_tests", "ny_testing/positivity_7d"}
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys()} == {"ny_testing"}
    assert county_tests.partitions_def.name == "ny_testing_counties"
    assert county_tests.backfill_policy == dg.BackfillPolicy.single_run()
    policy = county_tests.op.retry_policy
    assert policy.jitter == dg.Jitter.PLUS_MINUS and policy.backoff == dg.Backoff.EXPONENTIAL
    assert {c.name for c in county_tests.check_specs} == {
        "values_readable", "county_names_usable", "no_duplicate_test_dates", "no_negative_counts", "positives_within_tests", "cumulative_consistent",
        "counties_sum_to_statewide", "fresh", "counties_present"}
    assert {s.name: s.default_status for s in merged.schedules} == {
        "ny_testing_daily_0900": dg.DefaultScheduleStatus.RUNNING}
    assert {s.name: s.default_status for s in merged.sensors} == {
        "ny_testing_county_partitions": dg.DefaultSensorStatus.RUNNING,
        "ny_testing_positivity": dg.DefaultSensorStatus.RUNNING}


def test_the_source_url_is_the_live_portal_unless_the_environment_overrides_it(monkeypatch):
    monkeypatch.delenv(SOURCE_URL_ENV, raising=False)
    assert NyTestingSettings().resolved_source_url() == LIVE_URL
    monkeypatch.setenv(SOURCE_URL_ENV, "http://mock-apis:8080/x/rows.json")
    assert NyTestingSettings().resolved_source_url() == "http://mock-apis:8080/x/rows.json"


def run_demo_steps(merged: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.ExecuteInProcessResult]:
    """runtime.run_demo's procedure: unpartitioned assets in one run, one tick of each sensor, its runs."""
    job = merged.resolve_implicit_global_asset_job_def()
    graph = merged.resolve_asset_graph()
    unpartitioned = [k for k in graph.materializable_asset_keys if not graph.get(k).is_partitioned]
    results = [job.execute_in_process(instance=instance, asset_selection=unpartitioned, raise_on_error=False)]
    for sensor in merged.sensors:
        with dg.build_sensor_context(instance=instance, definitions=merged) as context:
            data = sensor.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for request in data.run_requests or []:
            results.append(job.execute_in_process(instance=instance, asset_selection=list(request.asset_selection),
                                                  partition_key=request.partition_key, tags=request.tags,
                                                  raise_on_error=False))
    return results


@pytest.mark.slow
def test_the_demo_loads_the_full_bundled_snapshot_offline(services, resources, instance, pg, ny_settings,
                                                          monkeypatch):
    """The demo's path: covid_lakehouse_dev.apis.ny_testing.register serves the bundled snapshot, the env var points the domain at it."""
    with MockApi() as api:
        env = register(api)
        monkeypatch.setenv(SOURCE_URL_ENV, env[SOURCE_URL_ENV].replace("{base}", api.url))
        merged = rebuilt(defs, resources={**defs.resources, **resources, "ny_testing_settings": NyTestingSettings(**ny_settings)})
        download, load, positivity = run_demo_steps(merged, instance)
        assert positivity.success  # the positivity sensor's run over the counties just loaded
    assert download.success and load.success

    [raw] = download.asset_materializations_for_node("ny_testing__raw_rows_json")
    assert raw.metadata["data_source"].value.startswith("bundled offline snapshot (thru 2022-09-13")
    assert (raw.metadata["rows"].value, raw.metadata["county_count"].value) == (67_671, 62)

    schema = COUNTY_SCHEMA
    tables = pg.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND "
                        "table_type = 'BASE TABLE'", (schema,)).fetchone()[0]
    assert tables == 62
    per_county = pg.execute(f'SELECT count(DISTINCT county), min(n), max(n), sum(n) FROM (SELECT county, count(*) n '
                            f'FROM "{schema}".all_counties GROUP BY county) c').fetchone()
    assert per_county == (62, 927, 927, 57_474)  # 62 counties x 927 days
    lawrence = pg.execute(f'SELECT new_positives, cumulative_number_of_positives, total_number_of_tests_performed, '
                          f'cumulative_number_of_tests_performed FROM "{schema}".st_lawrence '
                          "WHERE test_date = '2022-09-13'").fetchone()
    assert lawrence == (30, 24411, 280, 607022)  # the export's first line
    reference = pg.execute(f'SELECT count(DISTINCT (geography, name)), count(*) FROM '
                           f'"{REFERENCE_SCHEMA}".geography_totals').fetchone()
    assert reference == (11, 11 * 927)  # 10 regions + statewide
    outcome = {e.check_name: (e.passed, e.severity.value) for e in load.get_asset_check_evaluations()}
    assert outcome == {
        "values_readable": (True, "ERROR"), "county_names_usable": (True, "ERROR"),
        "no_duplicate_test_dates": (True, "ERROR"), "no_negative_counts": (True, "ERROR"),
        "positives_within_tests": (True, "ERROR"), "cumulative_consistent": (True, "WARN"),
        "counties_sum_to_statewide": (True, "WARN"), "fresh": (False, "WARN"), "counties_present": (True, "WARN")}
    assert len(load.asset_materializations_for_node("ny_testing__county_tests")) == 62
