"""Facebook insights connector against its mock: paging, throttling codes, transient errors, auth and
permission failures, schema changes, and the seed's flattening example."""

import copy
import json
from datetime import date
from decimal import Decimal

import pytest

from covid_lakehouse.defs.marketing import facebook
from covid_lakehouse.defs.marketing.common import SourceSchemaError
from covid_lakehouse.defs.marketing.facebook import (
    FacebookAdsResource,
    FacebookInsights,
    flatten_insights,
    page_table,
)
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import AuthError, RateLimitedError
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse
from covid_lakehouse_dev.apis.marketing import (
    DATA,
    FACEBOOK_PATH,
    change_schema,
    facebook_rate_limit_fault,
)

ACCOUNT = "798085168510957"
DAY = date(2024, 7, 1)
INSIGHTS = f"{FACEBOOK_PATH}/*"


def connector(clock: FakeClock | None = None) -> FacebookInsights:
    return FacebookAdsResource(page_size=2).connector(clock=clock or FakeClock())


def insight_requests(api: MockApi) -> list:
    return [r for r in api.requests if r.path.endswith("/insights")]


def test_pages_follow_the_after_cursor_until_next_is_absent(api: MockApi) -> None:
    pages = list(connector().pages(ACCOUNT, DAY))

    assert [len(p.doc["data"]) for p in pages] == [2, 1]  # 3 ads, 2 per page
    assert [p.label for p in pages] == [f"act_{ACCOUNT}-p0001", f"act_{ACCOUNT}-p0002"]
    assert "next" not in pages[-1].doc["paging"]
    first, second = insight_requests(api)
    assert "after" not in first.query
    assert second.query["after"] == [pages[0].doc["paging"]["cursors"]["after"]]
    assert first.query["level"] == ["ad"] and first.query["time_increment"] == ["1"]
    assert json.loads(first.query["time_range"][0]) == {"since": "2024-07-01", "until": "2024-07-01"}
    assert first.headers["Authorization"] == "Bearer demo-facebook-token"  # a header, never in the URL
    assert {r["ad_id"] for p in pages for r in flatten_insights(p.doc).to_pylist()} == {f"2385469957{n:04d}" for n in range(3)}


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80000, 80014])
def test_throttling_codes_wait_the_minutes_facebook_asks_for(api: MockApi, code: int) -> None:
    api.fail_next(INSIGHTS, facebook_rate_limit_fault(minutes=2, code=code))
    clock = FakeClock()

    pages = list(connector(clock).pages(ACCOUNT, DAY))

    assert clock.sleeps == [120.0]  # estimated_time_to_regain_access is in minutes
    assert len(pages) == 2 and len(insight_requests(api)) == 3


def test_a_wait_longer_than_the_budget_fails_at_once_without_sleeping(api: MockApi) -> None:
    api.fail_next(INSIGHTS, facebook_rate_limit_fault(minutes=90))  # more than max_rate_limit_wait_s (1 h)
    clock = FakeClock()

    with pytest.raises(RateLimitedError, match=r"asked to wait 5400.0s.*Facebook rate limit \(error code 80000\), HTTP 400"):
        list(connector(clock).pages(ACCOUNT, DAY))
    assert clock.sleeps == [] and len(insight_requests(api)) == 1


def test_transient_server_errors_are_retried_with_backoff(api: MockApi) -> None:
    api.fail_next(INSIGHTS, Fault.server_error(503), times=2)
    clock = FakeClock()

    pages = list(connector(clock).pages(ACCOUNT, DAY))

    assert len(pages) == 2 and len(clock.sleeps) == 2 and len(insight_requests(api)) == 4


def test_a_rejected_token_fails_at_once_naming_the_variable(api: MockApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEBOOK_ACCESS_TOKEN", "expired-token-123")
    clock = FakeClock()

    with pytest.raises(AuthError) as raised:
        list(connector(clock).pages(ACCOUNT, DAY))

    message = str(raised.value)
    assert "error code 190" in message and "FACEBOOK_ACCESS_TOKEN" in message
    assert "expired-token-123" not in message
    assert clock.sleeps == [] and len(insight_requests(api)) == 1


def test_a_missing_permission_fails_at_once(api: MockApi) -> None:
    api.fail_next(INSIGHTS, Fault.custom(MockResponse.json_body(
        {"error": {"message": "(#200) Requires ads_read permission", "type": "OAuthException", "code": 200}}, 403)))

    with pytest.raises(AuthError, match=r"permission missing \(error code 200"):
        list(connector().pages(ACCOUNT, DAY))
    assert len(insight_requests(api)) == 1


def test_account_totals_come_from_account_level_insights(api: MockApi, mock) -> None:
    totals = connector().daily_totals(ACCOUNT, DAY, date(2024, 7, 2))

    rows = mock.facebook_rows(ACCOUNT, DAY)
    assert totals[DAY].impressions == sum(int(r["impressions"]) for r in rows)
    assert Decimal(totals[DAY].spend) == sum(Decimal(r["spend"]) for r in rows)
    assert set(totals) == {DAY, date(2024, 7, 2)}
    assert insight_requests(api)[0].query["level"] == ["account"]


def test_numbers_instead_of_strings_are_accepted_and_typed_the_same_way(api: MockApi) -> None:
    page = next(connector().pages(ACCOUNT, DAY))
    as_numbers = copy.deepcopy(page.doc)
    for row in as_numbers["data"]:
        row["impressions"], row["clicks"] = int(row["impressions"]), int(row["clicks"])

    assert flatten_insights(as_numbers, day=DAY).equals(flatten_insights(page.doc, day=DAY))


def test_a_row_for_another_day_is_refused(api: MockApi) -> None:
    page = next(connector().pages(ACCOUNT, DAY))

    with pytest.raises(SourceSchemaError, match=r"data\[0\]: date_start 2024-07-01 / date_stop 2024-07-01: expected one row per day for 2024-07-02"):
        flatten_insights(page.doc, day=date(2024, 7, 2))


def test_a_changed_schema_is_reported_with_page_record_and_field(api: MockApi) -> None:
    change_schema(api, "facebook")  # spend becomes {"amount", "currency"}
    page = next(connector().pages(ACCOUNT, DAY))

    with pytest.raises(SourceSchemaError) as raised:
        page_table(page, "s3://raw/marketing/facebook/date=2024-07-01/run-act-p0001.json")
    assert raised.value.where == "s3://raw/marketing/facebook/date=2024-07-01/run-act-p0001.json data[0]"
    assert raised.value.problem.startswith("spend is {'amount': ")
    assert "expected a decimal string" in raised.value.problem


def test_the_real_fixture_record_flattens_to_typed_columns() -> None:
    doc = json.loads((DATA / "facebook_insights_level_ad_airbyte_fixture.json").read_text())

    [row] = flatten_insights(doc).to_pylist()

    assert (row["account_id"], row["ad_id"], row["date"]) == ("798085168510957", "23854695759200548", date(2023, 6, 1))
    assert (row["impressions"], row["clicks"], row["spend"], row["account_currency"]) == (185, 9, "14.35", "USD")
    assert [a["action_type"] for a in json.loads(row["actions"])] == ["page_engagement", "post_engagement"]


def test_the_vectorised_parse_gives_what_the_row_by_row_reference_gives() -> None:
    base = json.loads((DATA / "facebook_insights_level_ad_airbyte_fixture.json").read_text())["data"][0]
    rows = [{**base, "ad_id": "1", "ad_name": "Pâtisserie été 🍰"},  # non-ASCII names and an emoji
            {**base, "ad_id": "2", "actions": [{"action_type": "link_click", "value": "7", "note": "«ü»"}]},
            {k: v for k, v in {**base, "ad_id": "3", "adset_name": None}.items() if k != "actions"}]

    fast = facebook.parse._columns(rows, None)  # noqa: SLF001 - the fast path must agree with the reference
    reference = flatten_insights({"data": rows + [{**base, "ad_id": 4}]}).slice(0, 3)  # ad_id 4: a number -> row by row

    assert fast.drop_columns("actions").to_pylist() == reference.drop_columns("actions").to_pylist()
    assert [json.loads(a) for a in fast["actions"].to_pylist()] == [json.loads(a) for a in reference["actions"].to_pylist()]
    assert fast["actions"].to_pylist()[2] == "[]" and fast["ad_name"].to_pylist()[0] == "Pâtisserie été 🍰"


# The seed (Assessment 1, section 5) flattens {"ads": [{"id", "impressions", "clicks", "spend", "date"}]}
# into a DataFrame ad_id, impressions, clicks, spend, date.
SEED_JSON = """
{
    "ads": [
        {"id": "ad1", "impressions": 1000, "clicks": 50, "spend": 10.0, "date": "2023-01-01"},
        {"id": "ad2", "impressions": 2000, "clicks": 70, "spend": 20.0, "date": "2023-01-02"}
    ]
}
"""
SEED_EXPECTED = [("ad1", 1000, 50, Decimal("10.0"), date(2023, 1, 1)), ("ad2", 2000, 70, Decimal("20.0"), date(2023, 1, 2))]


def test_seed_example_gives_the_seed_table_from_the_shape_the_api_really_sends() -> None:
    # The same two ads as the Graph API sends them: a `data` list, ad_id, date_start/date_stop and
    # every metric a JSON string, plus the account fields the model needs.
    api_shape = {"data": [
        {"account_id": "1", "account_currency": "USD", "campaign_id": "c1", "ad_id": ad["id"],
         "date_start": ad["date"], "date_stop": ad["date"], "impressions": str(ad["impressions"]),
         "clicks": str(ad["clicks"]), "spend": str(ad["spend"])}
        for ad in json.loads(SEED_JSON)["ads"]]}

    rows = flatten_insights(api_shape).to_pylist()

    assert [(r["ad_id"], r["impressions"], r["clicks"], Decimal(r["spend"]), r["date"]) for r in rows] == SEED_EXPECTED
    assert all(r["actions"] == "[]" for r in rows)  # Facebook omits `actions` when there are none


def test_seed_sample_shape_is_refused_precisely() -> None:
    with pytest.raises(SourceSchemaError, match=r"expected an object with a 'data' list, got \['ads'\]"):
        flatten_insights(json.loads(SEED_JSON))


def test_an_insights_body_that_is_not_json_is_refused_and_json_leniency_is_kept() -> None:
    with pytest.raises(SourceSchemaError, match=r"in act_1-p0002 of 2024-07-01: body is not JSON .* starts b'<html>"):
        facebook.load_page("act_1-p0002 of 2024-07-01", b"<html>502 Bad Gateway</html>")
    assert facebook.load_page("p", b'{"data": [], "x": NaN}')["data"] == []  # orjson refuses NaN; json accepts it
