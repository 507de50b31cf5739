"""ads: third-party ad API -> raw backup in S3 -> PostgreSQL ads.ads; daily archive of old rows to an
Iceberg table in s3://ad-data/archive/ (see docs/ads.md)."""

import dagster as dg

from covid_lakehouse.defs.ads.assets import ads, ads_archive
from covid_lakehouse.defs.ads.schedules import ad_archive, ad_archive_daily, api_load, api_load_hourly
from covid_lakehouse.defs.ads.settings import AdsSettings

defs = dg.Definitions(
    assets=[ads, ads_archive],
    jobs=[api_load, ad_archive],
    schedules=[api_load_hourly, ad_archive_daily],
    resources={"ads_settings": AdsSettings()},
)
