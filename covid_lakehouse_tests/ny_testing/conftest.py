"""Fixtures for the ny_testing domain: ``ny`` is the whole pipeline (support.NyPipeline) on the real
services, each test with its own raw prefix on emptied domain schemas."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import psycopg
import pytest

from covid_lakehouse.defs.ny_testing.resources import NyTestingSettings
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse_dev.apis.harness import MockApi
from covid_lakehouse_dev.apis.ny_testing import ROWS_PATH
from covid_lakehouse_tests.ny_testing.support import SNAPSHOT, NyPipeline, empty_ny_testing_schemas


@pytest.fixture(scope="session")
def snapshot_body() -> bytes:
    """The bundled rows.json snapshot, decompressed (67,671 rows, 13 MB)."""
    return gzip.decompress(SNAPSHOT.read_bytes())


@pytest.fixture
def ny_settings(unique_schema: str, pg: psycopg.Connection) -> Iterator[dict]:
    """NyTestingSettings fields giving each test its own raw prefix, on emptied domain schemas."""
    empty_ny_testing_schemas(pg)
    yield {"raw_prefix": f"tests/{unique_schema}/xdss-u53e", "max_workers": 3}
    empty_ny_testing_schemas(pg)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def http_settings() -> dict:
    """HttpResource fields; a test overrides them with pytest.mark.parametrize or by requesting its own."""
    return {"max_attempts": 3, "backoff_base_s": 0.5, "max_total_wait_s": 60}


@pytest.fixture
def ny(services, resources, instance, pg, ny_settings, fake_clock, http_settings) -> Iterator[NyPipeline]:
    class FakeClockHttp(HttpResource):
        """The platform client on a FakeClock: backoff and Retry-After waits are recorded, not slept."""

        def client(self, **kwargs):
            return super().client(clock=fake_clock, **kwargs)

    with MockApi() as api:
        url = f"{api.url}{ROWS_PATH}?accessType=DOWNLOAD"
        settings = NyTestingSettings(source_url=url, **ny_settings)
        yield NyPipeline(api, settings, resources, FakeClockHttp(**http_settings), instance, pg, fake_clock)
