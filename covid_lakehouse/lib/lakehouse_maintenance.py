"""Iceberg maintenance: expire old snapshots, then delete the files no remaining snapshot references.

Every overwrite (omop's per-run tables, the smoke table) adds a snapshot and new data files, and a
failed commit leaves its parquet files behind; without this the lakehouse only grows.

Safety rules:
- a snapshot is expired only when older than the retention AND not the current snapshot nor the head
  of any branch or tag (time travel and the ads restore read within the retention);
- a file is deleted only when nothing references it (the current metadata file, the metadata log,
  statistics files, every remaining snapshot's manifest list, manifests and their entries, deleted
  entries included) AND it is older than the margin, which is at least the longest run allowed: a run
  still writing files it will commit later is younger than that.
pyiceberg 0.12 expires snapshots (``table.maintenance.expire_snapshots()``) but has no orphan removal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


@dataclass
class TableReport:
    table: str
    expired_snapshots: int = 0
    kept_snapshots: int = 0
    deleted_files: list[str] = field(default_factory=list)
    young_orphans: int = 0  # unreferenced but younger than the margin: maybe a run still writing


def bucket_key(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)  # s3://bucket/key, s3a://…: the scheme does not matter, the object does
    return parts.netloc, parts.path.lstrip("/")


def expire_snapshots(table, older_than: datetime) -> tuple[int, int]:
    """Expire the table's snapshots older than ``older_than``, never the current one nor a ref's head.
    Returns (expired, kept)."""
    metadata = table.metadata
    keep = {ref.snapshot_id for ref in metadata.refs.values()}
    if metadata.current_snapshot_id is not None:
        keep.add(metadata.current_snapshot_id)
    cutoff_ms = int(older_than.timestamp() * 1000)
    expired = [s.snapshot_id for s in metadata.snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep]
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
    return len(expired), len(metadata.snapshots) - len(expired)


def referenced_files(table) -> set[tuple[str, str]]:
    """(bucket, key) of every file the table's current metadata references, directly or through a
    snapshot. Manifests shared by snapshots are read once."""
    metadata = table.metadata
    paths = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    paths |= {s.statistics_path for s in metadata.statistics}
    paths |= {s.statistics_path for s in metadata.partition_statistics}
    manifests = {}
    for snapshot in metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            manifests.setdefault(manifest.manifest_path, manifest)
    for path, manifest in manifests.items():
        paths.add(path)
        # Deleted entries too: never delete a file any remaining manifest still mentions.
        paths.update(e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=False))
    return {bucket_key(p) for p in paths}


def _objects_under(s3_client, location: str) -> Iterator[tuple[str, str, datetime]]:
    bucket, prefix = bucket_key(location.rstrip("/") + "/")  # the slash: table "a" is not under "ab"
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield bucket, obj["Key"], obj["LastModified"]


def remove_orphans(table, s3_client, *, older_than: datetime, dry_run: bool = False) -> tuple[list[str], int]:
    """Delete objects under the table's location that its metadata does not reference and that were
    last modified before ``older_than``. Returns (deleted URIs, unreferenced objects kept as too young).

    Listed after the references were read: a file committed meanwhile is younger than the margin."""
    referenced = referenced_files(table)
    deleted, young = [], 0
    for bucket, key, modified in list(_objects_under(s3_client, table.metadata.location)):
        if (bucket, key) in referenced:
            continue
        if modified >= older_than:
            young += 1
            continue
        if not dry_run:
            s3_client.delete_object(Bucket=bucket, Key=key)
        deleted.append(f"s3://{bucket}/{key}")
    return deleted, young


def maintain_table(catalog, identifier: tuple[str, ...], s3_client, *, retention: timedelta, margin: timedelta,
                   now: datetime | None = None) -> TableReport:
    now = now or datetime.now(UTC)
    report = TableReport(".".join(identifier))
    table = catalog.load_table(identifier)
    report.expired_snapshots, report.kept_snapshots = expire_snapshots(table, now - retention)
    table = catalog.load_table(identifier)  # the metadata after the expiry
    report.deleted_files, report.young_orphans = remove_orphans(table, s3_client, older_than=now - margin)
    return report


def all_tables(catalog) -> Iterator[tuple[str, ...]]:
    """Every table of every namespace (one per omop tenant, ads, platform, …), nested ones included."""
    pending = list(catalog.list_namespaces())
    while pending:
        namespace = pending.pop(0)
        yield from sorted(catalog.list_tables(namespace))
        pending.extend(catalog.list_namespaces(namespace))
