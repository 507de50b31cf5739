"""NYS COVID-19 testing per county (health.data.ny.gov xdss-u53e): daily download at 09:00 New York
time, one warehouse table per county, write-audit-publish. See docs/ny_testing.md."""

import dagster as dg

from covid_lakehouse.defs.ny_testing.assets import county_tests, raw_rows_json
from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.defs.ny_testing.schedules import ny_testing_daily, raw_job
from covid_lakehouse.defs.ny_testing.sensors import ny_testing_county_partitions


def build_defs(settings: NyTestingSettings | None = None) -> dg.Definitions:
    """The domain's definitions; tests pass their own settings (schemas, raw prefix, source URL)."""
    return dg.Definitions(
        assets=[raw_rows_json, county_tests],
        jobs=[raw_job],
        schedules=[ny_testing_daily],
        sensors=[ny_testing_county_partitions],
        resources={"ny_testing": settings or NyTestingSettings()},
    )


defs = build_defs()
