"""PostgresIOManager: DataFrames and Arrow tables in and out of the warehouse.

Built on Dagster's DbIOManager (the pattern behind dagster-duckdb): the output replaces its table, or
its partitions' slice, in ONE transaction (delete slice + COPY), so readers see the old rows or the
new ones, a failure in the middle leaves the published rows intact, and a run covering several
partitions writes them all at once. Values from partition keys are bound as parameters and
identifiers quoted, never pasted into SQL.

Writers of one table are serialized (a transaction-scoped advisory lock on its name, then LOCK TABLE
in SHARE ROW EXCLUSIVE mode, the mode the resource upserts take) with a ``lock_timeout``: two
overlapping runs leave one run's rows, never both, and a run stuck behind another fails clearly.

Tables written by resources (a domain's own write-audit-publish) load as inputs too: the asset's
``dagster/table_name`` metadata (``schema.table``) names the table to read, ``partition_expr`` the
column its partition keys are in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import dagster as dg
import pandas as pd
import psycopg
import pyarrow as pa
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import DbClient, DbIOManager, DbTypeHandler, TableSlice
from psycopg import sql
from psycopg.types.string import TextLoader

from covid_lakehouse.lib.postgres import PostgresResource, _pool, table_ident, validate_identifier

# Arrow -> PostgreSQL column types for tables the IO manager creates.
_PG_TYPES = [
    (pa.types.is_boolean, "boolean"),
    (pa.types.is_int8, "smallint"), (pa.types.is_int16, "smallint"), (pa.types.is_int32, "integer"),
    (pa.types.is_integer, "bigint"), (pa.types.is_floating, "double precision"),
    (pa.types.is_decimal, "numeric"), (pa.types.is_date, "date"),
    (lambda t: pa.types.is_timestamp(t) and t.tz is not None, "timestamptz"),
    (pa.types.is_timestamp, "timestamp"), (pa.types.is_string, "text"), (pa.types.is_large_string, "text"),
]


def pg_type(arrow_type: pa.DataType) -> str:
    for test, name in _PG_TYPES:
        if test(arrow_type):
            return name
    raise TypeError(f"no PostgreSQL column type for Arrow type {arrow_type}")


def _slice_where(table_slice: TableSlice) -> tuple[sql.Composable, list]:
    clauses: list[sql.Composable] = []
    params: list = []
    for dim in table_slice.partition_dimensions or []:
        column = sql.Identifier(validate_identifier(dim.partition_expr, what="partition_expr"))
        if isinstance(dim.partitions, TimeWindow):
            clauses.append(sql.SQL("{} >= %s AND {} < %s").format(column, column))
            params += [dim.partitions.start, dim.partitions.end]
        else:
            clauses.append(sql.SQL("{} = ANY(%s)").format(column))
            params.append(list(dim.partitions))
    return sql.SQL(" AND ").join(clauses), params


class TableLockTimeout(RuntimeError):
    """Another run held the table longer than lock_timeout_s: nothing was written."""


def lock_table_for_write(connection: psycopg.Connection, schema: str, table: str, timeout_s: float) -> None:
    """Serialize writers of ``schema.table`` until commit; readers are not blocked. The advisory lock
    covers a table that does not exist yet (two first runs would both CREATE it)."""
    qualified = f"{validate_identifier(schema, what='schema')}.{validate_identifier(table, what='table')}"
    connection.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{max(1, round(timeout_s * 1000))}ms")))
    try:
        connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"io_manager {qualified}",))
        if PostgresResource.table_exists(connection, schema, table):
            connection.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table_ident(schema, table)))
    except psycopg.errors.LockNotAvailable:
        raise TableLockTimeout(f"{qualified}: another run has been writing it for more than {timeout_s:g} s "
                               "(lock_timeout); nothing written, rerun when it has finished") from None


READER_ROLE = "analyst"  # the warehouse's read-only role (deploy/postgres/init.sh, lib/embedded)


def grant_readers(connection: psycopg.Connection, schema: str, table: str, role: str | None) -> None:
    """Every table this IO manager writes is a published dataset: the read-only role may SELECT it
    (and use its schema), nothing more. Granted in the writing transaction, only when missing (no
    catalog write per run), and skipped where the role does not exist, as the migrations' grants are.
    Tables created by the IO manager are not in any migration, so no migration could grant on them."""
    if not role or not connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        return
    target = table_ident(schema, table)
    schema_ok, table_ok = connection.execute(
        "SELECT has_schema_privilege(%s, %s, 'USAGE'), has_table_privilege(%s, %s, 'SELECT')",
        (role, schema, role, target.as_string(connection))).fetchone()
    reader = sql.Identifier(validate_identifier(role, what="reader_role"))
    if not schema_ok:
        connection.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), reader))
    if not table_ok:
        connection.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(target, reader))


# Loaded as their text: Arrow has no uuid type, and json values are not one Arrow type per column.
_AS_TEXT = ("uuid", "json", "jsonb")


def _fetch_arrow(connection: psycopg.Connection, query: sql.Composable, params: list, batch_rows: int = 50_000
                 ) -> pa.Table:
    """Rows through a server-side cursor, converted batch by batch (the client never holds every row as
    Python tuples at once)."""
    with connection.cursor(name="io_manager_load") as cur:
        for name in _AS_TEXT:
            cur.adapters.register_loader(name, TextLoader)
        cur.execute(query, params)
        chunks = []
        while rows := cur.fetchmany(batch_rows):
            names = [d.name for d in cur.description]
            chunks.append(pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows]))
        names = [d.name for d in cur.description]
    if not chunks:
        return pa.table({n: pa.array([], pa.null()) for n in names})
    return pa.concat_tables(chunks, promote_options="permissive")


class PostgresDbClient(DbClient):
    @staticmethod
    def delete_table_slice(context: dg.OutputContext, table_slice: TableSlice, connection: psycopg.Connection) -> None:
        lock_table_for_write(connection, table_slice.schema, table_slice.table,
                             float(context.resource_config.get("lock_timeout_s", 60.0)))
        connection.execute("SET LOCAL TIME ZONE 'UTC'")  # time windows are UTC; a date column is cast in TimeZone
        if not PostgresResource.table_exists(connection, table_slice.schema, table_slice.table):
            return
        target = table_ident(table_slice.schema, table_slice.table)
        if table_slice.partition_dimensions:
            where, params = _slice_where(table_slice)
            connection.execute(sql.SQL("DELETE FROM {} WHERE {}").format(target, where), params)
        else:
            connection.execute(sql.SQL("DELETE FROM {}").format(target))

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        # schema.table, as the dagster/table_name metadata that names tables for loading
        return f"{table_slice.schema}.{table_slice.table}"

    @staticmethod
    def ensure_schema_exists(context: dg.OutputContext, table_slice: TableSlice, connection: psycopg.Connection) -> None:
        PostgresResource.ensure_schema(connection, table_slice.schema)

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        cols = ", ".join(f'"{validate_identifier(c)}"' for c in table_slice.columns) if table_slice.columns else "*"
        return f'SELECT {cols} FROM "{table_slice.schema}"."{table_slice.table}"'

    @staticmethod
    @contextmanager
    def connect(context, table_slice: TableSlice) -> Iterator[psycopg.Connection]:
        # One transaction for ensure-schema + delete-slice + COPY: all or nothing.
        dsn = context.resource_config["dsn"]
        with _pool(dsn, 8).connection() as conn:
            yield conn


class ArrowPostgresTypeHandler(DbTypeHandler[pa.Table]):
    def handle_output(self, context: dg.OutputContext, table_slice: TableSlice, obj: pa.Table, connection):
        target = table_ident(table_slice.schema, table_slice.table)
        if not PostgresResource.table_exists(connection, table_slice.schema, table_slice.table):
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(validate_identifier(f.name, what="column")), sql.SQL(pg_type(f.type)))
                for f in obj.schema
            )
            connection.execute(sql.SQL("CREATE TABLE {} ({})").format(target, columns))
        rows = PostgresResource.copy_arrow(connection, target, obj)
        grant_readers(connection, table_slice.schema, table_slice.table,
                      context.resource_config.get("reader_role", READER_ROLE))
        return {
            "dagster/row_count": rows,
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(f.name, pg_type(f.type)) for f in obj.schema]
            ),
        }

    def load_input(self, context: dg.InputContext, table_slice: TableSlice, connection) -> pa.Table:
        target = table_ident(table_slice.schema, table_slice.table)
        if not PostgresResource.table_exists(connection, table_slice.schema, table_slice.table):
            raise dg.Failure(f"{table_slice.schema}.{table_slice.table} does not exist: materialize "
                             f"{context.asset_key.to_user_string()} first", allow_retries=False)
        # Time windows are compared in UTC whatever the server's TimeZone (a date column is cast to it).
        connection.execute("SET LOCAL TIME ZONE 'UTC'")
        cols = sql.SQL(", ").join(map(sql.Identifier, table_slice.columns)) if table_slice.columns else sql.SQL("*")
        query = sql.SQL("SELECT {} FROM {}").format(cols, target)
        params: list = []
        if table_slice.partition_dimensions:
            where, params = _slice_where(table_slice)
            query = sql.SQL("{} WHERE {}").format(query, where)
        return _fetch_arrow(connection, query, params)

    @property
    def supported_types(self) -> Sequence[type]:
        return [pa.Table]


class PandasPostgresTypeHandler(DbTypeHandler[pd.DataFrame]):
    _arrow = ArrowPostgresTypeHandler()

    def handle_output(self, context, table_slice, obj: pd.DataFrame, connection):
        return self._arrow.handle_output(context, table_slice, pa.Table.from_pandas(obj, preserve_index=False), connection)

    def load_input(self, context, table_slice, connection) -> pd.DataFrame:
        return self._arrow.load_input(context, table_slice, connection).to_pandas()

    @property
    def supported_types(self) -> Sequence[type]:
        return [pd.DataFrame]


class WarehouseDbIOManager(DbIOManager):
    """DbIOManager whose table can be named by the asset's ``dagster/table_name`` metadata."""

    def _get_table_slice(self, context, output_context) -> TableSlice:
        table_slice = super()._get_table_slice(context, output_context)
        named = (output_context.definition_metadata or {}).get(TABLE_NAME)
        if not named:
            return table_slice
        schema, _, table = str(named).partition(".")
        if not table:
            raise ValueError(f"{TABLE_NAME} metadata {named!r} of {context.asset_key.to_user_string()} is not "
                             "'schema.table'")
        return table_slice._replace(schema=validate_identifier(schema, what="schema"),
                                    table=validate_identifier(table, what="table"))


TABLE_NAME = "dagster/table_name"


class PostgresIOManager(dg.ConfigurableIOManagerFactory):
    """Stores each asset as ``<schema>.<table>``: ``dagster/table_name`` metadata, else schema from
    metadata ``schema`` or the key prefix and the key's last part as the table."""

    dsn: str
    schema_name: str | None = None
    lock_timeout_s: float = 60.0
    reader_role: str | None = READER_ROLE  # granted SELECT on every table written (None: no grant)

    @classmethod
    def from_env(cls) -> PostgresIOManager:
        return cls(dsn=dg.EnvVar("WAREHOUSE_DSN"))

    def create_io_manager(self, context) -> DbIOManager:
        return WarehouseDbIOManager(
            db_client=PostgresDbClient(),
            database="warehouse",
            schema=self.schema_name,
            type_handlers=[PandasPostgresTypeHandler(), ArrowPostgresTypeHandler()],
            default_load_type=pd.DataFrame,
            io_manager_name="PostgresIOManager",
        )
