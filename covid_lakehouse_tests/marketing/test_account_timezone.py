"""Facebook date_start and Google segments.date are days in each ad account's own time zone: every row
keeps that zone (account_timezone), in the source tables and in the model."""

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import AD_PERFORMANCE_KEY, ASSETS, FACEBOOK_KEY, GOOGLE_ADS_KEY
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse_dev.apis.marketing import FACEBOOK_TIMEZONES, GOOGLE_TIMEZONES

pytestmark = pytest.mark.integration


def test_every_row_names_the_time_zone_of_its_day(clean_marketing, marketing_resources, instance, pg, api) -> None:
    result = dg.materialize(ASSETS, selection=[FACEBOOK_KEY, GOOGLE_ADS_KEY, AD_PERFORMANCE_KEY],
                            resources=marketing_resources, instance=instance,
                            tags={RANGE_START_TAG: "2024-08-01", RANGE_END_TAG: "2024-08-02"})  # days no other test lists raw pages of

    assert result.success
    assert dict(pg.execute("SELECT DISTINCT account_id, account_timezone FROM marketing.facebook_ad_insights_daily"
                           ).fetchall()) == FACEBOOK_TIMEZONES
    assert dict(pg.execute("SELECT DISTINCT customer_id, account_timezone FROM marketing.google_ads_ad_daily"
                           ).fetchall()) == GOOGLE_TIMEZONES
    assert dict(pg.execute("SELECT DISTINCT account_id, account_timezone FROM marketing.ad_performance_daily"
                           ).fetchall()) == {**FACEBOOK_TIMEZONES, **GOOGLE_TIMEZONES}
    # the account's zone is asked once per account and run, not per day or page
    assert sum(1 for r in api.requests if r.path.endswith(tuple(f"/act_{a}" for a in FACEBOOK_TIMEZONES))) == 2
