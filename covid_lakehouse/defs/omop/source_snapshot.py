"""The provider source extract, incremental by row hashes per source id (issue #18).

Every extract also yields each row's 64-bit hash, computed by PostgreSQL in the COPY query itself
(``hashtextextended(row(<the extracted columns>)::text, 0)``), so the extract file already is the
snapshot kept in the tenant's state table ``source_row`` (PROVIDER_SOURCE + source_row_hash, one
overwrite commit, with an identity: this module's version, the extracted columns' names and types,
the server's major version, the parse schema).

A rerun, in ONE read-only REPEATABLE READ transaction on the source: COPY ``(provider_id, hash)`` of
every row (streamed into a parquet file), compare in DuckDB with the snapshot's, COPY only the rows
whose hash is new or changed (``provider_id = ANY(...)`` in batches); ids gone from the source drop
out. The unchanged rows come from the snapshot, as a full extract parsed them (NULL and '' kept
apart: row text prints NULL as nothing and '' as ""), so the reconstructed file is the source a full
extract would have given (in another row order: the transform orders by keys, never by file order).

Why the snapshot may run ahead of the published outputs: it is a cache of SOURCE rows, each stored
with the hash PostgreSQL computed of exactly those values in the same statement, never a record of
what was published (that is previous provenance and the run log). A run that commits it and then
fails to publish leaves a snapshot that still tells true rows from changed ones: the next run
reconstructs the current source from it exactly and rebuilds every output.

A full extract instead (the reason in the step's log and metadata): no snapshot, the run's
``full_refresh`` config, a different identity, provider_id NULL or repeated (in the source or the
snapshot: rows could not be matched by id), or more than MAX_CHANGED_SHARE of the rows new or
changed (one full COPY is then cheaper than the listing plus the fetch; the setting
OMOP_INCREMENTAL_EXTRACT_MAX_SHARE, 0 for the plain full COPY without hashes or snapshot). Two different rows with the
same hash (odds about 2^-64 per changed row) would be taken as unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.extract import (
    PROVIDER_SOURCE,
    csv_to_parquet,
    extract_parquet,
    lock_for_read,
    source_connection,
    source_errors,
)
from covid_lakehouse.defs.omop.tenants import Tenant
from covid_lakehouse.defs.omop.transform.session import connect, quoted, scalar
from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import copy_out, copy_out_sql, table_ident
from covid_lakehouse.lib.settings import SettingError, setting

# Bump when what a snapshot row means changes (every tenant's next run then extracts in full).
VERSION = 1
# The source_row commit's summary entry holding the snapshot's identity.
IDENTITY_PROPERTY = "omop.source-row-identity"
# Above this share of new or changed rows a full COPY is cheaper than listing the hashes and fetching.
MAX_CHANGED_SHARE = setting(
    "OMOP_INCREMENTAL_EXTRACT_MAX_SHARE", "the share (0 to 1) of a tenant's provider rows new or changed above which "
    "its extract is one full COPY rather than a listing of row hashes plus the changed rows; 0: always the plain full "
    "COPY, no row hashes and no snapshot kept (the default: where the source database is as near as the lakehouse, "
    "hashing every row costs about what a full COPY does; 0.25 for sources across a network, where only the change "
    "then crosses it)", default="0", scope="omop")
# provider_ids per fetching COPY (bounds the statement's size).
ID_BATCH = 50_000
TABLE = "provider"
ID, HASH = "provider_id", tables.SOURCE_ROW_HASH
ID_HASH = pa.schema([(ID, pa.int64()), (HASH, pa.int64())])

_COLUMNS = """
select a.attname, format_type(a.atttypid, a.atttypmod)
from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s and a.attname = any(%s) and a.attnum > 0 and not a.attisdropped
order by a.attname
"""


@dataclass(frozen=True)
class SourceExtract:
    path: Path  # the extract (tables.SOURCE_ROW) build_providers scans, and the next snapshot
    mode: str  # full | incremental
    reason: str  # why a full extract ("" when incremental)
    identity: str
    rows: int
    fetched: int  # rows COPYed from the source
    reused: int  # rows taken from the snapshot
    deleted: int  # snapshot rows gone from the source
    snapshot_current: bool  # the stored snapshot already equals this extract: nothing to write
    compressed: bool = False  # the file is stored as it is (else a compressed copy is)

    def metadata(self) -> dict[str, object]:
        return {"extract_mode": self.mode, "extract_full_reason": self.reason or "none",
                "source_rows_fetched": self.fetched, "source_rows_reused": self.reused,
                "source_rows_deleted": self.deleted}

    def describe(self) -> str:
        if self.mode == "full":
            return f"full extract ({self.reason}): {self.rows} row(s)"
        return (f"incremental extract: {self.fetched} row(s) fetched, {self.reused} reused from the snapshot, "
                f"{self.deleted} deleted")


def _columns() -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(name) for name in PROVIDER_SOURCE.names)


def _hash() -> sql.Composed:
    return sql.SQL("hashtextextended(row({})::text, 0)").format(_columns())


def _copy(conn: psycopg.Connection, query: sql.Composable, sink: IO[bytes], params=None) -> None:
    with conn.cursor().copy(copy_out_sql(sql.SQL("({})").format(query)), params) as copy:
        copy_out(copy, sink)


def source_columns(conn: psycopg.Connection, tenant: Tenant) -> dict[str, str]:
    """The extracted columns' types in the source (name -> type with its modifier)."""
    return dict(conn.execute(_COLUMNS, (tenant.source_schema, TABLE, PROVIDER_SOURCE.names)).fetchall())


def identity(conn: psycopg.Connection, columns: dict[str, str]) -> str:
    """What a snapshot's rows and hashes depend on besides the data (``columns``: source_columns): a
    snapshot of another identity is not trusted (a column retyped prints its values differently,
    another server version may hash differently, another parse schema reads the CSV differently)."""
    columns = sorted(columns.items())
    server = conn.execute("select current_setting('server_version_num')::int / 10000").fetchone()[0]
    parts = {"version": VERSION, "columns": [list(c) for c in columns], "server_major": server,
             "parse_schema": str(tables.SOURCE_ROW)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# Types whose values the fetch's ``provider_id = any(%s::bigint[])`` can match (another type, say text
# holding digits, extracts in full: it parses as a number, but the comparison would fail).
INTEGER_ID_TYPES = ("smallint", "integer", "bigint")
# Whether provider_id leads a valid index: then the fetch looks ids up a batch at a time, else each
# batch would scan the whole table, and all of them go in one statement (one scan, the ids hashed).
_ID_INDEXED = """
select exists (
    select 1 from pg_index i join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace
    join pg_attribute a on a.attrelid = c.oid and a.attnum = i.indkey[0]
    where n.nspname = %s and c.relname = %s and a.attname = %s and i.indisvalid)
"""


def fetch_batch_size(conn: psycopg.Connection, tenant: Tenant, wanted: int) -> int:
    """provider_ids per fetching COPY: ID_BATCH where an index finds them, else all ``wanted`` at once."""
    indexed = conn.execute(_ID_INDEXED, (tenant.source_schema, TABLE, ID)).fetchone()[0]
    return ID_BATCH if indexed else max(wanted, 1)


@contextmanager
def _source_snapshot(tenant: Tenant) -> Iterator[psycopg.Connection]:
    """One read-only REPEATABLE READ transaction: every statement of the extract sees one snapshot.
    Its first statement locks the table (ACCESS SHARE, what a SELECT takes anyway) before the snapshot
    is taken: TRUNCATE is not MVCC-safe, so a snapshot taken before a concurrent TRUNCATE + reload
    commits would see the table empty, and the run would publish every provider as deleted."""
    with source_errors(tenant, TABLE), source_connection(tenant) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            lock_for_read(conn, tenant.source_schema, TABLE)
            yield conn


def max_changed_share() -> float:
    share = MAX_CHANGED_SHARE.number(minimum=0)
    if share > 1:
        raise SettingError(f"{MAX_CHANGED_SHARE.name} must be at most 1, got {share:g}: {MAX_CHANGED_SHARE.doc}")
    return share


def stored_identity(lakehouse: LakehouseResource, namespace: str) -> str | None:
    """The identity of the tenant's stored snapshot; None when there is none."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        snapshot = lakehouse.load_table(namespace, tables.T_SOURCE_ROW).current_snapshot()
    except NoSuchTableError:
        return None
    return snapshot.summary.get(IDENTITY_PROPERTY) if snapshot is not None else None


def extract_provider(tenant: Tenant, lakehouse: LakehouseResource, scratch: Path, *,
                     full_refresh: bool = False) -> SourceExtract:
    """The tenant's provider source as the parquet file build_providers scans (with each row's
    hash), incrementally from the stored snapshot when it can be trusted, else in full."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "provider.parquet"
    share = max_changed_share()
    if not share:  # off: the plain extract, nothing kept for the next run
        extract_parquet(tenant, TABLE, PROVIDER_SOURCE, path)
        rows = pq.read_metadata(path).num_rows
        return SourceExtract(path, "full", f"{MAX_CHANGED_SHARE.name}=0", "", rows, rows, 0, 0, True)
    target = table_ident(tenant.source_schema, TABLE)
    stored = None if full_refresh else stored_identity(lakehouse, tenant.namespace)
    # Read from S3 before the source transaction opens: it holds no snapshot (nor lock) meanwhile.
    snapshot_files = [] if stored is None else lakehouse.materialize(tenant.namespace, tables.T_SOURCE_ROW,
                                                                      scratch / "snapshot")
    with _source_snapshot(tenant) as conn:
        columns = source_columns(conn, tenant)
        current = identity(conn, columns)

        def full(reason: str) -> SourceExtract:
            query = sql.SQL("select {}, {} from {}").format(_columns(), _hash(), target)
            csv_to_parquet(lambda sink: _copy(conn, query, sink), tables.SOURCE_ROW, path, name="omop-copy-provider")
            rows = pq.read_metadata(path).num_rows
            return SourceExtract(path, "full", reason, current, rows, rows, 0, 0, False)

        if full_refresh:
            return full("full_refresh")
        if stored is None:
            return full("no snapshot")
        if stored != current:
            return full("source columns, server version or snapshot version differ from the snapshot's")
        id_type = columns.get(ID)
        if id_type not in INTEGER_ID_TYPES:
            return full(f"provider_id is {id_type}, not an integer: rows cannot be fetched by it")
        if not snapshot_files:  # an empty source last time: every row is new now
            return full("empty snapshot")
        hashes = scratch / "hashes.parquet"
        csv_to_parquet(lambda sink: _copy(conn, sql.SQL("select {}, {} from {}").format(
            sql.Identifier(ID), _hash(), target), sink), ID_HASH, hashes, name="omop-copy-provider-hashes")
        con = connect()
        try:
            con.read_parquet(str(hashes)).create_view("cur")
            names = ", ".join(quoted(name) for name in tables.SOURCE_ROW.names)
            con.read_parquet([str(f) for f in snapshot_files]).select(names).create_view("snap")
            for side in ("cur", "snap"):
                rows, ids, distinct = con.execute(
                    f"SELECT count(*), count({ID}), count(DISTINCT {ID}) FROM {side}").fetchone()
                if not rows == ids == distinct:
                    where = "the source" if side == "cur" else "the snapshot"
                    return full(f"provider_id NULL or repeated in {where}")
            rows = scalar(con, "SELECT count(*) FROM cur")
            con.execute(f"CREATE TABLE fetch_ids AS SELECT c.{ID} FROM cur c ANTI JOIN snap s "
                        f"ON s.{ID} = c.{ID} AND s.{HASH} = c.{HASH}")
            wanted = con.execute(f"SELECT {ID} FROM fetch_ids ORDER BY 1").fetchnumpy()[ID]
            if len(wanted) > share * rows:
                return full(f"{len(wanted)} of {rows} row(s) new or changed (over {share:.0%})")
            deleted = scalar(con, f"SELECT count(*) FROM snap s ANTI JOIN cur c ON c.{ID} = s.{ID}")
            fetched = scratch / "fetched.parquet"
            query = sql.SQL("select {}, {} from {} where {} = any(%s::bigint[])").format(
                _columns(), _hash(), target, sql.Identifier(ID))

            batch = fetch_batch_size(conn, tenant, len(wanted))

            def fetch(sink: IO[bytes]) -> None:
                for start in range(0, len(wanted), batch):
                    _copy(conn, query, sink, (wanted[start:start + batch].tolist(),))

            csv_to_parquet(fetch, tables.SOURCE_ROW, fetched, name="omop-copy-provider-changed")
            con.read_parquet(str(fetched)).select(names).create_view("fetched")
            con.sql(f"SELECT s.* FROM snap s SEMI JOIN cur c ON c.{ID} = s.{ID} AND c.{HASH} = s.{HASH} "
                    "UNION ALL SELECT * FROM fetched").write_parquet(str(path), compression="zstd")
            written = pq.read_metadata(path).num_rows
            got = pq.read_metadata(fetched).num_rows
            if written != rows or got != len(wanted):  # one transaction: the listing and the fetch agree
                raise RuntimeError(f"tenant {tenant.name!r}, source table {tenant.source_schema}.{TABLE}: incremental extract rebuilt {written} of {rows} row(s) "
                                   f"({got} of {len(wanted)} fetched)")
        finally:
            con.close()
    return SourceExtract(path, "incremental", "", current, rows, len(wanted), rows - len(wanted), deleted,
                         snapshot_current=not len(wanted) and not deleted, compressed=True)


def store(lakehouse: LakehouseResource, namespace: str, extract: SourceExtract) -> bool:
    """Commit the extract as the tenant's snapshot (one overwrite), unless it already is. Compressed
    first (the extract is written plain for the transform): a third of the bytes to upload now and to
    read back next run, where the plain file's transfers cost more than the compression (measured).

    False when another run of the tenant committed a snapshot meanwhile: that one is kept (a snapshot
    is a cache of true source rows, whichever run read them), and this run goes on publishing."""
    if extract.snapshot_current:
        return True
    if extract.compressed:  # DuckDB wrote it (incremental): compressed at once, on every core
        return _publish(lakehouse, namespace, extract.path, extract.identity)
    packed = extract.path.with_name("snapshot.parquet")
    con = connect()
    try:
        con.execute("SET threads = 1")  # runs beside the transform: leave it the other cores
        con.read_parquet(str(extract.path)).write_parquet(str(packed), compression="zstd")
    finally:
        con.close()
    try:
        return _publish(lakehouse, namespace, packed, extract.identity)
    finally:
        packed.unlink(missing_ok=True)


def _publish(lakehouse: LakehouseResource, namespace: str, path: Path, identity: str) -> bool:
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    try:
        for _ in lakehouse.publish_files(namespace, tables.T_SOURCE_ROW, [path], tables.SOURCE_ROW,
                                         snapshot_properties={IDENTITY_PROPERTY: identity}):
            pass  # no audits: state, validated by the next run (identity, ids, counts)
    # A concurrent run's snapshot won (pyiceberg retries the commit once the table moved, and its
    # overwrite validation then refuses files another commit added): that one is as good as this one.
    except (CommitFailedException, ValidationException):
        return False
    return True
