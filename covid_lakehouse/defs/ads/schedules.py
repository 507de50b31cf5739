"""Jobs and schedules: the seed's "api-load" (hourly) and the daily archive."""

import dagster as dg

from covid_lakehouse.defs.ads.assets import ADS_KEY, ARCHIVE_KEY
from covid_lakehouse.lib.policies import max_runtime

api_load = dg.define_asset_job(
    "api_load", selection=dg.AssetSelection.assets(ADS_KEY),
    tags=max_runtime(hours=0.75),  # hourly: a run still going when the next one is due is stuck
    description="Fetch the ad API, back the responses up to s3://ad-data/backup/, upsert ads.ads.")
ad_archive = dg.define_asset_job(
    "ad_archive", selection=dg.AssetSelection.assets(ARCHIVE_KEY), tags=max_runtime(hours=2),
    description="Move ads older than the retention from ads.ads to the Iceberg archive in s3://ad-data/archive/.")

api_load_hourly = dg.ScheduleDefinition(
    name="api_load_hourly", job=api_load, cron_schedule="0 * * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING)
# After midnight UTC, away from the top of the hour when the load runs.
ad_archive_daily = dg.ScheduleDefinition(
    name="ad_archive_daily", job=ad_archive, cron_schedule="30 0 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING)
