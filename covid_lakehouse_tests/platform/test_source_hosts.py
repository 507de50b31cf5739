"""Every domain's source URL fields (which anyone launching a run can set in run config) are held to the
source's vendor hosts, the host the operator set in the source's variable, and SOURCE_ALLOWED_HOSTS
(lib/http/hosts.py); object keys from run config to the domain's prefix (lib/s3.py). No network: the
checks run before anything is fetched."""

from __future__ import annotations

import pytest

from covid_lakehouse.defs.ads.settings import AdsSettings
from covid_lakehouse.defs.marketing.clevertap import CleverTapResource
from covid_lakehouse.defs.marketing.facebook.resource import FacebookAdsResource
from covid_lakehouse.defs.marketing.google_ads import GoogleAdsResource
from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.defs.vaccines.resources import VaccinesSettings
from covid_lakehouse.lib.http.hosts import ALLOWED_HOSTS, DisallowedUrlError, check_source_url
from covid_lakehouse.lib.s3 import KeyOutsidePrefixError, key_in_prefix

METADATA = "http://169.254.169.254/latest/meta-data/"


@pytest.fixture(autouse=True)
def no_extra_hosts(monkeypatch):
    monkeypatch.delenv(ALLOWED_HOSTS.name, raising=False)
    for name in ("NY_TESTING_SOURCE_URL", "ADS_API_URL", "FACEBOOK_GRAPH_URL", "GOOGLE_ADS_API_URL",
                 "GOOGLE_OAUTH_TOKEN_URL", "CLEVERTAP_API_URL", "VACCINES_POPULATION_URL", "VACCINES_MODERNA_URL"):
        monkeypatch.delenv(name, raising=False)


def test_vendor_hosts_pass_and_everything_else_is_refused():
    vendor = ("health.data.ny.gov", "*.api.clevertap.com")
    assert check_source_url("https://health.data.ny.gov/x.json", field="f", vendor_hosts=vendor)
    assert check_source_url("https://in1.api.clevertap.com/1/events.json", field="f", vendor_hosts=vendor)
    for url in (METADATA, "https://health.data.ny.gov:8443/x", "https://health.data.ny.gov.evil.example/x",
                "https://evilapi.clevertap.com/x", "https://health.data.ny.gov@10.0.0.1/x",
                "http://127.0.0.1:8888/x"):
        with pytest.raises(DisallowedUrlError, match="^f: host .* is not allowed for this source"):
            check_source_url(url, field="f", vendor_hosts=vendor)
    with pytest.raises(DisallowedUrlError, match=r"^f: 'file:///etc/passwd' is not an http\(s\) URL"):
        check_source_url("file:///etc/passwd", field="f", vendor_hosts=vendor)


def test_the_operators_host_and_the_extra_hosts_are_allowed_on_their_port_only(monkeypatch):
    operator = "http://127.0.0.1:8080/ny_testing/rows.json"  # the demo's mock API
    assert check_source_url("http://127.0.0.1:8080/other.json", field="f", operator_url=operator)
    with pytest.raises(DisallowedUrlError, match="host 127.0.0.1:8888 is not allowed"):
        check_source_url("http://127.0.0.1:8888/filer/raw/", field="f", operator_url=operator)
    monkeypatch.setenv(ALLOWED_HOSTS.name, "proxy.internal:3128, 127.0.0.1:*")
    assert check_source_url("http://proxy.internal:3128/x", field="f")
    assert check_source_url("http://127.0.0.1:8888/x", field="f")
    with pytest.raises(DisallowedUrlError):
        check_source_url("http://proxy.internal/x", field="f")


def test_the_error_never_shows_user_info_or_query():
    with pytest.raises(DisallowedUrlError) as err:
        check_source_url("ftp://user:s3cret@evil.example/x?token=abc", field="f")
    assert "s3cret" not in str(err.value) and "abc" not in str(err.value)


@pytest.mark.parametrize(("check", "field"), [
    (lambda: NyTestingSettings(source_url=METADATA).resolved_source_url(), "source_url (resource config) / NY_TESTING_SOURCE_URL"),
    (lambda: VaccinesSettings(population_url=METADATA).population(), "population_url (resource config)"),
    (lambda: VaccinesSettings(allocation_urls={"moderna": METADATA}).allocations(), "allocation_urls[moderna] (resource config)"),
    (lambda: AdsSettings(api_url=METADATA).resolved_api_url(), "api_url (resource config) / ADS_API_URL"),
    (lambda: FacebookAdsResource(graph_url=METADATA).connector(), "graph_url (resource config) / FACEBOOK_GRAPH_URL"),
    (lambda: GoogleAdsResource(token_url=METADATA).connector(), "token_url (resource config) / GOOGLE_OAUTH_TOKEN_URL"),
    (lambda: GoogleAdsResource(api_url=METADATA, token_url="https://oauth2.googleapis.com/token").connector(),
     "api_url (resource config) / GOOGLE_ADS_API_URL"),
    (lambda: CleverTapResource(api_url=METADATA).connector(), "api_url (resource config) / CLEVERTAP_API_URL"),
])
def test_every_domains_url_fields_are_checked(check, field):
    with pytest.raises(DisallowedUrlError) as err:
        check()
    assert str(err.value).startswith(f"{field}: host 169.254.169.254:80 is not allowed")


def test_the_default_and_the_operators_urls_still_resolve(monkeypatch):
    assert NyTestingSettings().resolved_source_url().startswith("https://health.data.ny.gov/")
    assert VaccinesSettings().population().startswith("https://covid19-lake.s3.us-east-2.amazonaws.com/")
    monkeypatch.setenv("ADS_API_URL", "http://mock-apis:8080/ads/api")  # compose's demo profile
    assert AdsSettings().resolved_api_url() == "http://mock-apis:8080/ads/api"
    assert AdsSettings(api_url="http://mock-apis:8080/ads/v2").resolved_api_url().endswith("/v2")


@pytest.mark.parametrize(("key", "problem"), [
    ("omop/landing/acme/a.csv", "is not under this domain's prefix 'ny/'"),
    ("ny/../marketing/x.json", "'..' path segment"),
    ("ny/./x.json", "'.' or '..' path segment"),
    ("/ny/x.json", "absolute"),
    ("ny\\..\\x", "backslash"),
    ("ny/x\n.json", "control character"),
    ("", "is empty"),
])
def test_keys_outside_the_prefix_are_refused(key, problem):
    with pytest.raises(KeyOutsidePrefixError, match="^config raw_key: key ") as err:
        key_in_prefix(key, "ny", field="config raw_key")
    assert problem in str(err.value)
    assert key_in_prefix("ny/sha256=ab.json", "ny/", field="f") == "ny/sha256=ab.json"
