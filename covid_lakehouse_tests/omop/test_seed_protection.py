"""`covid-lakehouse seed omop` drops and recreates a tenant's source tables, its system of record: only
for a tenant marked `demo: true` in the tenants file, or with --drop-existing-source said explicitly."""

from __future__ import annotations

import dataclasses

import pytest

from covid_lakehouse import cli
from covid_lakehouse.defs.omop.tenants import TenantConfigError, TenantsResource, parse_tenants
from covid_lakehouse_dev.sources.omop import TENANTS_FILE
from covid_lakehouse_tests.omop.support import write_tenants


def _providers(pg, schema: str) -> int:
    return pg.execute(f'SELECT count(*) FROM "{schema}".provider').fetchone()[0]


def test_seeding_a_partner_tenant_is_refused_and_its_source_kept(make_tenants, pg, monkeypatch, capsys):
    env = make_tenants(providers=60)  # a partner's source with its own rows
    monkeypatch.setenv("OMOP_TENANTS_FILE", str(env.path))

    assert cli.main(["seed", "omop", "--tenant", env.tenant.name, "--providers", "20"]) == 2

    err = capsys.readouterr().err
    assert f"tenant {env.tenant.name!r} is not marked `demo: true`" in err and "--drop-existing-source" in err
    assert f"{env.tenant.source_schema}.provider" in err
    assert _providers(pg, env.tenant.source_schema) == 60  # nothing dropped

    assert cli.main(["seed", "omop", "--tenant", env.tenant.name, "--providers", "20", "--drop-existing-source"]) == 0
    assert _providers(pg, env.tenant.source_schema) == 20


def test_a_demo_tenant_is_seeded_without_the_flag(make_tenants, pg, tmp_path, monkeypatch):
    env = make_tenants(providers=60)
    demo = dataclasses.replace(env.tenant, demo=True)
    write_tenants(tmp_path / "demo.yaml", [demo])
    monkeypatch.setenv("OMOP_TENANTS_FILE", str(tmp_path / "demo.yaml"))

    assert cli.main(["seed", "omop", "--tenant", demo.name, "--providers", "25"]) == 0
    assert _providers(pg, demo.source_schema) == 25


def test_the_bundled_demo_tenant_is_marked_and_demo_must_be_a_boolean():
    assert TenantsResource(tenants_file=str(TENANTS_FILE)).get("demo").demo is True
    with pytest.raises(TenantConfigError, match="'demo' must be true or false"):
        parse_tenants("tenants:\n  - {name: acme, source_dsn_env: X, demo: 'yes please'}\n")
