"""The ad API contract: the mock's shape, strict parsing, and retries then clear errors for malformed
bodies, 500s and a renamed field (real HTTP against the mock; a fake clock, so no real waiting)."""

import json
import uuid

import pytest

from covid_lakehouse.defs.ads.api import AdsApiError, AdsPayloadError, fetch_page, parse_ads, safe_url
from covid_lakehouse.defs.ads.settings import AdsSettings
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import HttpClient, TransientHttpError
from covid_lakehouse_dev.apis.ads import PATH, AdsMock, register
from covid_lakehouse_dev.apis.harness import Fault, MockApi


@pytest.fixture
def api():
    with MockApi() as server:
        register(server, seed=7)
        yield server


def _client(clock: FakeClock) -> HttpClient:
    return HttpClient(clock=clock, max_attempts=3, backoff_base=0.5)


def test_mock_serves_100_ads_of_the_documented_shape_reproducibly():
    ads = AdsMock(seed=1, now=lambda: 1_700_000_000.0).ads()
    assert len(ads) == 100
    assert ads == AdsMock(seed=1, now=lambda: 1_700_000_000.0).ads()
    for ad in ads:
        assert uuid.UUID(ad["ad_id"]).version == 4
        assert ad["ad_group"] in {"marketing", "recruiting", "brand", "investment"}
        assert ad["ad_campaign"] == "__unknown" or 500 <= ad["ad_campaign"] <= 999
        assert 1_700_000_000 - 100_000 <= ad["shown_at"] <= 1_700_000_000
        assert set(ad.get("ad_scheme", {"origin": "manual", "approved": True})) == {"origin", "approved"}
    assert 0 < sum(ad["ad_campaign"] == "__unknown" for ad in ads) < 100
    assert 0 < sum("ad_scheme" in ad for ad in ads) < 50


def test_register_points_the_domain_at_the_mock():
    env = register(MockApi(), seed=1)
    assert env["ADS_API_URL"] == "{base}" + PATH
    assert float(env["ADS_ARCHIVE_RETENTION_HOURS"]) > 0


def test_parse_keeps_unknown_campaign_raw_and_flattens_the_scheme():
    body = json.dumps([
        {"ad_id": "a", "ad_group": "brand", "ad_campaign": "__unknown", "shown_at": 1.5},
        {"ad_id": "b", "ad_group": "brand", "ad_campaign": 512, "shown_at": 1_700_000_000.123456,
         "ad_scheme": {"origin": "manual", "approved": False}, "new_field": "ignored"},
    ]).encode()
    rows = parse_ads(body).to_pylist()
    assert rows[0]["ad_campaign"] is None and rows[0]["ad_campaign_raw"] == "__unknown"
    assert rows[0]["ad_scheme_origin"] is None and rows[0]["ad_scheme_approved"] is None
    assert rows[1]["ad_campaign"] == 512 and rows[1]["ad_campaign_raw"] == "512"
    assert (rows[1]["ad_scheme_origin"], rows[1]["ad_scheme_approved"]) == ("manual", False)
    assert rows[1]["shown_at"].timestamp() == pytest.approx(1_700_000_000.123456, abs=1e-6)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"data": [1, 2', "not valid JSON"),
    (b'{"ads": []}', "expected a JSON list of ads, got a JSON dict"),
    (json.dumps([{"ad_id": "a", "ad_group": "brand", "ad_campaign": True, "shown_at": 1}]).encode(),
     "ad_campaign is a boolean"),
    (json.dumps([{"ad_id": "a", "ad_group": "brand", "ad_campaign": 1, "shown_at": "yesterday"}]).encode(),
     "shown_at is a string, not epoch seconds"),
    (json.dumps([{"ad_id": "a", "ad_group": "brand", "ad_campaign": 1, "shown_at": 1,
                  "ad_scheme": {"origin": "manual", "approved": "yes"}}]).encode(),
     "ad_scheme.approved is not a boolean"),
])
def test_parse_rejects_bodies_that_break_the_contract(body, message):
    with pytest.raises(AdsPayloadError, match=message):
        parse_ads(body)


def test_malformed_body_is_fetched_again_then_loads(api: MockApi):
    api.fail_next(PATH, Fault.malformed(), times=2)
    clock = FakeClock()
    page = fetch_page(_client(clock), api.url + PATH, clock=clock, attempts=3, backoff_s=2.0)
    assert page.ads.num_rows == 100
    assert json.loads(page.body) and len(api.requests) == 3
    assert clock.sleeps == [2.0, 4.0]


def test_malformed_body_every_time_fails_clearly(api: MockApi):
    api.fail_next(PATH, Fault.malformed(), times=3)
    clock = FakeClock()
    with pytest.raises(AdsApiError, match="unusable body 3 time.*not valid JSON") as err:
        fetch_page(_client(clock), api.url + PATH, clock=clock, attempts=3)
    assert "nothing was backed up or loaded" in err.value.description
    assert len(api.requests) == 3


def test_renamed_field_gives_retries_then_names_the_change(api: MockApi):
    api.transform(PATH, lambda body: body.replace(b'"shown_at"', b'"shown_time"'))
    clock = FakeClock()
    with pytest.raises(AdsApiError) as err:
        fetch_page(_client(clock), api.url + PATH, clock=clock, attempts=2)
    assert "field 'shown_at' missing in 100 of 100 ads" in err.value.description
    assert "shown_time" in err.value.description
    assert len(api.requests) == 2


def test_server_errors_are_retried_by_the_http_client(api: MockApi):
    api.fail_next(PATH, Fault.server_error(), times=2)
    clock = FakeClock()
    assert fetch_page(_client(clock), api.url + PATH, clock=clock).ads.num_rows == 100
    assert len(api.requests) == 3


def test_persistent_server_errors_end_in_a_clear_error(api: MockApi):
    api.fail_next(PATH, Fault.server_error(503), times=3)
    clock = FakeClock()
    with pytest.raises(TransientHttpError, match=r"gave up after 3 attempt.*HTTP 503"):
        fetch_page(_client(clock), api.url + PATH, clock=clock)


def test_missing_api_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ADS_API_URL", raising=False)
    with pytest.raises(Exception, match="ADS_API_URL.*no public default"):
        AdsSettings().resolved_api_url()


def test_urls_in_messages_hide_credentials():
    assert safe_url("https://user:pw@ads.example.com:8443/api/ads?key=s3cret") == "https://ads.example.com:8443/api/ads"
