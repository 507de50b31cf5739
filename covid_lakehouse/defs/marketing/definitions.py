"""What the marketing domain registers in the code location (loaded by dg.load_from_defs_folder)."""

import dagster as dg

from covid_lakehouse.defs.marketing.assets import ASSETS
from covid_lakehouse.defs.marketing.clevertap import CleverTapResource
from covid_lakehouse.defs.marketing.cost_per_conversion import cost_follows_model, cost_per_conversion_daily
from covid_lakehouse.defs.marketing.facebook import FacebookAdsResource
from covid_lakehouse.defs.marketing.google_ads import GoogleAdsResource
from covid_lakehouse.defs.marketing.rds import RdsSourceResource
from covid_lakehouse.defs.marketing.schedules import marketing_daily
from covid_lakehouse.defs.marketing.sensors import marketing_bootstrap

defs = dg.Definitions(
    assets=[*ASSETS, cost_per_conversion_daily],
    schedules=[marketing_daily],
    sensors=[marketing_bootstrap, cost_follows_model()],
    resources={
        "marketing_facebook": FacebookAdsResource(),
        "marketing_google_ads": GoogleAdsResource(),
        "marketing_clevertap": CleverTapResource(),
        "marketing_rds": RdsSourceResource(),
    },
)
