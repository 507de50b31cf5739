"""The I/O around the transform, outside Dagster's decorators: taking in new landing files, reading a
tenant's state tables, appending to them."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import ClientError
from pyiceberg.exceptions import NoSuchTableError

from covid_lakehouse.defs.omop import tables
from covid_lakehouse.defs.omop.landing import LandingObject, list_landing, parse_landing_file
from covid_lakehouse.defs.omop.tenants import Tenant
from covid_lakehouse.lib.lakehouse import LakehouseResource, Staged


def utc_now() -> datetime:
    return datetime.now(UTC)


def read_or_empty(lakehouse: LakehouseResource, namespace: str, table: str, schema: pa.Schema) -> pa.Table:
    """A tenant table, or an empty one of its schema before its first write (one catalog lookup, not
    an existence check and then a load)."""
    try:
        data = lakehouse.read(namespace, table)
    except NoSuchTableError:
        return schema.empty_table()
    return tables.conform(data, schema)


def stage_append(lakehouse: LakehouseResource, namespace: str, table: str, data: pa.Table,
                 snapshot_properties: dict[str, str] | None = None) -> Staged | None:
    """An append of ``data`` staged (files written, not committed), or None when it has no rows. No
    audits: append-only state, validated where it is used."""
    if not data.num_rows:
        return None
    return lakehouse.stage(namespace, table, data, mode="append", snapshot_properties=snapshot_properties)


def append(lakehouse: LakehouseResource, namespace: str, table: str, data: pa.Table,
           snapshot_properties: dict[str, str] | None = None) -> None:
    if (staged := stage_append(lakehouse, namespace, table, data, snapshot_properties)) is not None:
        staged.commit()


def append_files(lakehouse: LakehouseResource, namespace: str, table: str, path: Path, schema: pa.Schema) -> None:
    """Like append, for rows already written to the parquet file ``path`` (streamed there, never whole
    in memory)."""
    if pq.read_metadata(path).num_rows:
        for _ in lakehouse.publish_files(namespace, table, [path], schema, mode="append"):
            pass  # no audits: append-only state, validated where it is used


@dataclass(frozen=True)
class IngestReport:
    files: int
    rows: int
    rejected_files: list[str]
    malformed_rows: int
    skipped_missing: int


def ingest_landing(tenant: Tenant, client, lakehouse: LakehouseResource, *, run_id: str,
                   now: datetime | None = None, objects: list[LandingObject] | None = None) -> IngestReport:
    """Parse every landing object not yet in the manifest (key + ETag) into landing_row, then record
    it in landing_file. Rows are appended before the manifest: a crash in between means the file is
    taken in again, and the transform drops the duplicate (file, line) rows. ``objects``: the
    prefix's listing, when the caller already has it (default: list it now)."""
    now = now or utc_now()
    ns = tenant.namespace
    manifest = read_or_empty(lakehouse, ns, tables.T_LANDING_FILE, tables.LANDING_FILE)
    seen = set(zip(manifest["object_key"].to_pylist(), manifest["etag"].to_pylist(), strict=True))
    rows: list[dict] = []
    entries: list[dict] = []
    skipped = 0
    if objects is None:
        objects = list_landing(client, tenant.landing_bucket, tenant.prefix)
    for obj in objects:
        if (obj.key, obj.etag) in seen:
            continue
        try:
            body = client.get_object(Bucket=tenant.landing_bucket, Key=obj.key, IfMatch=obj.etag)["Body"].read()
        except ClientError as err:
            # Deleted or replaced since the listing: the next run sees its current version.
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                skipped += 1
                continue
            raise
        parsed = parse_landing_file(obj.key, body)
        file_info = {"object_key": obj.key, "etag": obj.etag, "object_last_modified": obj.last_modified,
                     "ingested_at": now}
        rows.extend({**row, **file_info} for row in parsed.rows)
        entries.append({**file_info, "size_bytes": obj.size, "format": parsed.format,
                        "status": "rejected" if parsed.reject_reason else "loaded", "reason": parsed.reject_reason,
                        "detail": parsed.detail or None, "rows_read": len(parsed.rows),
                        "rows_malformed": parsed.malformed, "run_id": run_id})
    # Both appends are staged side by side (each write waits on S3), then committed rows first: the
    # manifest never names a file whose rows are not committed.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="omop-landing") as pool:
        staged = [pool.submit(stage_append, lakehouse, ns, table, tables.conform(pa.Table.from_pylist(new), schema))
                  for table, new, schema in ((tables.T_LANDING_ROW, rows, tables.LANDING_ROW),
                                             (tables.T_LANDING_FILE, entries, tables.LANDING_FILE))]
        for append_staged in [future.result() for future in staged]:
            if append_staged is not None:
                append_staged.commit()
    return IngestReport(
        files=len(entries), rows=len(rows),
        rejected_files=[e["object_key"] for e in entries if e["status"] == "rejected"],
        malformed_rows=sum(e["rows_malformed"] for e in entries), skipped_missing=skipped,
    )


def processed_files(lakehouse: LakehouseResource, namespace: str) -> list[str]:
    """Files (key#etag) already harmonized by an earlier successful run."""
    log = read_or_empty(lakehouse, namespace, tables.T_RUN_LOG, tables.RUN_LOG)
    return [ref for refs in log["processed_files"].to_pylist() for ref in refs or []]


# The run_log snapshot summary entry holding the appended row (without its file list), so the gate
# reads the last run from the table's metadata instead of scanning the whole log.
LAST_RUN_PROPERTY = "omop.last-run"
_LAST_RUN_FIELDS = ("run_id", "finished_at", "source_rows", "providers", "source_fingerprint", "source_signal")


def stage_run(lakehouse: LakehouseResource, namespace: str, row: pa.Table) -> Staged:
    """One run_log row staged as an append (committed by the caller, last), also kept in the new
    snapshot's summary for last_run."""
    [values] = row.select([f for f in _LAST_RUN_FIELDS if f in row.column_names]).to_pylist()
    return lakehouse.stage(namespace, tables.T_RUN_LOG, row, mode="append",
                           snapshot_properties={LAST_RUN_PROPERTY: json.dumps(values, default=str)})


# A run_log table property pairing a newer signal with the recorded content fingerprint, set when a
# skipped run hashed the tables after the counters moved (no data row: run_log stays one row per run).
SIGNAL_PROPERTY = "omop.source-signal"


def record_signal(lakehouse: LakehouseResource, namespace: str, source_fingerprint: str, source_signal: str) -> None:
    """Remember that ``source_signal`` (read before a content hash equal to ``source_fingerprint``)
    vouches for the recorded content, so the next run need not hash the tables again."""
    table = lakehouse.load_table(namespace, tables.T_RUN_LOG)
    with table.transaction() as tx:
        tx.set_properties({SIGNAL_PROPERTY: json.dumps({"source_fingerprint": source_fingerprint,
                                                        "source_signal": source_signal})})


def last_run(lakehouse: LakehouseResource, namespace: str) -> dict | None:
    """The run_log row of the tenant's last successful run (None before the first): from the current
    snapshot's summary when the last commit was stage_run's, else by reading the log. Its signal is
    the one record_signal paired with its fingerprint, if any."""
    try:
        table = lakehouse.load_table(namespace, tables.T_RUN_LOG)
    except NoSuchTableError:
        return None
    snapshot = table.current_snapshot()
    if snapshot is None:
        return None
    if (summary := snapshot.summary.get(LAST_RUN_PROPERTY)) is not None:
        recorded = json.loads(summary)
    else:
        log = tables.conform(table.scan().to_arrow(), tables.RUN_LOG)
        if not log.num_rows:
            return None
        recorded = max(log.to_pylist(), key=lambda row: row["finished_at"])
    paired = json.loads(table.properties.get(SIGNAL_PROPERTY, "{}"))
    if paired.get("source_fingerprint") and paired["source_fingerprint"] == recorded.get("source_fingerprint"):
        recorded["source_signal"] = paired["source_signal"]
    return recorded
