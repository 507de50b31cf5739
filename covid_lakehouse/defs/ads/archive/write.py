"""Step 2, write: the batch's rows still at their planned version (ads.archive_pending joined to
ads.ads, streamed by COPY TO) become parquet files, registered in ONE Iceberg snapshot of ads.ads_archive
tagged with the batch id (a summary property, and a snapshot ref until the batch is done)."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql
from pyiceberg.io.pyarrow import parquet_file_to_data_file
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.update.snapshot import ManageSnapshots

from covid_lakehouse.defs.ads.archive.state import BATCH_PROPERTY, Batch, Hook, batch_tag
from covid_lakehouse.defs.ads.archive.table import ARCHIVE_ARROW, TIMESTAMP_UTC
from covid_lakehouse.defs.ads.settings import ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import ADS, PENDING
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import copy_csv_options, copy_out_sql

log = logging.getLogger(__name__)


_ROW_FIELDS = ARCHIVE_ARROW.names[:-2]  # what PostgreSQL provides; the batch adds the last two
# Every text column is free text from the API: read back exactly (null-like words, '', newlines).
# Small blocks: the CSV reader reads up to 32 blocks ahead of the parser, so at the default 4 MB the
# readahead alone held ~130 MB when PostgreSQL streamed faster than the chunks were written.
_CSV_OPTIONS = copy_csv_options(pa.schema([ARCHIVE_ARROW.field(name) for name in _ROW_FIELDS]), block_size=256 << 10)


def write_batch(conn: psycopg.Connection, lakehouse: LakehouseResource, batch: Batch, chunk_rows: int,
                 hook: Hook) -> None:
    """Write the batch's rows as parquet files (one per chunk and shown date) under the table's data
    location, then register them all in ONE snapshot tagged with the batch id. A crash before that
    commit leaves the table unchanged (only unreferenced files, named per attempt, behind)."""
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    attempt = uuid.uuid4().hex[:8]
    data_files = []
    for chunk in _planned_rows(conn, batch.batch_id, chunk_rows):
        data_files += _write_chunk(table, batch, chunk, f"{batch.batch_id}-{attempt}", len(data_files))
        hook("chunk_written")
        # Dropped before the next chunk is read: the loop variable would keep this one alive meanwhile.
        del chunk
    if not data_files:
        return
    with table.transaction() as tx:
        with tx.update_snapshot(snapshot_properties={BATCH_PROPERTY: batch.batch_id}).fast_append() as append:
            for data_file in data_files:
                append.append_data_file(data_file)
        # Same commit: the snapshot never exists untagged (maintenance could expire it otherwise).
        with ManageSnapshots(tx) as refs:
            refs.create_tag(tx.table_metadata.current_snapshot_id, batch_tag(batch.batch_id))
    log.info("archive batch %s: %d of %d planned rows appended to %s.%s in %d files", batch.batch_id,
             sum(f.record_count for f in data_files), batch.planned_rows, ARCHIVE_NAMESPACE, ARCHIVE_TABLE,
             len(data_files))


def _write_chunk(table: Table, batch: Batch, chunk: pa.Table, prefix: str, first: int) -> list[DataFile]:
    """One parquet file per shown date of ``chunk``; their Iceberg data files (not committed yet)."""
    data_files = []
    for day, rows in split_by_day(_with_batch_columns(chunk, batch)):
        path = f"{table.location()}/data/shown_date={day}/{prefix}-{first + len(data_files):05d}.parquet"
        with table.io.new_output(path).create(overwrite=True) as stream:
            pq.write_table(rows, stream, compression="zstd")
        # Reads the footer back: the file landed, and Iceberg gets its statistics and partition.
        data_files.append(parquet_file_to_data_file(table.io, table.metadata, path))
    return data_files


def split_by_day(rows: pa.Table) -> Iterator[tuple[date, pa.Table]]:
    """(shown_date, rows of that date, in their order): a data file must hold one partition. A chunk of a
    one-day group is sorted already (slices, no copy); of one spanning several days only one day at a time
    is copied, by a filter (taking the whole chunk into date order held a second copy of the chunk while its
    files were written, and a take of one day's indices first joins each column's pieces whole)."""
    days = rows["shown_date"]
    if len(days) > 1 and not pc.all(pc.less_equal(days.slice(0, len(days) - 1), days.slice(1))).as_py():
        for day in pc.unique(days).sort():
            yield day.as_py(), rows.filter(pc.equal(days, day))
        return
    start = 0
    for item in pc.value_counts(days):
        count = item["counts"].as_py()
        yield item["values"].as_py(), rows.slice(start, count)
        start += count


def _planned_rows(conn: psycopg.Connection, batch_id: str, chunk_rows: int) -> Iterator[pa.Table]:
    """The batch's rows still at their planned version, ``chunk_rows`` at a time, one COPY TO per group
    of planned days (``_day_groups``), each streamed through pyarrow's CSV reader, so memory holds about
    one chunk. A chunk spans the days of one group only: few partitions (Iceberg splits a chunk by
    partition, at a cost per partition), and no ORDER BY over the batch (at 5,000,000 rows that sort
    spilled to disk and grew faster than the rows). Each group is read through the planned date's
    index and ads.ads' shown_at index, and joined on (ad_id, row_version) as before."""
    query = copy_out_sql(sql.SQL(
        "(SELECT a.ad_id, a.ad_group, a.ad_campaign, a.ad_campaign_raw, a.ad_scheme_origin, "
        "a.ad_scheme_approved, a.shown_at, p.shown_date, a.backup_key, "
        "a.loaded_at, a.row_version FROM {pending} p "
        "JOIN {ads} a ON a.ad_id = p.ad_id AND a.row_version = p.row_version "
        "WHERE p.batch_id = %s AND p.shown_date BETWEEN %s AND %s AND a.shown_at >= %s AND a.shown_at < %s)"
    ).format(pending=PENDING, ads=ADS))
    for first, last in _day_groups(conn, batch_id, chunk_rows):
        start = datetime.combine(first, time(), UTC)
        end = datetime.combine(last + timedelta(days=1), time(), UTC)
        yield from _copy_chunks(conn, query, (batch_id, first, last, start, end), chunk_rows)


def _day_groups(conn: psycopg.Connection, batch_id: str, chunk_rows: int) -> list[tuple[date, date]]:
    """(first, last) planned shown dates of consecutive days, a group holding up to ``chunk_rows``
    planned rows (or one larger day), in date order."""
    count_days = sql.SQL("SELECT shown_date, count(*) FROM {} WHERE batch_id = %s GROUP BY shown_date "
                         "ORDER BY shown_date").format(PENDING)
    days = conn.execute(count_days, (batch_id,)).fetchall()
    if any(day is None for day, _ in days):
        # Planned before the shown date was (migration 0003): taken from the planned version, which
        # is what the copy reads; an ad changed since then is not copied, so its date does not matter.
        conn.execute(sql.SQL(
            "UPDATE {pending} p SET shown_date = (a.shown_at AT TIME ZONE 'UTC')::date FROM {ads} a "
            "WHERE p.batch_id = %s AND p.shown_date IS NULL AND a.ad_id = p.ad_id AND a.row_version = p.row_version"
        ).format(pending=PENDING, ads=ADS), (batch_id,))
        days = conn.execute(count_days, (batch_id,)).fetchall()
    groups: list[tuple[date, date]] = []
    rows = 0
    for day, count in days:
        if day is None:
            continue
        if groups and rows + count <= chunk_rows:
            groups[-1] = (groups[-1][0], day)
            rows += count
        else:
            groups.append((day, day))
            rows = count
    return groups


def _copy_chunks(conn: psycopg.Connection, query: sql.Composable, params: tuple, chunk_rows: int) -> Iterator[pa.Table]:
    """One COPY TO streamed through pyarrow's CSV reader, ``chunk_rows`` at a time."""
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        stream = io.BufferedReader(_CopyStream(copy), 1 << 20)
        if not stream.peek(1):
            return
        reader = pacsv.open_csv(stream, **_CSV_OPTIONS)
        buffered: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            buffered.append(batch)
            rows += batch.num_rows
            while rows >= chunk_rows:
                table = pa.Table.from_batches(buffered)
                buffered, rows = table.slice(chunk_rows).to_batches(), rows - chunk_rows
                # No local names the chunk while the generator waits at the yield: once the caller is
                # done with it, it is freed before the next chunk is read (not one chunk later).
                ready = [table.slice(0, chunk_rows)]
                del table
                yield ready.pop()
        if rows:
            yield pa.Table.from_batches(buffered, schema=reader.schema)


class _CopyStream(io.RawIOBase):
    """A COPY TO STDOUT as a readable binary stream."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self._chunks = iter(copy)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _with_batch_columns(chunk: pa.Table, batch: Batch) -> pa.Table:
    n = chunk.num_rows
    columns = [*chunk.columns, pa.array([batch.batch_id] * n, pa.string()),
               pa.array([batch.created_at] * n, TIMESTAMP_UTC)]
    return pa.Table.from_arrays(columns, schema=ARCHIVE_ARROW)
