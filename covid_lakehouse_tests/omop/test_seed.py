"""The source generator on the real PostgreSQL: the seed's schema, determinism, dirt rate, planted rows."""

import psycopg
import pytest

from covid_lakehouse.defs.omop.rules import npi_is_valid
from covid_lakehouse.lib.postgres import UnsafeIdentifierError
from covid_lakehouse_dev.seeds.omop import CARE_SITES, PLANTED, seed_source, seed_tenant

pytestmark = pytest.mark.integration


def _rows(pg, schema: str) -> list[tuple]:
    return pg.execute(f'SELECT * FROM "{schema}".provider ORDER BY provider_id').fetchall()


def test_seed_creates_the_seed_schema_with_constraints_and_planted_providers(services, pg, unique_schema):
    report = seed_source(services.warehouse_dsn, providers=300, schema=unique_schema)
    assert (report.providers, report.care_sites, report.planted) == (300, 8, len(PLANTED))
    sites = pg.execute(f'SELECT care_site_name, care_site_source_value FROM "{unique_schema}".care_site '
                       "ORDER BY care_site_id").fetchall()
    assert sites == CARE_SITES
    rows = _rows(pg, unique_schema)
    assert [r[1:3] for r in rows[:len(PLANTED)]] == [p[:2] for p in PLANTED]
    assert len({r[2] for r in rows}) == 300 and all(len(r[2]) == 10 and r[2].isdigit() for r in rows)
    with pytest.raises(psycopg.errors.UniqueViolation):  # npi is UNIQUE, as in the seed's schema
        pg.execute(f'INSERT INTO "{unique_schema}".provider (provider_name, npi) VALUES (%s, %s)',
                   ("X", rows[10][2]))


def test_seed_is_deterministic_and_its_dirt_rate_is_configurable(services, pg, unique_schema):
    seed_source(services.warehouse_dsn, providers=400, seed=7, schema=unique_schema)
    first = _rows(pg, unique_schema)
    seed_source(services.warehouse_dsn, providers=400, seed=7, schema=unique_schema)
    assert _rows(pg, unique_schema) == first
    generated = first[len(PLANTED):]
    assert sum(not npi_is_valid(r[2]) for r in generated) < 40  # about 2% of 394

    seed_source(services.warehouse_dsn, providers=400, dirt_rate=0.0, schema=unique_schema)
    clean = _rows(pg, unique_schema)[len(PLANTED):]
    assert all(npi_is_valid(r[2]) for r in clean)
    assert {r[4] for r in clean} <= {name for name, _ in CARE_SITES}

    seed_source(services.warehouse_dsn, providers=400, dirt_rate=0.5, schema=unique_schema)
    dirty = _rows(pg, unique_schema)[len(PLANTED):]
    assert 140 < sum(not npi_is_valid(r[2]) for r in dirty) < 260
    assert any(r[1] == "NULL" for r in dirty) and any(r[4] == "Metro Med" for r in dirty)


def test_seed_rejects_bad_arguments(services):
    with pytest.raises(UnsafeIdentifierError):
        seed_source(services.warehouse_dsn, providers=100, schema="x; drop table y")
    with pytest.raises(ValueError, match="dirt_rate"):
        seed_source(services.warehouse_dsn, providers=100, dirt_rate=2)


def test_seed_tenant_uses_the_tenants_file(make_tenants, pg):
    env = make_tenants(providers=0)
    report = seed_tenant(env.tenant.name, providers=50, tenants=env.resource, drop_existing_source=True)
    assert report.schema == env.tenant.source_schema
    assert pg.execute(f'SELECT count(*) FROM "{env.tenant.source_schema}".provider').fetchone()[0] == 50


def test_cli_seed_omop_seeds_a_tenant_of_the_tenants_file(make_tenants, pg, monkeypatch, capsys):
    from covid_lakehouse import cli

    env = make_tenants(providers=0)
    monkeypatch.setenv("OMOP_TENANTS_FILE", str(env.path))
    assert cli.main(["seed", "omop", "--tenant", env.tenant.name, "--providers", "120", "--dirt-rate", "0",
                     "--drop-existing-source"]) == 0
    assert f"seeded tenant {env.tenant.name}: 120 providers" in capsys.readouterr().out
    npis = [r[0] for r in pg.execute(f'SELECT npi FROM "{env.tenant.source_schema}".provider').fetchall()]
    assert len(npis) == 120 and all(npi_is_valid(n) for n in npis[len(PLANTED):])

    assert cli.main(["seed", "omop", "--tenant", "nosuchtenant", "--providers", "10"]) == 2
    assert "tenant 'nosuchtenant' is not in tenants file" in capsys.readouterr().err
