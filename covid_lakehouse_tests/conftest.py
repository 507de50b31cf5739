"""Session fixtures: one real embedded PostgreSQL and one real S3 server (SeaweedFS) for the whole
test session, in a temporary folder, stopped at the end. No mocks of our own components."""

from __future__ import annotations

import functools
import signal
import uuid
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from covid_lakehouse.lib.embedded import EmbeddedStack
from covid_lakehouse.lib.http.hosts import ALLOWED_HOSTS, LOCAL_STAND_INS
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.migrate import migrate
from covid_lakehouse.lib.postgres import PostgresResource, close_pools
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse.lib.settings import ServiceSettings, exported
from covid_lakehouse_dev.warehouse import reset_domain as reset_warehouse_domain


@pytest.fixture(autouse=True)
def _sigint_handler_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test leaves SIGINT's handler as it found it: one left behind (e.g. Dagster's that only records
    the signal) changes what an interrupt does in every later test. The test that leaks one fails, named."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after != before:
        signal.signal(signal.SIGINT, before)  # the later tests run as they would alone
        pytest.fail(f"{request.node.nodeid} left SIGINT's handler {after!r} (it found {before!r})")


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(tmp_path_factory.mktemp("stack"))
    settings = stack.start()
    migrate(settings.warehouse_dsn)  # as every deployment does at start-up
    try:
        yield stack
    finally:
        close_pools()
        stack.stop()


@pytest.fixture(scope="session")
def services(embedded_stack: EmbeddedStack) -> Iterator[ServiceSettings]:
    """The embedded services' settings, exported to the environment as a deployment would; source URLs
    may name the loopback stand-ins (MockApi), as in the demo."""
    settings = embedded_stack.state.settings()
    with exported({**settings.as_env(), ALLOWED_HOSTS.name: LOCAL_STAND_INS}):
        yield settings


@pytest.fixture(scope="session")
def warehouse(services: ServiceSettings) -> PostgresResource:
    return PostgresResource(dsn=services.warehouse_dsn)


@pytest.fixture(scope="session")
def s3(services: ServiceSettings) -> LakeS3Resource:
    return LakeS3Resource(endpoint_url=services.s3_endpoint_url, aws_access_key_id=services.aws_access_key_id,
                          aws_secret_access_key=services.aws_secret_access_key, region_name="us-east-1")


@pytest.fixture(scope="session")
def lakehouse(services: ServiceSettings) -> LakehouseResource:
    return LakehouseResource(catalog_dsn=services.lakehouse_catalog_dsn, warehouse=services.lakehouse_warehouse,
                             s3_endpoint_url=services.s3_endpoint_url, aws_access_key_id=services.aws_access_key_id,
                             aws_secret_access_key=services.aws_secret_access_key)


@pytest.fixture
def resources(services: ServiceSettings) -> dict:
    """The product's own resources, configured from the environment exactly as in production."""
    return platform_resources()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def postgres_instance(services: ServiceSettings) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance stored in the embedded PostgreSQL, as on every deployment, emptied first. For
    tests whose runs execute at the same time in threads: the in-memory instance's SQLite fails one
    writer with "database table is locked: runs"."""
    storage = {"postgres": {"postgres_url": services.dagster_storage_url}}
    # No compute-log capture: it redirects the process's stdout through a `tail` child per step, and two
    # runs doing that at once in one process hung (as the in-memory instance, which captures nothing).
    no_capture = {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
    with dg.instance_for_test(overrides={"storage": storage, "compute_logs": no_capture}) as inst:
        inst.wipe()
        yield inst


@pytest.fixture
def pg(services: ServiceSettings) -> Iterator[psycopg.Connection]:
    """A plain autocommit connection to the warehouse for assertions."""
    with psycopg.connect(services.warehouse_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def unique_schema(pg: psycopg.Connection) -> Iterator[str]:
    """A fresh schema name per test so tests never see each other's tables."""
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    pg.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def reset_domain(pg: psycopg.Connection):
    """reset_domain(scope, *schemas): drop a domain's schemas and forget its applied migrations, so the
    next run re-creates its tables from the migration files, as on a new database."""
    return functools.partial(reset_warehouse_domain, pg)
