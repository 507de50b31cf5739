"""Facebook as it behaves: deleted and archived ads are asked for explicitly, is_transient is honoured,
"reduce the amount of data" asks for less (never the same request again), throttling without usage
headers waits at least a floor."""

import json
from datetime import date

import pytest

from covid_lakehouse.defs.marketing.facebook import AD_STATUSES, FacebookAdsResource, flatten_insights
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import ClientError
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse
from covid_lakehouse_dev.apis.marketing import FACEBOOK_PATH, MarketingMock

ACCOUNT, DAY = "798085168510957", date(2024, 7, 1)
INSIGHTS = f"{FACEBOOK_PATH}/*"


def connector(clock: FakeClock | None = None, **kwargs):
    return FacebookAdsResource(**{"page_size": 2, **kwargs}).connector(clock=clock or FakeClock())


def insight_requests(api: MockApi) -> list:
    return [r for r in api.requests if r.path.endswith("/insights")]


def error_body(code: int, status: int, **extra) -> Fault:
    return Fault.custom(MockResponse.json_body({"error": {"message": f"error {code}", "type": "OAuthException",
                                                          "code": code, "fbtrace_id": "t", **extra}}, status))


def test_deleted_and_archived_ads_are_asked_for_so_spend_matches_the_account(api: MockApi, mock: MarketingMock) -> None:
    mock.facebook_deleted_ads = 2  # of 3 ads: one deleted, one archived
    api_ = connector()

    rows = [r for p in api_.pages(ACCOUNT, DAY) for r in flatten_insights(p.doc).to_pylist()]
    totals = api_.daily_totals(ACCOUNT, DAY, DAY)[DAY]

    assert len(rows) == 3 and sum(r["impressions"] for r in rows) == totals.impressions
    [filtering] = json.loads(insight_requests(api)[0].query["filtering"][0])
    assert filtering["field"] == "ad.effective_status" and filtering["operator"] == "IN"
    assert {"DELETED", "ARCHIVED", "ACTIVE", "PAUSED"} <= set(filtering["value"]) == set(AD_STATUSES)


def test_an_error_marked_not_transient_is_never_retried(api: MockApi) -> None:
    api.fail_next(INSIGHTS, error_body(2, 500, is_transient=False))  # code 2 is retried unless Facebook says no
    clock = FakeClock()

    with pytest.raises(ClientError, match="is_transient false"):
        list(connector(clock).pages(ACCOUNT, DAY))
    assert clock.sleeps == [] and len(insight_requests(api)) == 1


def test_an_unknown_code_marked_transient_is_retried(api: MockApi) -> None:
    api.fail_next(INSIGHTS, error_body(99, 400, is_transient=True))
    clock = FakeClock()

    assert len(list(connector(clock).pages(ACCOUNT, DAY))) == 2
    assert len(clock.sleeps) == 1


def test_reduce_the_amount_of_data_halves_the_page_instead_of_repeating_it(api: MockApi, mock: MarketingMock) -> None:
    mock.facebook_max_rows_per_call = 30
    clock = FakeClock()

    pages = list(connector(clock, page_size=100).pages(ACCOUNT, DAY))

    assert [r.query["limit"] for r in insight_requests(api)] == [["100"], ["50"], ["25"]]
    assert clock.sleeps == [] and sum(len(p.doc["data"]) for p in pages) == 3


def test_reduce_the_amount_of_data_splits_the_date_range_of_the_totals(api: MockApi, mock: MarketingMock) -> None:
    mock.facebook_max_days_per_call = 1
    last = date(2024, 7, 4)

    totals = connector().daily_totals(ACCOUNT, DAY, last)

    assert sorted(totals) == [date(2024, 7, d) for d in range(1, 5)]
    ranges = [json.loads(r.query["time_range"][0]) for r in insight_requests(api)]
    assert ranges[:3] == [{"since": "2024-07-01", "until": "2024-07-04"}, {"since": "2024-07-01", "until": "2024-07-02"},
                          {"since": "2024-07-01", "until": "2024-07-01"}]
    assert len(ranges) == 7  # 1-4, 1-2, 1, 2, 3-4, 3, 4


@pytest.mark.parametrize(("code", "floor", "expected"), [(17, None, 60.0), (80004, None, 60.0), (613, 300.0, 300.0)])
def test_throttling_without_usage_headers_waits_at_least_the_floor(api: MockApi, code, floor, expected) -> None:
    api.fail_next(INSIGHTS, error_body(code, 400))
    clock = FakeClock()
    kwargs = {} if floor is None else {"min_throttle_wait_s": floor}

    assert len(list(connector(clock, **kwargs).pages(ACCOUNT, DAY))) == 2
    assert clock.sleeps == [expected]
