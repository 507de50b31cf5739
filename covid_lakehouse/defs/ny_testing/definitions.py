"""What the ny_testing domain registers in the code location (loaded by dg.load_from_defs_folder)."""

import dagster as dg

from covid_lakehouse.defs.ny_testing.assets import county_tests, raw_rows_json
from covid_lakehouse.defs.ny_testing.positivity import positivity_7d, positivity_follows_counties
from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.defs.ny_testing.schedules import ny_testing_daily, raw_job
from covid_lakehouse.defs.ny_testing.sensors import ny_testing_county_partitions

defs = dg.Definitions(
    assets=[raw_rows_json, county_tests, positivity_7d],
    jobs=[raw_job],
    schedules=[ny_testing_daily],
    sensors=[ny_testing_county_partitions, positivity_follows_counties],
    resources={"ny_testing_settings": NyTestingSettings()},
)
