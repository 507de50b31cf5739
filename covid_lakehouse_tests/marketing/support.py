"""Helpers shared by marketing test modules: a probe table (id, v, raw_object) to stage and merge into."""

import pyarrow as pa
from psycopg import sql

from covid_lakehouse.defs.marketing.tables import TableSpec, ensure_tables
from covid_lakehouse.lib.postgres import PostgresResource


def probe_spec(name: str) -> TableSpec:
    return TableSpec(name=name, arrow_schema=pa.schema([("id", pa.int64()), ("v", pa.string()),
                                                        ("raw_object", pa.string())]), key=("id",))


def create_probe(warehouse: PostgresResource, spec: TableSpec) -> TableSpec:
    """The probe's published table, with its primary key (the marketing schemas come from the migrations)."""
    with warehouse.connection() as conn:
        ensure_tables(conn)
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v text, raw_object text NOT NULL, "
                             "updated_at timestamptz NOT NULL DEFAULT now())").format(spec.ident))
    return spec


def probe_rows(spec: TableSpec, *ids: int, v: str = "x") -> pa.Table:
    return pa.table({"id": list(ids), "v": [v] * len(ids), "raw_object": ["s3://raw/p#1.json"] * len(ids)},
                    schema=spec.arrow_schema)
