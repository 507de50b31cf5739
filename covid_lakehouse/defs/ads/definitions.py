"""What the ads domain registers in the code location (loaded by dg.load_from_defs_folder)."""

import dagster as dg

from covid_lakehouse.defs.ads.assets import ads, ads_archive
from covid_lakehouse.defs.ads.schedules import ad_archive, ad_archive_daily, api_load, api_load_hourly
from covid_lakehouse.defs.ads.settings import AdsSettings
from covid_lakehouse.defs.ads.shown_per_group import shown_per_group_daily

defs = dg.Definitions(
    assets=[ads, ads_archive, shown_per_group_daily],
    jobs=[api_load, ad_archive],
    schedules=[api_load_hourly, ad_archive_daily],
    resources={"ads_settings": AdsSettings()},
)
