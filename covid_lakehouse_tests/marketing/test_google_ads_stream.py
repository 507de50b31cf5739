"""A searchStream that broke off is not a smaller load: an array element with an `error` member, or a
missing summary row although the query asked for one, fails the customer-day and publishes nothing."""

from datetime import date

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing import google_ads
from covid_lakehouse.defs.marketing.assets import ASSETS, GOOGLE_ADS_KEY
from covid_lakehouse.defs.marketing.common import SourceApiError
from covid_lakehouse.defs.marketing.google_ads import GoogleAdsResource
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse_dev.apis.marketing import MarketingMock

CUSTOMER, DAY = "1234567890", date(2024, 7, 1)


def page(mock: MarketingMock, fault: str | None):
    mock.google_stream_fault = fault
    [first] = GoogleAdsResource().connector(clock=FakeClock()).pages(CUSTOMER, DAY)
    return first


def test_an_error_element_in_the_stream_fails_naming_the_error(api, mock: MarketingMock) -> None:
    broken = page(mock, "error")
    assert broken.doc[0]["results"]  # rows arrived before the error: parsed alone they look like a good load

    with pytest.raises(SourceApiError, match=r"raw#p \[1\]: the stream carries an error after 1 batch\(es\).*"
                                             r"INTERNAL \(code 500\): Internal error encountered\. \[internalError=INTERNAL_ERROR\]"):
        google_ads.page_table(broken, "raw#p")


def test_a_missing_summary_row_fails_when_the_query_asked_for_one(api, mock: MarketingMock) -> None:
    with pytest.raises(SourceApiError, match="no summaryRow although the query asked for SUMMARY_ROW_WITH_RESULTS"):
        google_ads.page_table(page(mock, "no_summary"), "raw#p")
    assert google_ads.page_table(page(mock, None), "raw#p").num_rows == 3


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["error", "no_summary"])
def test_a_broken_stream_publishes_nothing(clean_marketing, marketing_resources, instance, pg, mock, s3, fault) -> None:
    mock.google_stream_fault = fault
    result = dg.materialize(ASSETS, selection=[GOOGLE_ADS_KEY], resources=marketing_resources, instance=instance,
                            raise_on_error=False, tags={RANGE_START_TAG: "2024-07-01", RANGE_END_TAG: "2024-07-01"})

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "nothing is published" in failure.step_failure_data.error.message
    assert pg.execute("SELECT count(*) FROM marketing.google_ads_ad_daily").fetchone()[0] == 0
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=f"marketing/google_ads/date=2024-07-01/{result.run_id}-")
    assert listing.get("KeyCount", 0) >= 1  # the broken stream is kept for inspection
