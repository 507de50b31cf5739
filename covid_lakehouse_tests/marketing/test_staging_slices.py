"""The publish claims the (account/customer, day) slices the StagingWriter saw while COPYing, instead of
scanning the whole staging table again: the set must be exactly the staged rows' distinct slices."""

from datetime import date

import pyarrow as pa
import pytest
from psycopg import sql

from covid_lakehouse.defs.marketing.load import SliceVersions, StagingWriter
from covid_lakehouse.defs.marketing.tables import FACEBOOK, ensure_tables
from covid_lakehouse.lib.postgres import PostgresResource

pytestmark = pytest.mark.integration


def facebook_rows(*slices: tuple[str, date]) -> pa.Table:
    n = len(slices)
    values = {name: [f"{name}-{i}" for i in range(n)] for name in FACEBOOK.arrow_schema.names}
    values.update(account_id=[a for a, _ in slices], date=[d for _, d in slices], impressions=[1] * n, clicks=[0] * n,
                  spend=["1.00"] * n, actions=["[]"] * n)
    return pa.table(values, schema=FACEBOOK.arrow_schema)


def test_the_writer_collects_the_distinct_slices_of_every_staged_row(clean_marketing, warehouse: PostgresResource) -> None:
    with warehouse.connection() as conn:
        ensure_tables(conn)
    one, two = date(2024, 3, 1), date(2024, 3, 2)
    versions = SliceVersions("test run", "account_id", "date")
    with StagingWriter(warehouse, FACEBOOK, slice_columns=(versions.unit_column, versions.day_column)) as staging:
        assert staging.tracks(versions)
        staging.write(facebook_rows(("10", one), ("10", one), ("9", two)), pages=1)
        staging.write(facebook_rows(("10", two), ("10", one)), pages=1)
        table = staging.finish()
        with warehouse.connection() as conn:
            scanned = set(conn.execute(sql.SQL("SELECT DISTINCT account_id, date FROM {}").format(table)).fetchall())
        assert staging.slices == scanned == {("10", one), ("9", two), ("10", two)}
        with warehouse.connection() as conn:  # the claim records each of them
            assert set(versions.claim(conn, FACEBOOK, table, staging.slices)) == set()
            claimed = conn.execute("SELECT unit, day FROM marketing.source_versions WHERE source = %s ORDER BY 1, 2",
                                   (FACEBOOK.name,)).fetchall()
        assert claimed == [("10", one), ("10", two), ("9", two)]
