"""covid_lakehouse_dev.warehouse.reset_domain, the one reset the tests' fixture and the benchmarks share:
the domain's schemas go and so do its migration records, so its migrations run again from scratch."""

import psycopg
import pytest

from covid_lakehouse.lib.migrate import discover, ensure_migrated
from covid_lakehouse_dev.warehouse import reset_domain

pytestmark = pytest.mark.integration


def test_a_reset_domain_is_migrated_again_from_scratch(services, tmp_path, pg: psycopg.Connection,
                                                       unique_schema: str) -> None:
    folder = tmp_path / unique_schema
    folder.mkdir()
    (folder / "0001_create.sql").write_text(f"CREATE SCHEMA {unique_schema}; CREATE TABLE {unique_schema}.t (id int);")
    migrations = discover({unique_schema: folder})
    with psycopg.connect(services.warehouse_dsn, autocommit=True) as conn:
        assert [m.version for m in ensure_migrated(conn, unique_schema, migrations)] == [1]
        pg.execute(f"INSERT INTO {unique_schema}.t VALUES (1)")

        reset_domain(pg, unique_schema)

        assert pg.execute("SELECT count(*) FROM ops.schema_migrations WHERE scope = %s", (unique_schema,)).fetchone() == (0,)
        assert [m.version for m in ensure_migrated(conn, unique_schema, migrations)] == [1]
    assert pg.execute(f"SELECT count(*) FROM {unique_schema}.t").fetchone() == (0,)
