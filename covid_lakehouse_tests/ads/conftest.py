"""Fixtures of the ads domain: its mock API, a clean ads state on the session's real PostgreSQL and S3
per test, and a lakehouse whose S3 connection can be cut mid-run (support.py has the rest)."""

from collections.abc import Iterator

import psycopg
import pytest

from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE, BUCKET, AdsSettings
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse_dev.apis.ads import register
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_tests.platform.support import TcpProxy


@pytest.fixture
def ads_clean(services, pg: psycopg.Connection, s3, lakehouse: LakehouseResource, reset_domain) -> Iterator[None]:
    """The ads domain's fixed places (schema ads, Iceberg ads.ads_archive, bucket ad-data) emptied."""
    reset_domain("ads")
    if lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        lakehouse.catalog().drop_table((ARCHIVE_NAMESPACE, ARCHIVE_TABLE))
    client = s3.get_client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
    yield


@pytest.fixture
def ads_api(monkeypatch) -> Iterator[MockApi]:
    """The mock ad API (seeded), with ADS_API_URL pointing at it as `make demo` does."""
    with MockApi() as api:
        env = register(api, seed=3)
        for name, value in env.items():
            monkeypatch.setenv(name, value.replace("{base}", api.url))
        yield api


@pytest.fixture
def ads_resources(resources: dict) -> dict:
    """Platform resources plus the domain's, with short retry waits."""
    return {**resources, "http": HttpResource(max_attempts=3, backoff_base_s=0.01),
            "ads_settings": AdsSettings(payload_backoff_s=0.01, archive_chunk_rows=40)}


@pytest.fixture
def s3_proxy(services) -> Iterator[TcpProxy]:
    port = int(services.s3_endpoint_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    yield proxy
    proxy.stop()


@pytest.fixture
def proxied_lakehouse(services, s3_proxy: TcpProxy) -> LakehouseResource:
    """The lakehouse reaching S3 through the proxy (its own catalog instance: the endpoint differs)."""
    return LakehouseResource(catalog_dsn=services.lakehouse_catalog_dsn, warehouse=services.lakehouse_warehouse,
                             s3_endpoint_url=f"http://127.0.0.1:{s3_proxy.port}",
                             aws_access_key_id=services.aws_access_key_id,
                             aws_secret_access_key=services.aws_secret_access_key)
