"""Warehouse migrations: ordered, recorded, idempotent, transactional, and an upgrade of a database
created by the previous version keeps its rows."""

import uuid

import psycopg
import pytest

from covid_lakehouse import cli
from covid_lakehouse.lib.migrate import MigrationError, discover, migrate

pytestmark = pytest.mark.integration


def _write(folder, name, sql):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


def _scope_roots(tmp_path, schema):
    return {schema: tmp_path / schema}


def test_upgrade_from_the_previous_version_keeps_rows(services, tmp_path, pg, unique_schema):
    folder = tmp_path / unique_schema
    _write(folder, "0001_create.sql", f"CREATE SCHEMA {unique_schema}; CREATE TABLE {unique_schema}.t (id int PRIMARY KEY, v text);")
    v1 = discover({unique_schema: folder})
    assert [m.version for m in migrate(services.warehouse_dsn, v1)] == [1]
    pg.execute(f"INSERT INTO {unique_schema}.t SELECT g, 'row ' || g FROM generate_series(1, 500) g")

    _write(folder, "0002_add_loaded_at.sql",
           f"ALTER TABLE {unique_schema}.t ADD COLUMN loaded_at timestamptz NOT NULL DEFAULT now();")
    _write(folder, "0003_rename.sql", f"ALTER TABLE {unique_schema}.t RENAME COLUMN v TO label;")
    v3 = discover({unique_schema: folder})
    assert [m.version for m in migrate(services.warehouse_dsn, v3)] == [2, 3]
    assert migrate(services.warehouse_dsn, v3) == []  # idempotent
    assert pg.execute(f"SELECT count(*), count(loaded_at), min(label) FROM {unique_schema}.t").fetchone() == (500, 500, "row 1")
    recorded = pg.execute("SELECT version FROM ops.schema_migrations WHERE scope = %s ORDER BY 1", (unique_schema,))
    assert [v for (v,) in recorded] == [1, 2, 3]


def test_a_failing_migration_is_rolled_back_entirely(services, tmp_path, pg, unique_schema):
    folder = tmp_path / unique_schema
    _write(folder, "0001_create.sql", f"CREATE SCHEMA {unique_schema}; CREATE TABLE {unique_schema}.t (id int);")
    _write(folder, "0002_broken.sql", f"ALTER TABLE {unique_schema}.t ADD COLUMN x int; SELECT 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(services.warehouse_dsn, discover({unique_schema: folder}))
    columns = pg.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s", (unique_schema,))
    assert [c for (c,) in columns] == ["id"]  # 0001 kept, nothing of 0002
    recorded = pg.execute("SELECT version FROM ops.schema_migrations WHERE scope = %s", (unique_schema,)).fetchall()
    assert recorded == [(1,)]


def test_an_applied_migration_that_changed_is_refused(services, tmp_path, unique_schema):
    folder = tmp_path / unique_schema
    _write(folder, "0001_create.sql", f"CREATE SCHEMA {unique_schema};")
    migrate(services.warehouse_dsn, discover({unique_schema: folder}))
    _write(folder, "0001_create.sql", f"CREATE SCHEMA {unique_schema}; -- edited")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(services.warehouse_dsn, discover({unique_schema: folder}))


def test_badly_named_or_duplicate_versions_are_errors(tmp_path):
    _write(tmp_path / "a", "1_x.sql", "")
    with pytest.raises(MigrationError, match="NNNN_description"):
        discover({"a": tmp_path / "a"})
    _write(tmp_path / "b", "0001_x.sql", "")
    _write(tmp_path / "b", "0001_y.sql", "")
    with pytest.raises(MigrationError, match="two migrations with version 1"):
        discover({"b": tmp_path / "b"})


def test_migrate_command_applies_the_products_migrations(services, capsys, pg):
    assert cli.main(["migrate"]) == 0
    assert "warehouse schema up to date" in capsys.readouterr().out
    assert pg.execute("SELECT to_regclass('ops.run_failures') IS NOT NULL").fetchone()[0]
    scopes = {s for (s,) in pg.execute("SELECT scope FROM ops.schema_migrations")}
    assert "platform" in scopes


@pytest.fixture
def previous_version_database(services, embedded_stack):
    """A fresh warehouse database in the state the previous release left it: only the platform's first
    migration recorded, the domains' tables created by their assets' own DDL (the text of each domain's
    0001 file, not recorded), and the blanket analyst grants that release's provisioning set."""
    name = "upgrade_" + uuid.uuid4().hex[:10]
    superuser = embedded_stack.state.superuser_dsn
    with psycopg.connect(superuser(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER warehouse_writer")
    with psycopg.connect(superuser(name), autocommit=True) as conn:
        conn.execute(f"GRANT CONNECT ON DATABASE {name} TO analyst")
        conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE warehouse_writer GRANT SELECT ON TABLES TO analyst")
        conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE warehouse_writer GRANT USAGE ON SCHEMAS TO analyst")
    dsn = services.warehouse_dsn.rsplit("/", 1)[0] + "/" + name
    everything = discover()
    migrate(dsn, [m for m in everything if m.scope == "platform" and m.version == 1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        for m in everything:
            if m.scope != "platform" and m.version == 1:
                conn.execute(m.sql)
    try:
        yield dsn, embedded_stack.state.analyst_dsn().rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(superuser(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_upgrading_a_database_of_the_previous_version_keeps_every_row(previous_version_database):
    dsn, analyst_dsn = previous_version_database
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO ads.ads SELECT gen_random_uuid(), 'brand', NULL, '__unknown', NULL, NULL, now(), "
                     "'backup/x.json', now(), g FROM generate_series(1, 300) g")
        conn.execute("INSERT INTO vaccines.people_per_dose (state, population, doses_moderna, doses_pfizer, "
                     "total_doses, loaded_at) VALUES ('Ohio', 11689442, 10, 20, 30, now())")
        conn.execute("INSERT INTO marketing.rds_orders (order_id, customer_id, status, amount, currency, created_at, "
                     "source_updated_at) SELECT g, g, 'paid', 9.99, 'USD', now(), now() FROM generate_series(1, 50) g")
        conn.execute("INSERT INTO ops.run_failures (run_id, job_name) VALUES ('r1', 'j')")
        # that release's load made a county table as it met the county
        conn.execute("CREATE TABLE ny_testing.albany (test_date date PRIMARY KEY, new_positives bigint NOT NULL, "
                     "load_date timestamptz NOT NULL)")
        conn.execute("INSERT INTO ny_testing.albany SELECT DATE '2020-03-01' + g, g, now() FROM generate_series(0, 99) g")
        conn.execute("INSERT INTO ny_testing_reference.geography_totals SELECT 'STATEWIDE', 'STATEWIDE', "
                     "DATE '2020-03-01' + g, 1, 2, 3, 4, now() FROM generate_series(0, 9) g")
        before = _counts(conn)

    applied = migrate(dsn)

    assert {(m.scope, m.version) for m in applied} >= {("platform", 2), ("ads", 1), ("ads", 2), ("vaccines", 1),
                                                       ("ny_testing", 1), ("ny_testing", 2)}
    assert migrate(dsn) == []
    with psycopg.connect(dsn) as conn:
        assert _counts(conn) == before == {"ads.ads": 300, "vaccines.people_per_dose": 1, "marketing.rds_orders": 50,
                                           "ops.run_failures": 1, "ny_testing.albany": 100,
                                           "ny_testing_reference.geography_totals": 10}
    with psycopg.connect(dsn, autocommit=True) as conn:  # a county first met after the upgrade
        conn.execute("CREATE TABLE ny_testing.bronx (test_date date PRIMARY KEY)")
    # the blanket grants of the previous release are gone; published tables stay readable
    with psycopg.connect(analyst_dsn, autocommit=True) as analyst:
        assert analyst.execute("SELECT count(*) FROM ads.ads").fetchone()[0] == 300
        for county_or_reference in ("ny_testing.albany", "ny_testing.bronx", "ny_testing_reference.geography_totals"):
            analyst.execute(f"SELECT count(*) FROM {county_or_reference}")
        for internal in ("ops.run_failures", "ads.archive_pending"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                analyst.execute(f"SELECT count(*) FROM {internal}")


def _counts(conn) -> dict[str, int]:
    tables = ("ads.ads", "vaccines.people_per_dose", "marketing.rds_orders", "ops.run_failures", "ny_testing.albany",
              "ny_testing_reference.geography_totals")
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
