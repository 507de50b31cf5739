"""Runs out of order: a county table never goes back to an older download than the one it reflects.

A county run pins the raw download that triggered it (sensor tags). A retry of that run (after a crash)
can start after the next download has been published; it must write nothing and say why, without failing.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from covid_lakehouse.defs.ny_testing.asset_keys import RAW_FETCHED_AT_TAG, RAW_KEY, RAW_KEY_TAG
from covid_lakehouse.defs.ny_testing.warehouse import REFERENCE_SCHEMA
from covid_lakehouse_tests.ny_testing.support import COUNTY_KEY, dataset, materialized

pytestmark = pytest.mark.integration

TABLES = ("albany", "new_york", "st_lawrence")


def observations(result) -> dict[str, dict]:
    """Partition -> metadata of the per-county observations of a run."""
    return {o.partition: {k: v.value for k, v in o.metadata.items()}
            for o in result.asset_observations_for_node("ny_testing__county_tests") if o.partition}


def reference(pg) -> list[tuple]:
    return pg.execute(f'SELECT * FROM "{REFERENCE_SCHEMA}".geography_totals ORDER BY 1, 2, 3').fetchall()


def test_a_retried_run_of_an_older_download_does_not_overwrite_a_newer_one(ny, pg):
    old_rows = dataset()
    ny.serve(old_rows)
    assert ny.download().success  # download N ...
    [old_request] = ny.tick().run_requests  # ... whose load crashes before publishing (never ran here)
    old_key = ny.latest_raw()["s3_key"]

    revised = [r.copy() for r in old_rows]
    next(r for r in revised if r[1] == "Albany" and r[0].startswith("2022-09-12"))[2] = "9"
    ny.serve(revised)
    newer = ny.daily()  # download N+1, published
    assert newer.success
    new_key = ny.latest_raw()["s3_key"]
    assert ny.rows("albany")[dt.date(2022, 9, 12)]["new_positives"] == 9
    published = {t: ny.rows(t) for t in TABLES}
    published_reference = reference(pg)

    retry = ny.run(old_request)  # the retry of N's run, same tags
    assert retry.success  # nothing is wrong: an operator sees no red run
    assert {t: ny.rows(t) for t in TABLES} == published  # values and load_date unchanged
    assert materialized(retry) == {}
    skipped = observations(retry)
    assert set(skipped) == {"Albany", "New York", "St. Lawrence"}
    assert skipped["Albany"]["outcome"].startswith(f"skipped: superseded by download {new_key}")
    assert (skipped["Albany"]["superseded_by"], skipped["Albany"]["raw_key"]) == (new_key, old_key)
    [summary] = [o for o in retry.asset_observations_for_node("ny_testing__county_tests") if not o.partition]
    assert summary.metadata["counties_superseded"].value == ["Albany", "New York", "St. Lawrence"]
    assert "skipped: superseded by download" in summary.metadata["load_summary"].value

    versions = pg.execute(f'SELECT target_table, county, raw_key FROM "{REFERENCE_SCHEMA}".table_versions '
                          "ORDER BY 1").fetchall()
    assert versions == [("ny_testing.albany", "Albany", new_key), ("ny_testing.new_york", "New York", new_key),
                        ("ny_testing.st_lawrence", "St. Lawrence", new_key),
                        ("ny_testing_reference.geography_totals", None, new_key)]
    assert reference(pg) == published_reference  # the STATEWIDE sums of N+1 stay too
    assert summary.metadata["reference_rows"].value.startswith(f"skipped: superseded by download {new_key}")

    # The next download (same bytes as N+1, fetched later) loads as usual: nothing to change, nothing skipped.
    again = ny.daily()
    assert again.success and observations(again) == {}
    assert {c: m["unchanged"] for c, m in materialized(again).items()} == {
        "Albany": 3, "New York": 3, "St. Lawrence": 3}
    assert {t: ny.rows(t) for t in TABLES} == published

    # A deliberate replay (config raw_key) goes back in time on purpose, and is not refused as superseded ...
    job = ny.defs.resolve_implicit_global_asset_job_def()
    replay = job.execute_in_process(
        instance=ny.instance, asset_selection=[COUNTY_KEY], partition_key="Albany",
        run_config={"ops": {"ny_testing__county_tests": {"config": {"raw_key": old_key}}}})
    assert replay.success and set(materialized(replay)) == {"Albany"}
    assert ny.rows("albany")[dt.date(2022, 9, 12)]["new_positives"] == 5
    # ... and the next download (the source still says 9), fetched later, loads over it as usual.
    assert ny.daily().success
    assert ny.rows("albany")[dt.date(2022, 9, 12)]["new_positives"] == 9


def test_a_run_tagged_without_its_fetch_time_takes_it_from_the_download_it_names(ny, pg):
    """A run the sensor requested before it set the fetch-time tag (queued or retried across that upgrade)
    carries only the raw key: the fetch time is looked up from the materialization that stored that key,
    not the latest one; a key no materialization stored fails the run, writing nothing."""
    ny.serve(dataset())
    assert ny.download().success
    [request] = ny.tick().run_requests
    key = ny.latest_raw()["s3_key"]
    fetched = ny.instance.get_latest_materialization_event(RAW_KEY).timestamp
    ny.serve(dataset(days=4))
    assert ny.download().success and ny.latest_raw()["s3_key"] != key  # a later download, not loaded

    tags = {k: v for k, v in request.tags.items() if k != RAW_FETCHED_AT_TAG}
    assert ny.run(dg.RunRequest(asset_selection=request.asset_selection, tags=tags)).success
    versions = pg.execute(f'SELECT DISTINCT raw_key, fetched_at FROM "{REFERENCE_SCHEMA}".table_versions').fetchall()
    assert versions == [(key, dt.datetime.fromtimestamp(fetched, dt.UTC))]
    published = {t: ny.rows(t) for t in TABLES}

    unknown = {**tags, RAW_KEY_TAG: f"{ny.settings.raw_prefix}/sha256=0.json"}
    failed = ny.run(dg.RunRequest(asset_selection=request.asset_selection, tags=unknown))
    assert not failed.success
    error = failed.failure_data_for_node("ny_testing__county_tests").error.message
    assert "no ny_testing/raw_rows_json materialization stored" in error
    assert {t: ny.rows(t) for t in TABLES} == published
