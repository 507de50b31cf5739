"""Full extracts of the tenant's source tables with COPY TO (the source has no change timestamps; new
and changed rows are found by hashing, downstream). CSV from PostgreSQL is parsed by pyarrow in C."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql

from covid_lakehouse.defs.omop.tenants import Tenant
from covid_lakehouse.lib.memory import release_freed_memory, write_behind
from covid_lakehouse.lib.postgres import copy_csv_options, copy_out, copy_out_sql, table_ident

CARE_SITE_SOURCE = pa.schema([
    ("care_site_id", pa.int64()), ("care_site_name", pa.string()), ("care_site_source_value", pa.string()),
])
PROVIDER_SOURCE = pa.schema([
    ("provider_id", pa.int64()), ("provider_name", pa.string()), ("npi", pa.string()), ("specialty", pa.string()),
    ("care_site", pa.string()), ("provider_source_value", pa.string()), ("specialty_source_value", pa.string()),
    ("provider_id_source_value", pa.string()),
])

# Source columns holding a few distinct values however many rows (labels, site names, the id system):
# dictionary-encoded in the extract's file (csv_to_parquet). A unique column's dictionary would only be
# built per row group to be dropped.
REPEATING = frozenset({"specialty", "care_site", "specialty_source_value", "provider_id_source_value"})


def source_label(tenant: Tenant, table: str) -> str:
    """How provenance names a source table (no host or credentials)."""
    return f"postgres:{tenant.source_schema}.{table}"


@contextmanager
def source_errors(tenant: Tenant, table: str) -> Iterator[None]:
    """A missing schema, table or column is a configuration problem: fail at once (no retries) with
    the table named. Connection errors propagate (the asset's RetryPolicy retries them)."""
    try:
        yield
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InvalidSchemaName) as err:
        raise dg.Failure(
            description=f"tenant {tenant.name!r}: cannot read source table {tenant.source_schema}.{table}: "
                        f"{str(err).splitlines()[0]}",
            allow_retries=False,
        ) from err


def source_connection(tenant: Tenant) -> psycopg.Connection:
    """A connection to the tenant's source database for an extract (read-only once its transaction opens)."""
    conn = psycopg.connect(tenant.source_dsn(), connect_timeout=10, application_name="covid_lakehouse_omop_extract")
    conn.read_only = True
    return conn


def lock_for_read(conn: psycopg.Connection, schema: str, table: str) -> None:
    """Take ``table``'s ACCESS SHARE lock (what a SELECT takes anyway) as the transaction's first
    statement, before any snapshot: TRUNCATE is not MVCC-safe, so a statement whose snapshot predates a
    concurrent TRUNCATE + reload (it then waits for the lock and reads on) sees the table EMPTY, and
    the run would publish every row as deleted. Waiting here instead, the next statement's snapshot
    sees the reload."""
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(table_ident(schema, table)))


def _copy_into(tenant: Tenant, table: str, schema: pa.Schema, sink: IO[bytes]) -> None:
    """COPY ``table`` (the columns of ``schema``) out of the tenant's source database as CSV into ``sink``."""
    target = table_ident(tenant.source_schema, table)
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in schema.names)
    with source_errors(tenant, table), source_connection(tenant) as conn:
        with conn.transaction():  # READ COMMITTED: the COPY's snapshot is taken after the lock
            lock_for_read(conn, tenant.source_schema, table)
            with conn.cursor().copy(copy_out_sql(sql.SQL("{} ({})").format(target, columns))) as copy:
                copy_out(copy, sink)


@contextmanager
def _copied_csv(tenant: Tenant, table: str, schema: pa.Schema) -> Iterator[tuple[IO[bytes], int]]:
    """COPY ``table`` (the columns of ``schema``) out of the tenant's source database as CSV into a
    temporary file, not memory (only what is parsed from it is held): (the file, at its start; its size)."""
    with tempfile.TemporaryFile(prefix="omop-extract-") as buffer:
        _copy_into(tenant, table, schema, buffer)
        size = buffer.tell()
        buffer.seek(0)
        yield buffer, size


def extract(tenant: Tenant, table: str, schema: pa.Schema) -> pa.Table:
    """COPY ``table`` (the columns of ``schema``) out of the tenant's source database as Arrow.

    Connection errors propagate (the asset's RetryPolicy retries them); a missing table or column is a
    configuration problem and fails at once with the table named."""
    with _copied_csv(tenant, table, schema) as (buffer, size):
        if not size:
            return schema.empty_table()
        return pacsv.read_csv(buffer, **copy_csv_options(schema, block_size=64 << 20))


def extract_parquet(tenant: Tenant, table: str, schema: pa.Schema, path: Path, *, block_size: int = 4 << 20) -> Path:
    """Like :func:`extract`, but into the parquet file ``path``, one CSV block at a time: memory stays
    one block however large the table (DuckDB then reads the file, see build_providers)."""
    return csv_to_parquet(lambda sink: _copy_into(tenant, table, schema, sink), schema, path, block_size=block_size,
                          name=f"omop-copy-{table}")


def csv_to_parquet(produce: Callable[[IO[bytes]], None], schema: pa.Schema, path: Path, *,
                   block_size: int = 4 << 20, name: str = "omop-copy") -> Path:
    """The CSV that ``produce`` writes (one or more COPY TO in the dialect of copy_out_sql) parsed into
    the parquet file ``path`` of ``schema``, one block at a time. Small blocks: with 16 MB ones the
    peak still grew from 2M to 8M rows (measured), with 4 MB it stays flat.

    The COPY streams through a pipe into the parser (a thread each): the CSV is parsed while the
    database still sends it, instead of after (the COPY and the parse took about as long each). The
    file is a local scratch copy read by DuckDB alone, so it is written uncompressed (compression cost
    more time than the larger file does), with dictionaries only for the columns that repeat a few
    values (REPEATING): nearly free to write, they halve the file at 2M providers and DuckDB's scans of it
    (value maps, cleaning) take about half the CPU, where plain strings are each copied."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce_into_pipe() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=1 << 20) as sink:
                produce(sink)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
            failure.append(err)

    copier = threading.Thread(target=produce_into_pipe, name=name, daemon=True)
    copier.start()
    parse_error: BaseException | None = None
    try:
        with os.fdopen(read_fd, "rb", buffering=1 << 16) as stream, \
                pq.ParquetWriter(path, schema, compression="none",
                                 use_dictionary=[column for column in schema.names if column in REPEATING]) as writer:
            # no byte at all is an empty table (the parser would refuse it as an "empty CSV file")
            if stream.peek(1):
                try:
                    # the next block is parsed while the last one is written (write_behind)
                    with write_behind(writer.write_batch) as write:
                        for batch in pacsv.open_csv(stream, **copy_csv_options(schema, block_size=block_size)):
                            write(batch)
                except pa.ArrowInvalid as err:
                    parse_error = err
    finally:
        copier.join()  # the read end is closed by now: a COPY still writing fails (EPIPE) and ends
    if failure and not (parse_error is not None and isinstance(failure[0], BrokenPipeError)):
        # the COPY failed (perhaps mid-stream, which is what the parser then tripped on); a broken
        # pipe only means the parser stopped first: its error is the one to report
        raise failure[0] from parse_error
    if parse_error is not None:
        raise parse_error
    release_freed_memory()
    return path
