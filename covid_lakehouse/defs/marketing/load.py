"""How every marketing load reaches the warehouse: rows are spooled to a local Arrow file while the
API is read (no transaction stays open during rate-limit waits), then staged with COPY, audited and
merged on the natural key in ONE transaction (platform write-audit-publish)."""

import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pyarrow as pa
from psycopg import sql

from covid_lakehouse.defs.marketing.tables import TableSpec
from covid_lakehouse.lib.postgres import PostgresResource, UpsertCounts
from covid_lakehouse.lib.wap import Audit, audit_or_raise


class Spool:
    """An Arrow IPC file in a private temporary directory (removed on close); reader threads write
    each page's rows as soon as it is parsed, so memory holds a page per thread, not the whole load."""

    def __init__(self, schema: pa.Schema) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="marketing-spool-")
        self._path = Path(self._dir.name) / "rows.arrow"
        self._sink = pa.OSFile(str(self._path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema)
        self._lock = threading.Lock()
        self.rows = 0
        self.pages = 0

    def write(self, table: pa.Table, *, pages: int = 0) -> None:
        with self._lock:
            if table.num_rows:
                self._writer.write_table(table)
                self.rows += table.num_rows
            self.pages += pages

    def batches(self) -> Iterator[pa.RecordBatch]:
        self._writer.close()
        self._sink.close()
        # read, not memory-mapped: a mapped spool would count the whole load in the process's RSS
        with pa.OSFile(str(self._path), "rb") as source:
            yield from pa.ipc.open_stream(source)

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Staged:
    """What an audit sees: the open transaction, the staging table, and what the API reported."""

    conn: psycopg.Connection
    staging: sql.Identifier
    spec: TableSpec
    reported: dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    staged_rows: int
    counts: UpsertCounts


def stage_audit_publish(warehouse: PostgresResource, spec: TableSpec, *, audits: Sequence[Audit],
                        asset_key: dg.AssetKey, data: Iterable[pa.RecordBatch] | None = None,
                        fill: sql.Composable | None = None, fill_params: dict[str, Any] | None = None,
                        reported: dict[Any, Any] | None = None) -> Iterator[dg.AssetCheckResult]:
    """Stage ``data`` (COPY) or the result of ``fill`` (INSERT .. SELECT), run the audits on the staged
    rows, then merge into the target on its key: new rows inserted, changed rows updated, identical rows
    untouched. A failing blocking audit raises before the merge and the transaction rolls back.
    Returns (via StopIteration) a Published."""
    with warehouse.connection() as conn:
        staging = PostgresResource.create_staging_like(conn, spec.ident, f"stg_{spec.name}", columns=spec.staged)
        if fill is not None:
            conn.execute(sql.SQL("INSERT INTO {} ({}) ").format(
                staging, sql.SQL(", ").join(map(sql.Identifier, spec.staged))) + fill, fill_params)
            staged_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(staging)).fetchone()[0]
        else:
            staged_rows = PostgresResource.copy_arrow(conn, staging, data or [], columns=spec.staged)
        yield from audit_or_raise(audits, Staged(conn, staging, spec, reported or {}), asset_key=asset_key,
                                  asset_label=asset_key.to_user_string())
        touch: dict[str, sql.Composable] = {c: sql.Identifier(c) for c in spec.lineage}
        counts = PostgresResource.upsert(conn, target=spec.ident, source=staging, key_columns=spec.key,
                                         value_columns=spec.values, touch_columns={**touch, "updated_at": sql.SQL("now()")})
    return Published(staged_rows, counts)
