"""Marketing fixtures: the domain's mock APIs on a real loopback server (env pointed at them as
register() does), a clean ``marketing`` schema, the demo application database (as `make demo`
prepares it), and the product's resources with small pages."""

from collections.abc import Iterator

import psycopg
import pytest

from covid_lakehouse.defs.marketing.clevertap import CleverTapResource
from covid_lakehouse.defs.marketing.common import RAW_BUCKET, RAW_PREFIX
from covid_lakehouse.defs.marketing.facebook import FacebookAdsResource
from covid_lakehouse.defs.marketing.google_ads import GoogleAdsResource
from covid_lakehouse.defs.marketing.rds import RdsSourceResource
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.marketing import MarketingMock
from covid_lakehouse_dev.sources import marketing_rds


@pytest.fixture
def mock() -> MarketingMock:
    """Two accounts/customers with a few ads, pages of 2 rows so that every pull pages."""
    return MarketingMock(facebook_ads_per_account=3, google_ads_per_customer=3, google_batch_rows=2,
                         clevertap_events_per_day={"App Launched": 4, "UTM Visited": 2})


@pytest.fixture
def api(mock: MarketingMock, monkeypatch: pytest.MonkeyPatch) -> Iterator[MockApi]:
    with MockApi() as server:
        for name, value in mock.install(server).items():
            monkeypatch.setenv(name, value.replace("{base}", server.url))
        monkeypatch.delenv("MARKETING_RDS_DSN", raising=False)
        monkeypatch.delenv("MARKETING_RDS_SCHEMA", raising=False)
        yield server


@pytest.fixture
def rds_demo_source(clean_marketing, api: MockApi, services, monkeypatch: pytest.MonkeyPatch) -> str:
    """The generated application database, pointed at through the real settings; its schema."""
    marketing_rds.ensure_demo_source(services.warehouse_dsn)
    for name, value in marketing_rds.demo_env(services.warehouse_dsn).items():
        monkeypatch.setenv(name, value)
    return marketing_rds.DEMO_SCHEMA


@pytest.fixture
def clean_marketing(pg: psycopg.Connection, reset_domain, s3) -> Iterator[None]:
    """The domain's schemas and its raw pages (s3://raw/marketing/) emptied before and after: tests
    assert on the raw objects of a day, which another test's run may have written too."""
    def reset() -> None:
        reset_domain("marketing", "marketing", "marketing_staging", "marketing_rds_source")
        client = s3.get_client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=RAW_BUCKET, Prefix=f"{RAW_PREFIX}/"):
            if keys := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                client.delete_objects(Bucket=RAW_BUCKET, Delete={"Objects": keys, "Quiet": True})

    reset()
    yield
    reset()


@pytest.fixture
def marketing_resources(resources: dict, api: MockApi) -> dict:
    return {
        **resources,
        "marketing_facebook": FacebookAdsResource(page_size=2),
        "marketing_google_ads": GoogleAdsResource(),
        "marketing_clevertap": CleverTapResource(batch_size=2),
        "marketing_rds": RdsSourceResource(),
    }
