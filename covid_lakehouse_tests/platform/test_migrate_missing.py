"""ensure_migrated notices a recorded migration whose objects were dropped by hand (real PostgreSQL):
it fails saying what is gone and what to do, and never re-applies onto that unknown state; the reset
path (drop the schemas and forget the records) still re-creates everything."""

import psycopg
import pytest

from covid_lakehouse.lib.migrate import MigrationError, discover, ensure_migrated, expected_objects

pytestmark = pytest.mark.integration


def _scope(tmp_path, schema):
    folder = tmp_path / schema
    folder.mkdir()
    (folder / "0001_create.sql").write_text(
        f"-- CREATE TABLE {schema}.commented_out (id int);\n"
        f"CREATE SCHEMA IF NOT EXISTS {schema};\n"
        f"CREATE TABLE IF NOT EXISTS {schema}.kept (id int PRIMARY KEY);\n"
        f"CREATE TABLE {schema}.old (id int);\n"
        f"CREATE SEQUENCE {schema}.seq;\n"
        "DO $$ BEGIN IF false THEN CREATE TABLE never.created (id int); END IF; END $$;\n")
    (folder / "0002_replace.sql").write_text(
        f"DROP TABLE {schema}.old; ALTER TABLE {schema}.kept RENAME TO renamed;\n")
    return discover({schema: folder})


def test_a_schema_dropped_by_hand_fails_with_what_to_do(services, tmp_path, pg, unique_schema):
    migrations = _scope(tmp_path, unique_schema)
    assert set(expected_objects(migrations)) == {
        ("schema", unique_schema), ("relation", f"{unique_schema}.renamed"), ("relation", f"{unique_schema}.seq")}
    with psycopg.connect(services.warehouse_dsn, autocommit=True) as conn:
        assert [m.version for m in ensure_migrated(conn, unique_schema, migrations)] == [1, 2]
        assert ensure_migrated(conn, unique_schema, migrations) == []  # all well: nothing to do

        pg.execute(f"DROP TABLE {unique_schema}.renamed")
        with pytest.raises(MigrationError, match=rf"relation {unique_schema}\.renamed \(created by {unique_schema} "
                                                 r"migration 0002_replace\).*DELETE FROM ops\.schema_migrations"):
            ensure_migrated(conn, unique_schema, migrations)

        pg.execute(f"DROP SCHEMA {unique_schema} CASCADE")
        with pytest.raises(MigrationError, match=rf"schema {unique_schema} .*Not re-applying"):
            ensure_migrated(conn, unique_schema, migrations)
        assert pg.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (unique_schema,)).fetchone()[0] == 0

        # the reset path of the tests and benchmarks: forget the records, and it is re-created
        pg.execute("DELETE FROM ops.schema_migrations WHERE scope = %s", (unique_schema,))
        assert [m.version for m in ensure_migrated(conn, unique_schema, migrations)] == [1, 2]
    assert pg.execute(f"SELECT to_regclass('{unique_schema}.renamed') IS NOT NULL").fetchone()[0]


def test_the_products_migrations_declare_their_tables():
    objects = expected_objects(discover())
    assert {("relation", "ads.ads"), ("relation", "vaccines.people_per_dose"), ("schema", "ny_testing_staging"),
            ("relation", "ops.run_failures")} <= set(objects)
    assert ("schema", "platform") not in objects  # created in a conditional DO block: not required
