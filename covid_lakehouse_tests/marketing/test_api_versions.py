"""API versions: one setting per source, the table of sunset dates (WARN only, 60 days ahead), and a
retired version failing at once (Facebook #2635, Google 404 / UNIMPLEMENTED) naming the setting."""

from datetime import date

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing import versions
from covid_lakehouse.defs.marketing.assets import ASSETS, FACEBOOK_KEY, GOOGLE_ADS_KEY
from covid_lakehouse.defs.marketing.facebook import FacebookAdsResource
from covid_lakehouse.defs.marketing.google_ads import GoogleAdsResource
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.defs.marketing.versions import UnsupportedApiVersion
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.settings import SettingError
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse
from covid_lakehouse_dev.apis.marketing import FACEBOOK_PATH, GOOGLE_PATH

ACCOUNT, CUSTOMER, DAY = "798085168510957", "1234567890", date(2024, 7, 1)


def test_defaults_are_the_newest_versions_each_vendor_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FACEBOOK_GRAPH_URL", "FACEBOOK_GRAPH_API_VERSION", "GOOGLE_ADS_API_URL", "GOOGLE_ADS_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FACEBOOK_ACCESS_TOKEN", "t")
    for name in ("GOOGLE_ADS_DEVELOPER_TOKEN", "GOOGLE_ADS_CLIENT_ID", "GOOGLE_ADS_CLIENT_SECRET", "GOOGLE_ADS_REFRESH_TOKEN"):
        monkeypatch.setenv(name, "x")

    facebook, google = FacebookAdsResource().connector(), GoogleAdsResource().connector()

    assert (facebook.version, google.version) == ("v27.0", "v26")
    assert facebook._graph == "https://graph.facebook.com/v27.0"  # noqa: SLF001 - the URL actually called
    assert google._api == "https://googleads.googleapis.com/v26"  # noqa: SLF001
    assert all(v.sunset is None or v.sunset > date(2026, 12, 6) for v in versions.KNOWN_VERSIONS["facebook"][:3])


def test_a_base_url_that_still_carries_a_version_is_refused_naming_both_settings(api: MockApi, monkeypatch) -> None:
    monkeypatch.setenv("FACEBOOK_GRAPH_URL", "https://graph.facebook.com/v21.0")

    with pytest.raises(SettingError, match=r"FACEBOOK_GRAPH_URL=.*ends in an API version.*FACEBOOK_GRAPH_API_VERSION"):
        FacebookAdsResource().connector()


@pytest.mark.parametrize(("resource", "value"), [(FacebookAdsResource, "21.0"), (GoogleAdsResource, "v21.0")])
def test_a_malformed_version_is_refused(api: MockApi, resource, value: str) -> None:
    with pytest.raises(SettingError, match="is not an API version"):
        resource(api_version=value).connector()


def test_facebook_2635_fails_at_once_naming_the_version_and_the_setting(api: MockApi, monkeypatch) -> None:
    monkeypatch.setenv("FACEBOOK_GRAPH_API_VERSION", "v21.0")  # the mock answers the real #2635 body
    clock = FakeClock()

    with pytest.raises(UnsupportedApiVersion) as raised:
        list(FacebookAdsResource().connector(clock=clock).pages(ACCOUNT, DAY))

    message = str(raised.value)
    assert "API version v21.0 is no longer served" in message and "error code 2635" in message
    assert "Set FACEBOOK_GRAPH_API_VERSION" in message and "v27.0" in message
    assert clock.sleeps == [] and len([r for r in api.requests if r.path.endswith("/insights")]) == 1
    assert raised.value.allow_retries is False


@pytest.mark.parametrize("fault", [
    None,  # the mock's sunset version: Google's HTML 404 on the versioned path
    Fault.custom(MockResponse.json_body({"error": {"code": 501, "message": "Method not found.", "status": "UNIMPLEMENTED"}}, 501)),
], ids=["rest_404", "grpc_unimplemented"])
def test_google_retired_version_fails_at_once_naming_the_setting(api: MockApi, monkeypatch, fault) -> None:
    if fault is None:
        monkeypatch.setenv("GOOGLE_ADS_API_VERSION", "v21")
    else:
        api.fail_next(f"{GOOGLE_PATH}/*", fault)
    clock = FakeClock()

    with pytest.raises(UnsupportedApiVersion, match=r"API version v2\d is no longer served.*Set GOOGLE_ADS_API_VERSION"):
        list(GoogleAdsResource().connector(clock=clock).pages(CUSTOMER, DAY))
    assert clock.sleeps == [] and len([r for r in api.requests if r.path.endswith(":searchStream")]) == 1


def test_the_sunset_table_warns_60_days_ahead_and_never_fails() -> None:
    sunset = versions.known("facebook", "v25.0").sunset  # 2027-02-23

    assert versions.sunset_warnings("facebook", "v25.0", date(2026, 12, 24)) == []  # 61 days ahead
    [warning] = versions.sunset_warnings("facebook", "v25.0", date(2026, 12, 25))  # 60 days ahead
    assert f"is announced to sunset on {sunset}" in warning and "move to v27.0" in warning
    assert "was announced" in versions.sunset_warnings("google_ads", "v21", date(2026, 12, 6))[0]
    assert versions.sunset_warnings("facebook", "v27.0", date(2026, 12, 6)) == []
    assert "not in the table" in versions.sunset_warnings("google_ads", "v99", date(2026, 12, 6))[0]


def materialize(keys, resources, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=keys, resources=resources, instance=instance, raise_on_error=False,
                          tags={RANGE_START_TAG: "2024-07-01", RANGE_END_TAG: "2024-07-01"})


@pytest.mark.integration
def test_the_version_warning_header_and_a_near_sunset_are_warn_checks_that_publish(
        clean_marketing, marketing_resources, instance, monkeypatch) -> None:
    monkeypatch.setenv("FACEBOOK_GRAPH_API_VERSION", "v22.0")  # expired: served auto-upgraded, with the header
    monkeypatch.setenv("GOOGLE_ADS_API_VERSION", "v23")  # served; no sunset announced
    result = materialize([FACEBOOK_KEY, GOOGLE_ADS_KEY], marketing_resources, instance)

    assert result.success
    evaluations = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    facebook = evaluations[(FACEBOOK_KEY, "api_version_current")]
    assert not facebook.passed and facebook.severity == dg.AssetCheckSeverity.WARN
    notices = facebook.metadata["notices"].value
    assert any(n.startswith("X-Ad-Api-Version-Warning: The call has been auto-upgraded") for n in notices)
    assert any("was announced to sunset on 2026-02-19" in n for n in notices)
    assert evaluations[(GOOGLE_ADS_KEY, "api_version_current")].passed
    assert FACEBOOK_PATH == "/facebook"  # the mock serves every version under one path: the version is in the URL
