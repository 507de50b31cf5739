"""The domain's one setting object: where the data comes from and where it lands."""

import os

import dagster as dg

LIVE_URL = "https://health.data.ny.gov/api/views/xdss-u53e/rows.json?accessType=DOWNLOAD"
SOURCE_URL_ENV = "NY_TESTING_SOURCE_URL"


class NyTestingSettings(dg.ConfigurableResource):
    """Defaults are production's; tests point the schemas and the raw prefix somewhere of their own."""

    source_url: str = ""  # empty: $NY_TESTING_SOURCE_URL, else the live portal (read at run time)
    county_schema: str = "ny_testing"  # one table per county + the all_counties view, nothing else
    reference_schema: str = "ny_testing_reference"  # REGION / STATEWIDE rows, for reconciliation
    staging_schema: str = "ny_testing_staging"  # one UNLOGGED table per running load, dropped after it
    raw_bucket: str = "raw"
    raw_prefix: str = "ny_testing/xdss-u53e"
    max_workers: int = 4  # counties published concurrently, each on its own pooled connection
    max_age_days: int = 2  # the freshness check warns when the newest test_date is older than this

    def resolved_source_url(self) -> str:
        return self.source_url or os.environ.get(SOURCE_URL_ENV) or LIVE_URL
