"""Large windows are read through async insights report runs (POST act_<id>/insights, poll the run,
read its results), as production connectors do; a failed run fails naming it."""

import json
from datetime import date

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import ASSETS, FACEBOOK_KEY
from covid_lakehouse.defs.marketing.common import SourceApiError
from covid_lakehouse.defs.marketing.facebook import FacebookAdsResource, flatten_insights
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.marketing import MarketingMock

ACCOUNT, DAY = "798085168510957", date(2024, 7, 1)


def test_a_report_run_is_started_polled_and_read(api: MockApi, mock: MarketingMock) -> None:
    mock.facebook_report_polls = 2
    clock = FakeClock()

    pages = list(FacebookAdsResource(page_size=2).connector(clock=clock).pages(ACCOUNT, DAY, report_run=True))

    assert [len(p.doc["data"]) for p in pages] == [2, 1]
    assert {r["ad_id"] for p in pages for r in flatten_insights(p.doc, day=DAY).to_pylist()} == {
        r["ad_id"] for r in mock.facebook_rows(ACCOUNT, DAY)}
    post = next(r for r in api.requests if r.method == "POST")
    assert post.path.endswith(f"/act_{ACCOUNT}/insights") and post.query["level"] == ["ad"]
    assert json.loads(post.query["time_range"][0]) == {"since": "2024-07-01", "until": "2024-07-01"}
    assert "ad.effective_status" in post.query["filtering"][0]
    run_id = next(iter(mock._facebook_runs))  # noqa: SLF001
    assert sum(r.path.endswith(f"/{run_id}") for r in api.requests) == 3 and clock.sleeps == [10.0, 10.0]
    assert sum(r.path.endswith(f"/{run_id}/insights") for r in api.requests) == 2


def test_a_failed_report_run_fails_naming_it(api: MockApi, mock: MarketingMock) -> None:
    mock.facebook_report_outcome = "Job Failed"

    with pytest.raises(SourceApiError, match=r"report run of act_\d+ for 2024-07-01: report run \d+ ended with 'Job Failed'"):
        list(FacebookAdsResource().connector(clock=FakeClock()).pages(ACCOUNT, DAY, report_run=True))


def test_a_report_run_beyond_its_budget_fails(api: MockApi, mock: MarketingMock) -> None:
    mock.facebook_report_polls = 100
    clock = FakeClock()

    with pytest.raises(SourceApiError, match=r"still 'Job Running' \(50%\) after 30s"):
        list(FacebookAdsResource(report_budget_s=35).connector(clock=clock).pages(ACCOUNT, DAY, report_run=True))
    assert clock.sleeps == [10.0, 10.0, 10.0]


@pytest.mark.integration
def test_windows_from_the_configured_size_use_report_runs(clean_marketing, marketing_resources, instance, pg, api,
                                                          mock: MarketingMock) -> None:
    mock.facebook_report_polls = 0
    resources = {**marketing_resources, "marketing_facebook": FacebookAdsResource(page_size=2, report_run_min_days=2)}

    result = dg.materialize(ASSETS, selection=[FACEBOOK_KEY], resources=resources, instance=instance,
                            tags={RANGE_START_TAG: "2024-09-01", RANGE_END_TAG: "2024-09-02"})

    assert result.success
    assert sum(r.method == "POST" for r in api.requests) == 4  # one run per account and day
    assert pg.execute("SELECT count(*) FROM marketing.facebook_ad_insights_daily").fetchone()[0] == 2 * 3 * 2
    assert all(e.passed for e in result.get_asset_check_evaluations())
