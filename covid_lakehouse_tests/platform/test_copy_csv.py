"""COPY ... TO STDOUT read back by pyarrow (lib/postgres.py copy_out_sql + copy_csv_options): every value
reads back exactly as PostgreSQL holds it, over the real warehouse."""

import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from psycopg import sql

from covid_lakehouse.lib.postgres import copy_csv_options, copy_out_sql, table_ident

pytestmark = pytest.mark.integration

# pyarrow's default null words, and other text a CSV reader likes to reinterpret
TEXTS = ["NA", "N/A", "NULL", "null", "nan", "NaN", "-nan", "#N/A", "n/a", "None", "", None, " ",
         'with "quotes", commas', "line\nbreak", "crlf\r\nend", "Ñew Yörk — 東京 🦠", "\\N", "t", "f",
         "1e5", "007"]
SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.string()), ("flag", pa.bool_()),
                    ("at", pa.timestamp("us", tz="UTC"))])


def _read_back(pg, schema_name: str, *, header: bool) -> pa.Table:
    buffer = io.BytesIO()
    target = sql.SQL("{} (id, label, flag, at)").format(table_ident(schema_name, "t"))
    with pg.cursor().copy(copy_out_sql(target, header=header)) as copy:
        for chunk in copy:
            buffer.write(chunk)
    buffer.seek(0)
    return pacsv.read_csv(buffer, **copy_csv_options(SCHEMA, header=header))


@pytest.mark.parametrize("header", [False, True])
def test_copy_out_reads_back_exactly_what_postgresql_holds(pg, unique_schema, header):
    pg.execute("SET TIME ZONE 'UTC'")
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(unique_schema)))
    pg.execute(sql.SQL("CREATE TABLE {} (id bigint, label text, flag boolean, at timestamptz)").format(
        table_ident(unique_schema, "t")))
    at = datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=UTC)
    rows = [(i, text, [True, False, None][i % 3], at if i % 2 else None) for i, text in enumerate(TEXTS)]
    with pg.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(table_ident(unique_schema, "t")),
                        rows)
    held = [tuple(r) for r in pg.execute(sql.SQL("SELECT id, label, flag, at FROM {} ORDER BY id").format(
        table_ident(unique_schema, "t")))]

    table = _read_back(pg, unique_schema, header=header)

    assert table.schema.names == SCHEMA.names
    read = sorted(zip(*(table[name].to_pylist() for name in SCHEMA.names), strict=True))
    assert read == held
    assert read == rows  # and that is what was inserted: "" stays "", None stays NULL, NA stays "NA"
