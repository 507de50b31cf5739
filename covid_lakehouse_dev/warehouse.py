"""Dev-only warehouse chores shared by the tests and the benchmarks (neither may import the other)."""

from __future__ import annotations

import psycopg
from psycopg import sql


def reset_domain(conn: psycopg.Connection, scope: str, *schemas: str) -> None:
    """Drop ``schemas`` (default: the schema named like ``scope``) and forget the migration records of
    ``scope``, so the domain's migrations run again from scratch, as on a new database: with its
    records left in ops.schema_migrations, ensure_migrated would take the dropped tables for existing
    ones and never recreate them. ``conn`` must be in autocommit mode."""
    for schema in schemas or (scope,):
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    row = conn.execute("SELECT to_regclass('ops.schema_migrations') IS NOT NULL").fetchone()
    if row and row[0]:
        conn.execute("DELETE FROM ops.schema_migrations WHERE scope = %s", (scope,))
