"""The domain's one setting object: where the data comes from and how a load runs. The warehouse
schemas are fixed (migrations/ creates them): nothing but the county tables is made at run time."""

import dagster as dg

from covid_lakehouse.lib.http.hosts import source_url
from covid_lakehouse.lib.settings import setting

LIVE_URL = "https://health.data.ny.gov/api/views/xdss-u53e/rows.json?accessType=DOWNLOAD"
SOURCE_URL = setting("NY_TESTING_SOURCE_URL", "the rows.json export of health.data.ny.gov dataset xdss-u53e",
                     default=LIVE_URL, scope="ny_testing")
SOURCE_URL_ENV = SOURCE_URL.name


class NyTestingSettings(dg.ConfigurableResource):
    """Defaults are production's; tests point the raw prefix somewhere of their own."""

    source_url: str = ""  # empty: $NY_TESTING_SOURCE_URL, else the live portal (read at run time)
    raw_bucket: str = "raw"
    raw_prefix: str = "ny_testing/xdss-u53e"
    max_workers: int = 4  # counties published concurrently, each on its own pooled connection
    max_age_days: int = 2  # the freshness check warns when the newest test_date is older than this
    # Staged rows are rewritten in county order above this size; unset: PostgreSQL's shared_buffers,
    # the size above which each county's upsert would read the unordered table from disk.
    order_staging_above_mb: int | None = None

    def resolved_source_url(self) -> str:
        # Only health.data.ny.gov (or the host the operator set in the variable): see lib/http/hosts.py.
        return source_url(SOURCE_URL, self.source_url, field="source_url")
