"""Google Ads searchStream connector against its mock: OAuth, headers, batches, quota errors,
transient errors, auth and permission failures, schema changes."""

from datetime import date

import pytest

from covid_lakehouse.defs.marketing.common import SourceSchemaError
from covid_lakehouse.defs.marketing.google_ads import (
    GoogleAdsReports,
    GoogleAdsResource,
    flatten_stream,
    summary_totals,
)
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import AuthError
from covid_lakehouse_dev.apis.harness import Fault, MockApi
from covid_lakehouse_dev.apis.marketing import (
    GOOGLE_PATH,
    GOOGLE_TOKEN_PATH,
    change_schema,
    google_rate_limit_fault,
)

CUSTOMER = "1234567890"
DAY = date(2024, 7, 1)
STREAM = f"{GOOGLE_PATH}/*"


def connector(clock: FakeClock | None = None) -> GoogleAdsReports:
    return GoogleAdsResource().connector(clock=clock or FakeClock())


def stream_requests(api: MockApi) -> list:
    return [r for r in api.requests if r.path.endswith(":searchStream")]


def test_every_batch_of_the_stream_is_read_with_strings_as_integers(api: MockApi, mock) -> None:
    reports = connector()
    [page] = list(reports.pages(CUSTOMER, DAY))
    list(reports.pages(CUSTOMER, date(2024, 7, 2)))

    expected = mock.google_results(CUSTOMER, DAY)
    assert len(page.doc) == 2  # batches of 2 rows: the stream is an array of batches
    rows = flatten_stream(page.doc, day=DAY)
    assert len(rows) == len(expected) == 3
    assert [r["cost_micros"] for r in rows] == [int(e["metrics"]["costMicros"]) for e in expected]
    assert [r["clicks"] for r in rows] == [int(e["metrics"].get("clicks", 0)) for e in expected]  # omitted -> 0
    assert all(isinstance(r["impressions"], int) for r in rows)
    totals = summary_totals(page.doc, "p")
    assert (totals.impressions, totals.cost_micros) == (sum(r["impressions"] for r in rows), sum(r["cost_micros"] for r in rows))
    request = stream_requests(api)[0]
    assert request.headers["developer-token"] == "demo-developer-token"
    assert request.headers["login-customer-id"] == "9998887776"
    assert request.headers["Authorization"] == "Bearer demo-google-access-token"
    assert "segments.date BETWEEN '2024-07-01' AND '2024-07-01'" in request.json()["query"]
    assert sum(r.path == GOOGLE_TOKEN_PATH for r in api.requests) == 1  # the access token is reused


def test_resource_exhausted_waits_the_retry_delay_google_names(api: MockApi) -> None:
    api.fail_next(STREAM, google_rate_limit_fault(retry_delay_s=7), times=2)
    clock = FakeClock()

    [page] = list(connector(clock).pages(CUSTOMER, DAY))

    assert clock.sleeps == [7.0, 7.0]
    assert len(flatten_stream(page.doc)) == 3 and len(stream_requests(api)) == 3


def test_transient_errors_are_retried(api: MockApi) -> None:
    api.fail_next(STREAM, Fault.html_outage(502))
    clock = FakeClock()

    assert len(list(connector(clock).pages(CUSTOMER, DAY))) == 1
    assert len(clock.sleeps) == 1


def test_a_revoked_refresh_token_fails_at_once_naming_the_variables(api: MockApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_ADS_REFRESH_TOKEN", "revoked-refresh-token")
    clock = FakeClock()

    with pytest.raises(AuthError, match="GOOGLE_ADS_REFRESH_TOKEN") as raised:
        list(connector(clock).pages(CUSTOMER, DAY))
    assert "invalid_grant" in str(raised.value) and "revoked-refresh-token" not in str(raised.value)
    assert clock.sleeps == [] and stream_requests(api) == []


def test_an_invalid_developer_token_fails_at_once(api: MockApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_ADS_DEVELOPER_TOKEN", "not-approved-token")

    with pytest.raises(AuthError, match="HTTP 401.*GOOGLE_ADS_DEVELOPER_TOKEN"):
        list(connector().pages(CUSTOMER, DAY))
    assert len(stream_requests(api)) == 1


def test_access_without_the_manager_account_is_a_permission_error(api: MockApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_ADS_LOGIN_CUSTOMER_ID")

    with pytest.raises(AuthError, match="HTTP 403.*PERMISSION_DENIED"):
        list(connector().pages(CUSTOMER, DAY))
    assert "login-customer-id" not in stream_requests(api)[0].headers


def test_a_renamed_metric_is_reported_instead_of_read_as_zero(api: MockApi) -> None:
    change_schema(api, "google_ads")  # metrics.costMicros -> metrics.costAmountMicros
    [page] = list(connector().pages(CUSTOMER, DAY))

    with pytest.raises(SourceSchemaError, match=r"\[0\]\.results\[0\]: metrics has unexpected field\(s\) costAmountMicros"):
        flatten_stream(page.doc, where="page")
