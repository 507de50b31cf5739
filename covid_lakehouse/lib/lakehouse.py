"""The lakehouse: Apache Iceberg tables (parquet on S3) with a pyiceberg SQL catalog in PostgreSQL.

Publishing is write-audit-publish through Iceberg's own atomicity: data files are written inside an
open transaction, audits run on exactly the staged rows, and the snapshot is committed only when they
pass. Readers always see a whole snapshot, the new one or the previous one.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pyarrow as pa

from covid_lakehouse.lib.postgres import validate_identifier
from covid_lakehouse.lib.wap import Audit, audit_or_raise

_CATALOGS: dict[tuple, Any] = {}
_FILE_IOS: dict[tuple, Any] = {}
_STAGING_FS: dict[tuple, Any] = {}
_CATALOGS_LOCK = threading.Lock()


@lru_cache(maxsize=16)
def secret_digest(secret: str) -> str:
    """A secret's SHA-256, once per secret and process (every catalog() call builds a cache key)."""
    return hashlib.sha256(secret.encode()).hexdigest()


# materialize: copies of a table's data files running at once, and the bytes each holds at a time.
MATERIALIZE_THREADS = 4
MATERIALIZE_CHUNK = 8 << 20


class _CopyStopped(Exception):
    """A materialize copy ended because another copy of the same call failed."""


class MaterializeRefused(ValueError):
    """A table whose files cannot be read as they are by column name (LakehouseResource.materialize)."""


def _refuse_names_reused(tbl, label: str) -> None:
    """Refuse a table one of whose column names ever belonged to another field (renamed, or dropped and
    added again): its older files carry the old names, so a reader by name would take wrong values."""
    current = {field.field_id: field.name for field in tbl.schema().fields}
    for schema in tbl.metadata.schemas:
        for field in schema.fields:
            if field.field_id in current and current[field.field_id] != field.name:
                raise MaterializeRefused(f"{label}: column {current[field.field_id]!r} was renamed from "
                                         f"{field.name!r}; its older files cannot be read by name")
            if field.field_id not in current and field.name in current.values():
                raise MaterializeRefused(f"{label}: column {field.name!r} was dropped and added again; its "
                                         "older files hold the dropped column's values under that name")


class LakehouseResource(dg.ConfigurableResource):
    catalog_dsn: str
    warehouse: str = "s3://lakehouse/warehouse"
    s3_endpoint_url: str
    aws_access_key_id: str
    aws_secret_access_key: str
    region: str = "us-east-1"
    catalog_name: str = "covid_lakehouse"


    @classmethod
    def from_env(cls) -> LakehouseResource:
        return cls(
            catalog_dsn=dg.EnvVar("LAKEHOUSE_CATALOG_DSN"),
            warehouse=dg.EnvVar("LAKEHOUSE_WAREHOUSE"),
            s3_endpoint_url=dg.EnvVar("S3_ENDPOINT_URL"),
            aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
        )

    @classmethod
    def from_settings(cls, settings) -> LakehouseResource:
        """Outside Dagster (CLI, scripts), where EnvVar values are not resolved."""
        return cls(catalog_dsn=settings.lakehouse_catalog_dsn, warehouse=settings.lakehouse_warehouse,
                   s3_endpoint_url=settings.s3_endpoint_url, aws_access_key_id=settings.aws_access_key_id,
                   aws_secret_access_key=settings.aws_secret_access_key, region=settings.aws_region)

    def _cache_key(self) -> tuple:
        """What a cached catalog, FileIO and staging filesystem are shared under: one per process and
        configuration, credentials included (two resources with different keys never share a client);
        the secret only as a digest, kept in memory. Built on each call from the fields (a copy with
        other credentials, even by model_copy, gets its own key); the digest is memoised per secret."""
        return (self.catalog_name, self.catalog_dsn, self.warehouse, self.s3_endpoint_url, self.region,
                self.aws_access_key_id, secret_digest(self.aws_secret_access_key or ""))

    def catalog(self):
        from pyiceberg.catalog.sql import SqlCatalog

        from covid_lakehouse.lib.settings import sqlalchemy_url

        cache_key = self._cache_key()
        with _CATALOGS_LOCK:
            if cache_key not in _CATALOGS:
                _CATALOGS[cache_key] = SqlCatalog(
                    self.catalog_name,
                    uri=sqlalchemy_url(self.catalog_dsn),
                    warehouse=self.warehouse,
                    **{
                        "s3.endpoint": self.s3_endpoint_url,
                        "s3.access-key-id": self.aws_access_key_id,
                        "s3.secret-access-key": self.aws_secret_access_key,
                        "s3.region": self.region,
                        "s3.force-virtual-addressing": False,
                    },
                )
            return _CATALOGS[cache_key]

    def file_io(self):
        """One FileIO per process and catalog for the files publish_files stages (a loaded table brings a
        new one, and with it new S3 connections; the commit still writes through the loaded table's)."""
        from pyiceberg.io import load_file_io

        catalog = self.catalog()
        cache_key = self._cache_key()
        with _CATALOGS_LOCK:
            if cache_key not in _FILE_IOS:
                _FILE_IOS[cache_key] = load_file_io(catalog.properties, self.warehouse)
            return _FILE_IOS[cache_key]

    def staging_filesystem(self):
        """The S3 filesystem publish_files copies staged files through, one per process and catalog.
        Without background writes: with them (pyiceberg's FileIO default) a copy from local disk
        outruns the upload and every part still uploading waits in memory, so memory grew with the file
        (a 400 MB file held ~300 MB of Arrow buffers, measured); this way one part at a time."""
        from covid_lakehouse.lib.s3 import LakeS3Resource

        cache_key = self._cache_key()
        with _CATALOGS_LOCK:
            if cache_key not in _STAGING_FS:
                _STAGING_FS[cache_key] = LakeS3Resource(
                    endpoint_url=self.s3_endpoint_url, aws_access_key_id=self.aws_access_key_id,
                    aws_secret_access_key=self.aws_secret_access_key, region_name=self.region,
                ).arrow_filesystem(background_writes=False)
            return _STAGING_FS[cache_key]

    @staticmethod
    def identifier(namespace: str, table: str) -> tuple[str, str]:
        return (validate_identifier(namespace, what="lakehouse namespace"), validate_identifier(table, what="lakehouse table"))

    def load_table(self, namespace: str, table: str):
        return self.catalog().load_table(self.identifier(namespace, table))

    def table_exists(self, namespace: str, table: str) -> bool:
        return self.catalog().table_exists(self.identifier(namespace, table))

    def read(self, namespace: str, table: str, row_filter: str | None = None) -> pa.Table:
        tbl = self.load_table(namespace, table)
        return (tbl.scan(row_filter=row_filter) if row_filter else tbl.scan()).to_arrow()

    def materialize(self, namespace: str, table: str, directory: Path) -> list[Path]:
        """The data files of the table's current snapshot, copied as they are into ``directory`` (a
        streamed copy, one chunk at a time: memory stays the same however large the table); none when
        the table does not exist or has no rows. For readers (DuckDB) that scan the files themselves:
        pyiceberg's readers hold a whole table, or every file's batches at once, in memory. The files
        are read by column name (they may carry no field ids; an older one may lack a column added
        since), so a table whose snapshot has delete files (never written here), or whose columns were
        ever renamed or dropped and added again, is refused (MaterializeRefused): read by name, its
        older files would give wrong values without an error. The files are copied MATERIALIZE_THREADS at a
        time, returned in the manifest's order; a failed copy stops the others and leaves none of them behind."""
        from pyiceberg.exceptions import NoSuchTableError

        try:
            tbl = self.load_table(namespace, table)
        except NoSuchTableError:
            return []
        if tbl.current_snapshot() is None:
            return []
        label = f"lakehouse table {namespace}.{table}"
        _refuse_names_reused(tbl, label)
        tasks = list(tbl.scan().plan_files())
        if any(task.delete_files for task in tasks):
            raise MaterializeRefused(f"{label}: its current snapshot has delete files (row-level deletes), which "
                                     "materialize cannot apply; rewrite the table first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Named and returned in the manifest's order, whatever order the copies finish in.
        copies = [(directory / f"{table}-{number:05d}.parquet", task.file.file_path)
                  for number, task in enumerate(t for t in tasks if t.file.record_count)]
        snapshot_id = tbl.current_snapshot().snapshot_id
        stop = threading.Event()  # set on the first failure: the other copies end at their next chunk

        def copy(path: Path, file_path: str) -> None:
            if stop.is_set():
                raise _CopyStopped
            scheme, _, key = file_path.partition("://")
            try:
                with (self.staging_filesystem().open_input_stream(key) if scheme in ("s3", "s3a")
                      else tbl.io.new_input(file_path).open()) as source, path.open("wb") as target:
                    while chunk := source.read(MATERIALIZE_CHUNK):
                        if stop.is_set():
                            raise _CopyStopped
                        target.write(chunk)
            except FileNotFoundError as err:
                raise RuntimeError(
                    f"{label}: data file {file_path} of snapshot {snapshot_id} vanished while it was copied (a "
                    "newer snapshot replaced it and maintenance removed its files); a retry reads the current "
                    "snapshot") from err

        # A table's files are many (landing_row gains one per run): a few copies at a time, each waiting on
        # S3 rather than the CPU; bounded, since the omop step already materializes four tables at once.
        try:
            with ThreadPoolExecutor(max_workers=MATERIALIZE_THREADS, thread_name_prefix="materialize") as pool:
                futures = [pool.submit(copy, path, file_path) for path, file_path in copies]
                try:
                    for future in as_completed(futures):
                        if future.exception() is not None:
                            stop.set()
                except BaseException:
                    stop.set()  # interrupted: the pool's exit waits for the copies, which stop at once
                    raise
            errors = [f.exception() for f in futures if f.exception() is not None]
            failures = [err for err in errors if not isinstance(err, _CopyStopped)]
            if errors:
                raise (failures or errors)[0]
        except BaseException:
            # Every copy has ended (the pool's exit waited for them): none can write after this.
            for path, _ in copies:
                path.unlink(missing_ok=True)
            raise
        return [path for path, _ in copies]

    def ensure_table(self, namespace: str, table: str, schema: pa.Schema, partition_by: str | None = None):
        """The table, created (with its namespace) if absent. Safe when two runs create it at once: the
        loser of the race loads the winner's table."""
        from pyiceberg.exceptions import NoSuchTableError

        catalog = self.catalog()
        ident = self.identifier(namespace, table)
        try:  # one load (the catalog's table_exists is a load_table too)
            tbl = catalog.load_table(ident)
        except NoSuchTableError:
            tbl = self._create_table(catalog, ident, schema, partition_by)
            if tbl is not None:
                return tbl
            tbl = catalog.load_table(ident)  # created by a concurrent run: evolve it like any existing table
        return self._evolved(catalog, ident, tbl, schema)

    @staticmethod
    def _evolved(catalog, ident: tuple[str, str], tbl, schema: pa.Schema):
        missing = [f for f in schema if f.name not in tbl.schema().column_names]
        if missing:  # additive schema evolution; renames and type changes are migrations
            with tbl.update_schema() as update:
                update.union_by_name(schema)
            tbl = catalog.load_table(ident)
        return tbl

    @staticmethod
    def _create_namespace(catalog, namespace: str) -> None:
        from pyiceberg.exceptions import NamespaceAlreadyExistsError
        from sqlalchemy.exc import IntegrityError

        try:
            catalog.create_namespace_if_not_exists(namespace)
        except (NamespaceAlreadyExistsError, IntegrityError):
            pass  # created by a concurrent run between the catalog's check and its insert

    @classmethod
    def _create_table(cls, catalog, ident: tuple[str, str], schema: pa.Schema, partition_by: str | None):
        """The new table (with its namespace), or None when a concurrent run created it first."""
        from pyiceberg.exceptions import TableAlreadyExistsError

        cls._create_namespace(catalog, ident[0])
        try:
            tbl = catalog.create_table(ident, schema=schema)
        except TableAlreadyExistsError:
            return None
        if partition_by:
            from pyiceberg.transforms import IdentityTransform

            with tbl.update_spec() as spec:
                spec.add_field(partition_by, IdentityTransform(), partition_by)
            tbl = catalog.load_table(ident)
        return tbl

    def _transaction(self, namespace: str, table: str, schema: pa.Schema, partition_by: str | None = None):
        """A transaction on the table, its schema evolved to ``schema``. For a table that does not exist
        yet (unpartitioned), one that creates it WITH its first snapshot in a single commit: one metadata
        file and one catalog insert, where a create and then a commit write two metadata files and load
        the table twice (on a tenant's first run, ten tables)."""
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        if partition_by is not None:
            return self.ensure_table(namespace, table, schema, partition_by).transaction()
        catalog = self.catalog()
        ident = self.identifier(namespace, table)
        try:
            tbl = catalog.load_table(ident)
        except NoSuchTableError:
            try:  # it looks the namespace up anyway (for its location): no existence check before
                return catalog.create_table_transaction(ident, schema=schema)
            except NoSuchNamespaceError:  # the namespace's first table
                self._create_namespace(catalog, ident[0])
                return catalog.create_table_transaction(ident, schema=schema)
        return self._evolved(catalog, ident, tbl, schema).transaction()

    def _commit(self, tx, namespace: str, table: str, schema: pa.Schema, redo: Callable[[Any], None]):
        """Commit ``tx``; the committed table (its metadata the new snapshot's). When it creates its table and
        a concurrent run created that table first, ``redo`` the same writes in a transaction of the winner's
        table and commit that instead."""
        from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
        from pyiceberg.table import CreateTableTransaction

        try:
            return tx.commit_transaction()
        except (TableAlreadyExistsError, CommitFailedException):
            if not isinstance(tx, CreateTableTransaction):
                raise
            again = self.ensure_table(namespace, table, schema).transaction()
            redo(again)
            return again.commit_transaction()

    def stage(
        self,
        namespace: str,
        table: str,
        data: pa.Table,
        *,
        mode: Literal["overwrite", "append"] = "overwrite",
        overwrite_filter: Any = None,
        partition_by: str | None = None,
        snapshot_properties: dict[str, str] | None = None,
    ) -> Staged:
        """Write ``data`` as uncommitted files of an open transaction on the table; nothing is visible until
        the returned Staged is committed (publish_staged). Lets a step stage several tables at once, each
        write waiting on S3, and still commit them in the order it needs."""
        properties = dict(snapshot_properties or {})

        def write(tx) -> None:
            if mode == "append":
                tx.append(data, snapshot_properties=properties)
            elif overwrite_filter is not None:
                tx.overwrite(data, overwrite_filter=overwrite_filter, snapshot_properties=properties)
            else:
                tx.overwrite(data, snapshot_properties=properties)

        tx = self._transaction(namespace, table, data.schema, partition_by)
        write(tx)
        return Staged(self, namespace, table, data, tx, write)

    def publish_staged(self, staged: Staged, *, audits: Sequence[Audit] = (),
                       asset_key: dg.AssetKey | None = None) -> Iterator[dg.AssetCheckResult]:
        """Yield the audits' check results on the staged rows, then commit the snapshot (only when every
        blocking audit passed; else it raises and the table is unchanged). Returns the committed table."""
        yield from audit_or_raise(audits, staged.data, asset_key=asset_key,
                                  asset_label=f"{staged.namespace}.{staged.table}")
        # only now, every blocking audit passed: the snapshot commits atomically
        return staged.commit()

    def write_audit_publish(
        self,
        namespace: str,
        table: str,
        data: pa.Table,
        *,
        audits: Sequence[Audit] = (),
        mode: Literal["overwrite", "append"] = "overwrite",
        overwrite_filter: Any = None,
        partition_by: str | None = None,
        asset_key: dg.AssetKey | None = None,
        snapshot_properties: dict[str, str] | None = None,
    ) -> Iterator[dg.AssetCheckResult]:
        """Stage ``data`` as uncommitted files, yield the audits' check results, commit one snapshot; returns
        the committed table (``yield from``'s value: its snapshot_metadata needs no catalog load).

        A blocking audit failure raises before the commit: the table's current snapshot is unchanged
        (the orphaned files are never referenced and expire with the usual maintenance).
        ``snapshot_properties``: extra entries of the new snapshot's summary (readable from the table's
        metadata alone, without reading a data file)."""
        staged = self.stage(namespace, table, data, mode=mode, overwrite_filter=overwrite_filter,
                            partition_by=partition_by, snapshot_properties=snapshot_properties)
        return (yield from self.publish_staged(staged, audits=audits, asset_key=asset_key))

    def publish_files(
        self,
        namespace: str,
        table: str,
        files: Sequence[Path],
        schema: pa.Schema,
        *,
        audits: Sequence[Audit] = (),
        mode: Literal["overwrite", "append"] = "overwrite",
        asset_key: dg.AssetKey | None = None,
        snapshot_properties: dict[str, str] | None = None,
    ) -> Iterator[dg.AssetCheckResult]:
        """Write-audit-publish of data the caller already wrote as local parquet ``files`` of ``schema``
        (streamed there by DuckDB or a ParquetWriter): the rows never sit in memory here.

        Each file is copied as is into the table's data location, in chunks, while the audits run on the
        local files (exactly the bytes staged; they receive the list of paths); a blocking failure
        raises before the commit. Then ONE snapshot is committed: an overwrite replacing every current
        data file, or an append. Files carry no Iceberg field ids: the table's name mapping
        (set here when absent, kept up to date by schema evolution) resolves their columns by name.
        Returns the committed table (``yield from``'s value), as write_audit_publish."""
        paths = [Path(f) for f in files]
        # The footers are read here, once: they give the rows (an empty file is not added) and the
        # statistics of each file's manifest entry, so nothing staged is read back from S3.
        footers = [(path, footer) for path in paths if (footer := _footer(path)).num_rows]

        io = self.file_io()

        def stage() -> tuple[Any, list[tuple[str, Path, Any]]]:
            from pyiceberg.table.locations import load_location_provider

            tx = self._transaction(namespace, table, schema)
            locations = load_location_provider(tx.table_metadata.location, tx.table_metadata.properties)
            return tx, [(self._stage_file(io, locations, path), path, footer) for path, footer in footers]

        if audits:
            # The copy to S3 (waiting on the network) runs while the audits (CPU) do; the commit waits
            # for both. A blocking failure raises once the copy is done: its files stay unreferenced.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lakehouse-stage") as pool:
                staging = pool.submit(stage)
                yield from audit_or_raise(audits, paths, asset_key=asset_key, asset_label=f"{namespace}.{table}")
                tx, staged = staging.result()
        else:  # nothing to overlap with: no thread
            tx, staged = stage()
        properties = dict(snapshot_properties or {})

        def add_files(tx) -> None:
            self._add_files(tx, io, staged, mode, properties)

        add_files(tx)
        return self._commit(tx, namespace, table, schema, add_files)

    def _stage_file(self, io, locations, path: Path) -> str:
        """Copy a local parquet file into the table's data location (an uncommitted, unreferenced file
        until the snapshot that adds it commits); its location."""
        location = locations.new_data_location(f"{uuid.uuid4()}-{path.name}")
        # A fresh uuid in the name: no existence check first (a HEAD per file), as pyiceberg's own writes
        scheme, _, key = location.partition("://")
        with path.open("rb") as source, (self.staging_filesystem().open_output_stream(key) if scheme in ("s3", "s3a")
                                         else io.new_output(location).create(overwrite=True)) as target:
            shutil.copyfileobj(source, target, 8 << 20)
        return location

    @staticmethod
    def _add_files(tx, io, staged: list[tuple[str, Path, Any]], mode: str, properties: dict[str, str]) -> None:
        """Stage in ``tx`` the snapshot adding the staged files (an overwrite also removes every current
        data file), with the name mapping that resolves their columns, set when the table has none."""
        from pyiceberg.manifest import ManifestContent
        from pyiceberg.table import TableProperties

        if tx.table_metadata.name_mapping() is None:
            tx.set_properties(**{TableProperties.DEFAULT_NAME_MAPPING:
                                 tx.table_metadata.schema().name_mapping.model_dump_json()})
        metadata = tx.table_metadata
        new_files = [_data_file(metadata, location, path, footer) for location, path, footer in staged]
        snapshot = metadata.current_snapshot()
        update = tx.update_snapshot(snapshot_properties=properties)
        with (update.overwrite() if mode == "overwrite" else update.fast_append()) as producer:
            if mode == "overwrite" and snapshot is not None:
                for manifest in snapshot.manifests(io):
                    if manifest.content == ManifestContent.DATA:
                        for entry in manifest.fetch_manifest_entry(io, discard_deleted=True):
                            producer.delete_data_file(entry.data_file)
            for data_file in new_files:
                producer.append_data_file(data_file)

    def snapshot_metadata(self, namespace: str, table: str, committed=None) -> dict[str, Any]:
        """The table's current snapshot, for an asset's metadata. ``committed``: the table a commit of this
        run returned (write_audit_publish, publish_files, Staged.commit): its snapshot is the one
        published, and no catalog load is needed to learn it."""
        tbl = committed if committed is not None else self.load_table(namespace, table)
        snap = tbl.current_snapshot()
        return {
            "iceberg/table": f"{namespace}.{table}",
            "iceberg/snapshot_id": str(snap.snapshot_id) if snap else "none",
            "iceberg/location": tbl.metadata.location,
        }


class Staged:
    """Rows written as uncommitted files in an open transaction on one table (LakehouseResource.stage)."""

    def __init__(self, lakehouse: LakehouseResource, namespace: str, table: str, data: pa.Table, tx,
                 write: Callable[[Any], None]):
        self.lakehouse, self.namespace, self.table, self.data = lakehouse, namespace, table, data
        self._tx, self._write = tx, write

    def commit(self):
        """Commit the staged snapshot; the committed table."""
        return self.lakehouse._commit(self._tx, self.namespace, self.table, self.data.schema, self._write)


def _footer(path: Path):
    """The parquet footer (FileMetaData) of a local file."""
    import pyarrow.parquet as pq

    return pq.read_metadata(path)


def _data_file(metadata, location: str, path: Path, footer):
    """The manifest entry of the local parquet file ``path`` staged byte for byte at ``location``: what
    pyiceberg's parquet_file_to_data_file builds, from the local footer and size instead of a HEAD and
    GETs of the staged copy."""
    from pyiceberg.io.pyarrow import (
        _check_pyarrow_schema_compatible,
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat

    schema = metadata.schema()
    _check_pyarrow_schema_compatible(schema, footer.schema.to_arrow_schema(), format_version=metadata.format_version)
    statistics = data_file_statistics_from_parquet_metadata(
        parquet_metadata=footer, stats_columns=compute_statistics_plan(schema, metadata.properties),
        parquet_column_mapping=parquet_path_to_id_mapping(schema))
    return DataFile.from_args(
        content=DataFileContent.DATA, file_path=location, file_format=FileFormat.PARQUET,
        partition=statistics.partition(metadata.spec(), schema), file_size_in_bytes=path.stat().st_size,
        sort_order_id=None, spec_id=metadata.default_spec_id, equality_ids=None, key_metadata=None,
        **statistics.to_serialized_dict())
