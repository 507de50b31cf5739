"""Warehouse migrations: ordered, recorded, idempotent, transactional, and an upgrade of a database
created by the previous version keeps its rows."""

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
