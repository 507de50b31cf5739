"""The weekly re-check of the vaccines sources.

The covid19-lake copies are frozen, so most ticks change nothing: the raw objects are content-addressed
(no new object) and the publish compares staged rows with the published ones (loaded_at kept)."""

import dagster as dg

from covid_lakehouse.defs.vaccines.assets import GROUP
from covid_lakehouse.lib.policies import max_runtime

vaccines_refresh = dg.define_asset_job(
    "vaccines_refresh",
    selection=dg.AssetSelection.groups(GROUP),
    description="Download the vaccines sources, keep them write-once in S3, publish vaccines.people_per_dose.",
    # one run at a time against the same third party
    tags={"covid_lakehouse/pool": "covid19-lake", **max_runtime(hours=1)},
)

vaccines_weekly = dg.ScheduleDefinition(
    name="vaccines_weekly",
    job=vaccines_refresh,
    cron_schedule="0 6 * * 1",  # Mondays 06:00
    execution_timezone="America/New_York",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-check the vaccine allocation and population sources every Monday morning.",
)
