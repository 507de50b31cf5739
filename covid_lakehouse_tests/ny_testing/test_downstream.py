"""The county tables load as inputs: the 7-day positivity asset reads them through the warehouse IO
manager (only its counties), is written per county, and follows each load through its sensor."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import pytest

from covid_lakehouse.defs.ny_testing.positivity import POSITIVITY_KEY
from covid_lakehouse_tests.ny_testing.support import COUNTY_KEY, dataset

pytestmark = pytest.mark.integration
RAW_KEY = dg.AssetKey(["ny_testing", "raw_rows_json"])


def _positivity(pg) -> dict[tuple[str, date], tuple[int, int, float]]:
    rows = pg.execute("SELECT county, test_date, positives_7d, tests_7d, positivity_7d "
                      "FROM ny_testing_derived.positivity_7d").fetchall()
    return {(c, d): (p, t, r) for c, d, p, t, r in rows}


def _follow(ny) -> list[dg.RunRequest]:
    sensor = ny.defs.resolve_sensor_def("ny_testing_positivity")
    with dg.build_sensor_context(instance=ny.instance, definitions=ny.defs) as context:
        return list(sensor.evaluate_tick(context).run_requests or [])


def test_positivity_follows_a_load_over_its_counties(ny, pg):
    ny.serve(dataset(("Albany", "New York", "St. Lawrence"), days=10))
    assert ny.daily().success
    [request] = _follow(ny)
    assert request.asset_selection == [POSITIVITY_KEY]
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("Albany", "St. Lawrence")
    assert ny.run(request).success
    got = _positivity(pg)
    assert len(got) == 30
    first = date.fromisoformat(dataset(("Albany",), days=1)[0][0][:10])
    assert got[("Albany", first)] == (5, 100, 0.05)  # one day in the window so far
    assert got[("New York", first + timedelta(days=9))] == (6 * 7, 110 * 7, pytest.approx(6 / 110))  # seven


def test_one_county_partition_reads_and_replaces_only_its_county(ny, pg):
    ny.serve(dataset(("Albany", "New York"), days=3))
    assert ny.daily().success
    job = ny.defs.resolve_implicit_global_asset_job_def()
    for county in ("Albany", "New York"):
        assert job.execute_in_process(instance=ny.instance, asset_selection=[POSITIVITY_KEY],
                                      partition_key=county).success
    pg.execute("UPDATE ny_testing.albany SET new_positives = 50")  # Albany changes, New York does not
    result = job.execute_in_process(instance=ny.instance, asset_selection=[POSITIVITY_KEY], partition_key="Albany")
    assert result.success
    [mat] = result.asset_materializations_for_node("ny_testing__positivity_7d")
    assert mat.metadata["dagster/row_count"].value == 3  # read only Albany
    got = _positivity(pg)
    assert sorted(v[0] for k, v in got.items() if k[0] == "Albany") == [50, 100, 150]
    assert sorted(v[0] for k, v in got.items() if k[0] == "New York") == [6, 12, 18]


def test_analysts_load_the_published_datasets_without_a_run(ny):
    ny.serve(dataset(("Albany", "New York"), days=2))
    assert ny.daily().success
    albany = ny.defs.load_asset_value(COUNTY_KEY, partition_key="Albany", instance=ny.instance)
    assert set(albany["county"]) == {"Albany"} and len(albany) == 2
    raw = ny.defs.load_asset_value(RAW_KEY, instance=ny.instance)
    assert raw == ny.body
