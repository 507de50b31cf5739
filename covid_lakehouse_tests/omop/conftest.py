"""omop fixtures: tenants with their own tenants file, source schema and landing prefix, so tests never
see each other's data."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from covid_lakehouse.defs.omop.source_snapshot import MAX_CHANGED_SHARE
from covid_lakehouse.defs.omop.tenants import Tenant, TenantsResource
from covid_lakehouse_dev.seeds.omop import seed_source
from covid_lakehouse_tests.omop.support import OmopEnv, write_tenants


@pytest.fixture
def make_tenants(services, tmp_path, pg) -> Iterator[Callable[..., OmopEnv]]:
    """make_tenants(n, providers=200): n fresh tenants, each with a seeded source (providers=0: none)."""
    schemas: list[str] = []

    def make(n: int = 1, *, providers: int = 200, dirt_rate: float = 0.02) -> OmopEnv:
        tenants = []
        for _ in range(n):
            name = "t" + uuid.uuid4().hex[:10]
            tenant = Tenant(name=name, source_dsn_env="WAREHOUSE_DSN", source_schema=f"omop_source_{name}",
                            landing_prefix=f"omop/landing/{name}/")
            if providers:
                seed_source(services.warehouse_dsn, providers=providers, dirt_rate=dirt_rate,
                            schema=tenant.source_schema)
            schemas.append(tenant.source_schema)
            tenants.append(tenant)
        path = tmp_path / f"tenants-{uuid.uuid4().hex[:6]}.yaml"
        write_tenants(path, tenants)
        return OmopEnv(tenants, TenantsResource(tenants_file=str(path)), path)

    yield make
    for schema in schemas:
        pg.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def incremental_extract_on(monkeypatch) -> None:
    """The incremental provider extract on (OMOP_INCREMENTAL_EXTRACT_MAX_SHARE, off by default), with
    the share a deployment whose sources sit across a network sets."""
    monkeypatch.setenv(MAX_CHANGED_SHARE.name, "0.25")
