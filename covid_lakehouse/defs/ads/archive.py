"""Archive of old ads: rows move from PostgreSQL ads.ads to the Iceberg table ads.ads_archive
(parquet under s3://ad-data/archive/, partitioned by shown date), and back with restore_date().

A small state machine makes every step safe to crash and repeat (docs/ads.md has the full argument):

1. plan     one transaction: a batch row (status 'planned') + the candidates' (ad_id, row_version)
            in ads.archive_pending. Only one batch is unfinished at a time; a rerun resumes it.
2. write    the candidates still at their planned version are streamed in chunks into parquet files
            and registered in one Iceberg snapshot tagged with the batch id; skipped when a snapshot
            with that tag already exists (a crash after the commit must not append twice).
3. verify   the batch's (ad_id, row_version) pairs are read back from the committed table: no
            duplicates, all planned, as many as the snapshots recorded.
4. delete   one transaction: delete the rows whose current version is one read back, check that
            archived == deleted + changed-meanwhile (blocking reconciliation), mark the batch done.

Archive, restore and replay take one PostgreSQL advisory lock, so they never interleave.
"""

import io
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg import sql
from pyiceberg.exceptions import TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In
from pyiceberg.io.pyarrow import ArrowScan, parquet_file_to_data_file
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    BooleanType,
    DateType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from covid_lakehouse.defs.ads.settings import ARCHIVE_LOCATION, ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.defs.ads.warehouse import ADS, BATCHES, PENDING, ROW_VERSION_SEQ, ensure_tables
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource

log = logging.getLogger(__name__)

LOCK_KEY = 0x6164735F61726368  # "ads_arch": archive, restore and replay exclude each other
LOCK_WAIT = timedelta(seconds=30)
APPLICATION_NAME = "covid_lakehouse.ads"
BATCH_PROPERTY = "ads.archive-batch-id"
RESTORE_PROPERTY = "ads.restore-date"

# Test and operations hook, called with the name of the step just done: "planned", "chunk_written",
# "committed" (Iceberg), "verified", "deleted" (both inside the delete transaction), "restored".
Hook = Callable[[str], None]

ARCHIVE_SCHEMA = Schema(
    NestedField(1, "ad_id", StringType(), required=True),
    NestedField(2, "ad_group", StringType(), required=True),
    NestedField(3, "ad_campaign", IntegerType(), required=False),
    NestedField(4, "ad_campaign_raw", StringType(), required=True),
    NestedField(5, "ad_scheme_origin", StringType(), required=False),
    NestedField(6, "ad_scheme_approved", BooleanType(), required=False),
    NestedField(7, "shown_at", TimestamptzType(), required=True),
    NestedField(8, "shown_date", DateType(), required=True, doc="UTC date of shown_at; the partition"),
    NestedField(9, "backup_key", StringType(), required=True),
    NestedField(10, "loaded_at", TimestamptzType(), required=True),
    NestedField(11, "row_version", LongType(), required=True),
    NestedField(12, "batch_id", StringType(), required=True),
    NestedField(13, "archived_at", TimestamptzType(), required=True),
)
ARCHIVE_PARTITION = PartitionSpec(PartitionField(source_id=8, field_id=1000, transform=IdentityTransform(),
                                                 name="shown_date"))
_TS = pa.timestamp("us", tz="UTC")
# The same columns in Arrow, each carrying its Iceberg field id into the parquet files.
ARCHIVE_ARROW = pa.schema([
    pa.field("ad_id", pa.string(), nullable=False),
    pa.field("ad_group", pa.string(), nullable=False),
    pa.field("ad_campaign", pa.int32()),
    pa.field("ad_campaign_raw", pa.string(), nullable=False),
    pa.field("ad_scheme_origin", pa.string()),
    pa.field("ad_scheme_approved", pa.bool_()),
    pa.field("shown_at", _TS, nullable=False),
    pa.field("shown_date", pa.date32(), nullable=False),
    pa.field("backup_key", pa.string(), nullable=False),
    pa.field("loaded_at", _TS, nullable=False),
    pa.field("row_version", pa.int64(), nullable=False),
    pa.field("batch_id", pa.string(), nullable=False),
    pa.field("archived_at", _TS, nullable=False),
])
ARCHIVE_ARROW = pa.schema([f.with_metadata({"PARQUET:field_id": str(ARCHIVE_SCHEMA.find_field(f.name).field_id)})
                           for f in ARCHIVE_ARROW])
_ROW_FIELDS = ARCHIVE_ARROW.names[:-2]  # what PostgreSQL provides; the batch adds the last two
_CSV_READ = pacsv.ReadOptions(column_names=_ROW_FIELDS, block_size=4 << 20)
_CSV_PARSE = pacsv.ParseOptions(newlines_in_values=True)  # ad_campaign_raw is free text from the API
_CSV_CONVERT = pacsv.ConvertOptions(
    column_types={f.name: f.type for f in ARCHIVE_ARROW if f.name in _ROW_FIELDS},
    true_values=["t"], false_values=["f"], strings_can_be_null=True, quoted_strings_can_be_null=False)


_ALL_ROWS = AlwaysTrue()


class ArchiveError(dg.Failure):
    """The archive stopped before deleting anything it had not proven archived."""

    def __init__(self, description: str, metadata: dict | None = None):
        super().__init__(description=description, metadata=metadata or {})


class ArchiveBusyError(ArchiveError):
    pass


class ArchiveVerificationError(ArchiveError):
    pass


class ReconciliationError(ArchiveError):
    def __init__(self, batch_id: str, archived: int, deleted: int, kept: int):
        self.counts = {"archived_rows": archived, "deleted_rows": deleted, "kept_changed_rows": kept}
        super().__init__(
            f"archive batch {batch_id}: {archived} rows archived but {deleted} deleted + {kept} changed "
            "meanwhile; rows of the batch left ads.ads outside the archive. Nothing was deleted; "
            "investigate before marking the batch done", self.counts)


@dataclass(frozen=True)
class BatchReport:
    batch_id: str
    cutoff: datetime
    resumed: bool
    planned_rows: int
    archived_rows: int
    deleted_rows: int
    kept_rows: int  # changed after planning: the live version stays, the archive keeps the old one
    snapshot_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RestoreReport:
    day: date
    archived_rows: int  # copies of ads shown that day found in the archive
    restored_rows: int  # inserted into ads.ads
    removed_from_archive: int
    kept_in_archive: int  # older copies, or ads live again in ads.ads with a newer sighting


@dataclass(frozen=True)
class _Batch:
    batch_id: str
    cutoff: datetime
    created_at: datetime
    status: str
    planned_rows: int


@contextmanager
def exclusive_connection(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit session holding the ads advisory lock until it closes (also when the process
    dies: the server then ends the session and releases the lock)."""
    conn = psycopg.connect(dsn, autocommit=True, application_name=APPLICATION_NAME)
    try:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SET datestyle = 'ISO, YMD'")
        acquire_lock(conn, LOCK_WAIT)
        yield conn
    finally:
        conn.close()


def acquire_lock(conn: psycopg.Connection, wait: timedelta, *, transaction_level: bool = False) -> None:
    """Wait up to ``wait`` for the ads lock (a killed holder's session takes a moment to end)."""
    function = "pg_advisory_xact_lock" if transaction_level else "pg_advisory_lock"
    conn.execute(sql.SQL("SET {} lock_timeout = {}").format(
        sql.SQL("LOCAL") if transaction_level else sql.SQL(""), sql.Literal(f"{int(wait.total_seconds() * 1000)}ms")))
    try:
        conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(function)), (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        raise ArchiveBusyError(f"another ads archive, restore or replay held the lock for more than {wait}; "
                               "try again when it has finished") from None
    finally:
        if not transaction_level:
            conn.execute("RESET lock_timeout")


def ensure_archive_table(lakehouse: LakehouseResource):
    catalog = lakehouse.catalog()
    ident = lakehouse.identifier(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    catalog.create_namespace_if_not_exists(ARCHIVE_NAMESPACE)
    if catalog.table_exists(ident):
        return catalog.load_table(ident)
    try:
        return catalog.create_table(ident, schema=ARCHIVE_SCHEMA, partition_spec=ARCHIVE_PARTITION,
                                    location=ARCHIVE_LOCATION)
    except TableAlreadyExistsError:
        return catalog.load_table(ident)


def scan_batches(table: Table, row_filter: BooleanExpression = _ALL_ROWS,
                 selected_fields: tuple[str, ...] = ("*",)) -> Iterator[pa.RecordBatch]:
    """The table's rows matching ``row_filter``, one data file at a time (pyiceberg's own batch
    reader reads every file of the scan at once: memory would grow with the archive)."""
    scan = table.scan(row_filter=row_filter, selected_fields=selected_fields)
    reader = ArrowScan(table.metadata, table.io, scan.projection(), scan.row_filter)
    for task in scan.plan_files():
        yield from reader.to_record_batches([task])


# ---- archive ------------------------------------------------------------------------------------
def archive_old_rows(warehouse: PostgresResource, lakehouse: LakehouseResource, *, retention: timedelta,
                     now: datetime, chunk_rows: int = 100_000, hook: Hook | None = None) -> list[BatchReport]:
    """Finish an unfinished batch if there is one, then archive the rows shown before now - retention.
    Returns one report per batch processed (none when nothing is old enough)."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    hook = hook or _no_hook
    reports = []
    with exclusive_connection(warehouse.dsn) as conn:
        with conn.transaction():
            ensure_tables(conn)
        ensure_archive_table(lakehouse)
        unfinished = _open_batch(conn)
        if unfinished is not None:
            log.info("resuming archive batch %s (%s)", unfinished.batch_id, unfinished.status)
            reports.append(_run_batch(conn, lakehouse, unfinished, chunk_rows, hook, resumed=True))
        batch = _plan_batch(conn, cutoff=now - retention, now=now)
        if batch is not None:
            hook("planned")
            reports.append(_run_batch(conn, lakehouse, batch, chunk_rows, hook, resumed=False))
    return reports


def _no_hook(_step: str) -> None:
    return None


def _open_batch(conn: psycopg.Connection) -> _Batch | None:
    row = conn.execute(sql.SQL("SELECT batch_id::text, cutoff, created_at, status, planned_rows FROM {} "
                               "WHERE status <> 'done'").format(BATCHES)).fetchone()
    return _Batch(*row) if row else None


def _plan_batch(conn: psycopg.Connection, *, cutoff: datetime, now: datetime) -> _Batch | None:
    batch_id = str(uuid.uuid4())
    with conn.transaction():
        conn.execute(sql.SQL("INSERT INTO {} (batch_id, cutoff, created_at, status, planned_rows) "
                             "VALUES (%s, %s, %s, 'planned', 0)").format(BATCHES), (batch_id, cutoff, now))
        planned = conn.execute(sql.SQL("INSERT INTO {} (batch_id, ad_id, row_version) "
                                       "SELECT %s, ad_id, row_version FROM {} WHERE shown_at < %s").format(
            PENDING, ADS), (batch_id, cutoff)).rowcount
        if planned == 0:
            raise psycopg.Rollback()  # nothing old enough: leave no empty batch behind
        conn.execute(sql.SQL("UPDATE {} SET planned_rows = %s WHERE batch_id = %s").format(BATCHES),
                     (planned, batch_id))
        conn.execute(sql.SQL("ANALYZE {}").format(PENDING))  # fresh statistics: the joins below are hash joins
    if planned == 0:
        return None
    log.info("archive batch %s planned: %d rows shown before %s", batch_id, planned, cutoff.isoformat())
    return _Batch(batch_id, cutoff, now, "planned", planned)


def _run_batch(conn: psycopg.Connection, lakehouse: LakehouseResource, batch: _Batch, chunk_rows: int,
               hook: Hook, *, resumed: bool) -> BatchReport:
    snapshots = _batch_snapshots(lakehouse, batch.batch_id)
    if batch.status == "planned":
        if snapshots:
            log.info("archive batch %s is already in the archive (snapshots %s): not appending again",
                     batch.batch_id, list(snapshots))
        else:
            _write_batch(conn, lakehouse, batch, chunk_rows, hook)
            snapshots = _batch_snapshots(lakehouse, batch.batch_id)
        hook("committed")
        conn.execute(sql.SQL("UPDATE {} SET status = 'committed', snapshot_ids = %s WHERE batch_id = %s").format(
            BATCHES), (",".join(map(str, snapshots)), batch.batch_id))
    return _verify_and_delete(conn, lakehouse, batch, snapshots, hook, resumed=resumed)


def _batch_snapshots(lakehouse: LakehouseResource, batch_id: str) -> dict[int, int]:
    """{snapshot_id: records added} of the batch's snapshots in the table's current lineage."""
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    found: dict[int, int] = {}
    snapshot = table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary
        if summary is not None and summary.get(BATCH_PROPERTY) == batch_id:
            found[snapshot.snapshot_id] = int(summary.get("added-records", 0))
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return dict(sorted(found.items()))


def _write_batch(conn: psycopg.Connection, lakehouse: LakehouseResource, batch: _Batch, chunk_rows: int,
                 hook: Hook) -> None:
    """Write the batch's rows as parquet files (one per chunk and shown date) under the table's data
    location, then register them all in ONE snapshot tagged with the batch id. A crash before that
    commit leaves the table unchanged (only unreferenced files, named per attempt, behind)."""
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    attempt = uuid.uuid4().hex[:8]
    data_files = []
    for chunk in _planned_rows(conn, batch.batch_id, chunk_rows):
        for day, rows in _split_by_day(_with_batch_columns(chunk, batch)):
            path = f"{table.location()}/data/shown_date={day}/{batch.batch_id}-{attempt}-{len(data_files):05d}.parquet"
            with table.io.new_output(path).create(overwrite=True) as stream:
                pq.write_table(rows, stream, compression="zstd")
            # Reads the footer back: the file landed, and Iceberg gets its statistics and partition.
            data_files.append(parquet_file_to_data_file(table.io, table.metadata, path))
        hook("chunk_written")
    if not data_files:
        return
    with table.transaction() as tx, tx.update_snapshot(
            snapshot_properties={BATCH_PROPERTY: batch.batch_id}).fast_append() as append:
        for data_file in data_files:
            append.append_data_file(data_file)
    log.info("archive batch %s: %d of %d planned rows appended to %s.%s in %d files", batch.batch_id,
             sum(f.record_count for f in data_files), batch.planned_rows, ARCHIVE_NAMESPACE, ARCHIVE_TABLE,
             len(data_files))


def _split_by_day(rows: pa.Table) -> Iterator[tuple[date, pa.Table]]:
    """(shown_date, rows of that date): a data file must hold one partition."""
    rows = rows.take(pc.sort_indices(rows, [("shown_date", "ascending")]))
    start = 0
    for item in pc.value_counts(rows["shown_date"]):
        count = item["counts"].as_py()
        yield item["values"].as_py(), rows.slice(start, count)
        start += count


def _planned_rows(conn: psycopg.Connection, batch_id: str, chunk_rows: int) -> Iterator[pa.Table]:
    """The batch's rows still at their planned version, ``chunk_rows`` at a time: one COPY TO streamed
    through pyarrow's CSV reader, so memory holds about one chunk. Ordered by shown date, so a chunk
    spans one or two partitions (Iceberg splits a chunk by partition, at a cost per partition)."""
    query = sql.SQL(
        "COPY (SELECT a.ad_id, a.ad_group, a.ad_campaign, a.ad_campaign_raw, a.ad_scheme_origin, "
        "a.ad_scheme_approved, a.shown_at, (a.shown_at AT TIME ZONE 'UTC')::date AS shown_date, a.backup_key, "
        "a.loaded_at, a.row_version FROM {pending} p "
        "JOIN {ads} a ON a.ad_id = p.ad_id AND a.row_version = p.row_version "
        "WHERE p.batch_id = %s ORDER BY shown_date) TO STDOUT (FORMAT csv)").format(pending=PENDING, ads=ADS)
    with conn.cursor() as cur, cur.copy(query, (batch_id,)) as copy:
        stream = io.BufferedReader(_CopyStream(copy), 1 << 20)
        if not stream.peek(1):
            return
        reader = pacsv.open_csv(stream, read_options=_CSV_READ, parse_options=_CSV_PARSE,
                                convert_options=_CSV_CONVERT)
        buffered: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            buffered.append(batch)
            rows += batch.num_rows
            while rows >= chunk_rows:
                table = pa.Table.from_batches(buffered)
                yield table.slice(0, chunk_rows)
                rest = table.slice(chunk_rows)
                buffered, rows = rest.to_batches(), rest.num_rows
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


def _with_batch_columns(chunk: pa.Table, batch: _Batch) -> pa.Table:
    n = chunk.num_rows
    columns = [*chunk.columns, pa.array([batch.batch_id] * n, pa.string()),
               pa.array([batch.created_at] * n, _TS)]
    return pa.Table.from_arrays(columns, schema=ARCHIVE_ARROW)


def _verify_and_delete(conn: psycopg.Connection, lakehouse: LakehouseResource, batch: _Batch,
                       snapshots: dict[int, int], hook: Hook, *, resumed: bool) -> BatchReport:
    table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
    recorded = sum(snapshots.values())
    verified = sql.Identifier("ads_archive_verified")
    with conn.transaction():
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (ad_id uuid NOT NULL, row_version bigint NOT NULL) "
                             "ON COMMIT DROP").format(verified))
        # Read back from the committed table, not from what this process thinks it wrote.
        PostgresResource.copy_arrow(conn, verified, scan_batches(table, EqualTo("batch_id", batch.batch_id),
                                                                 ("ad_id", "row_version")),
                                    columns=["ad_id", "row_version"])
        conn.execute(sql.SQL("ANALYZE {}").format(verified))
        read_back, distinct, unplanned = conn.execute(sql.SQL(
            "SELECT count(*), count(DISTINCT v.ad_id), count(*) FILTER (WHERE p.ad_id IS NULL) FROM {verified} v "
            "LEFT JOIN {pending} p ON p.batch_id = %s AND p.ad_id = v.ad_id AND p.row_version = v.row_version"
        ).format(pending=PENDING, verified=verified), (batch.batch_id,)).fetchone()
        if read_back != recorded or distinct != read_back or unplanned:
            raise ArchiveVerificationError(
                f"archive batch {batch.batch_id}: read back {read_back} rows ({distinct} distinct ads, "
                f"{unplanned} not planned) but its snapshots recorded {recorded}; nothing was deleted",
                {"read_back": read_back, "distinct": distinct, "unplanned": unplanned, "recorded": recorded})
        hook("verified")
        deleted = conn.execute(sql.SQL("DELETE FROM {ads} a USING {verified} v "
                                       "WHERE a.ad_id = v.ad_id AND a.row_version = v.row_version").format(
            ads=ADS, verified=verified)).rowcount
        kept = conn.execute(sql.SQL("SELECT count(*) FROM {verified} v JOIN {ads} a ON a.ad_id = v.ad_id").format(
            verified=verified, ads=ADS)).fetchone()[0]
        if deleted + kept != read_back:
            raise ReconciliationError(batch.batch_id, read_back, deleted, kept)
        hook("deleted")
        conn.execute(sql.SQL("UPDATE {} SET status = 'done', archived_rows = %s, deleted_rows = %s, kept_rows = %s, "
                             "snapshot_ids = %s, finished_at = now() WHERE batch_id = %s").format(BATCHES),
                     (read_back, deleted, kept, ",".join(map(str, snapshots)), batch.batch_id))
        conn.execute(sql.SQL("TRUNCATE {}").format(PENDING))  # it only ever holds the one open batch
    log.info("archive batch %s done: %d archived, %d deleted, %d kept (changed meanwhile)", batch.batch_id,
             read_back, deleted, kept)
    return BatchReport(batch.batch_id, batch.cutoff, resumed, batch.planned_rows, read_back, deleted, kept,
                       list(snapshots))


# ---- restore ------------------------------------------------------------------------------------
def restore_date(warehouse: PostgresResource, lakehouse: LakehouseResource, day: date, *,
                 hook: Hook | None = None) -> RestoreReport:
    """Move the ads shown on ``day`` (UTC) from the archive back into ads.ads. Idempotent.

    Per ad_id the newest archived copy is inserted (new row_version, original loaded_at) unless the
    ad is live again in ads.ads. Then every archived copy whose sighting (backup_key) is the live
    row's is deleted from the archive's current snapshot, after the PostgreSQL insert committed; a
    crash in between is repaired by the next call. Older copies and ads seen again since stay in the
    archive as history."""
    hook = hook or _no_hook
    with exclusive_connection(warehouse.dsn) as conn:
        with conn.transaction():
            ensure_tables(conn)
        unfinished = _open_batch(conn)
        if unfinished is not None:
            raise ArchiveBusyError(f"archive batch {unfinished.batch_id} is unfinished ({unfinished.status}); "
                                   "run the ad_archive job to finish it before restoring")
        if not lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
            return RestoreReport(day, 0, 0, 0, 0)
        table = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE)
        on_day = EqualTo("shown_date", day.isoformat())
        staging = sql.Identifier("ads_restore")
        with conn.transaction():
            conn.execute(sql.SQL(
                "CREATE TEMP TABLE {} (ad_id text, ad_group text, ad_campaign integer, ad_campaign_raw text, "
                "ad_scheme_origin text, ad_scheme_approved boolean, shown_at timestamptz, shown_date date, "
                "backup_key text, loaded_at timestamptz, row_version bigint, batch_id text, "
                "archived_at timestamptz) ON COMMIT DROP").format(staging))
            archived = PostgresResource.copy_arrow(conn, staging, scan_batches(table, on_day),
                                                   columns=ARCHIVE_ARROW.names)
            restored = conn.execute(sql.SQL(
                "INSERT INTO {ads} (ad_id, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, "
                "ad_scheme_approved, shown_at, backup_key, loaded_at, row_version) "
                "SELECT ad_id::uuid, ad_group, ad_campaign, ad_campaign_raw, ad_scheme_origin, ad_scheme_approved, "
                "shown_at, backup_key, loaded_at, nextval({seq}) FROM ("
                "SELECT DISTINCT ON (ad_id) * FROM {staging} ORDER BY ad_id, archived_at DESC, row_version DESC) latest "
                "ON CONFLICT (ad_id) DO NOTHING").format(ads=ADS, seq=sql.Literal(ROW_VERSION_SEQ),
                                                          staging=staging)).rowcount
            to_remove = [v for (v,) in conn.execute(sql.SQL(
                "SELECT r.row_version FROM {staging} r JOIN {ads} a "
                "ON a.ad_id = r.ad_id::uuid AND a.backup_key = r.backup_key").format(staging=staging, ads=ADS))]
        hook("restored")
        if to_remove:
            moved = And(on_day, In("row_version", to_remove))
            table.delete(moved, snapshot_properties={RESTORE_PROPERTY: day.isoformat()})
            left = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).scan(
                row_filter=moved, selected_fields=("row_version",)).to_arrow().num_rows
            if left:
                raise ArchiveError(f"restore {day}: {left} restored rows are still in the archive after the "
                                   "delete; run the restore again")
    log.info("restore %s: %d archived copies, %d restored, %d removed from the archive", day, archived,
             restored, len(to_remove))
    return RestoreReport(day, archived, restored, len(to_remove), archived - len(to_remove))


def archived_row_count(lakehouse: LakehouseResource) -> int:
    """Rows in the archive's current snapshot (0 when the table does not exist yet)."""
    if not lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        return 0
    snapshot = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).current_snapshot()
    return int(snapshot.summary.get("total-records", 0)) if snapshot and snapshot.summary else 0

