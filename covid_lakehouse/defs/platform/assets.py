"""Smoke assets: prove the warehouse (through the IO manager), S3 and the Iceberg lakehouse work
end to end, with write-audit-publish, before any domain depends on them."""


from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_check_specs

GROUP = "platform"
SMOKE_ROWS = 1_000


def _smoke_rows() -> pa.Table:
    ids = pa.array(range(SMOKE_ROWS), pa.int64())
    return pa.table({
        "id": ids,
        "label": pa.array([f"row-{i}" for i in range(SMOKE_ROWS)]),
        "value": pc.multiply(ids.cast(pa.float64()), 0.5),
        "checked_at": pa.array([datetime.now(UTC)] * SMOKE_ROWS, pa.timestamp("us", tz="UTC")),
    })


@dg.asset(
    group_name=GROUP,
    key_prefix=["platform"],
    io_manager_key="warehouse_io_manager",
    description="1,000 rows written to warehouse table platform.smoke_warehouse by the Postgres IO manager.",
    kinds={"postgres"},
)
def smoke_warehouse(context: dg.AssetExecutionContext) -> pa.Table:
    rows = _smoke_rows()
    context.log.info("smoke_warehouse: writing %d rows", rows.num_rows)
    return rows


def _ids_unique(table: pa.Table) -> AuditResult:
    distinct = pc.count_distinct(table["id"]).as_py()
    return AuditResult(distinct == table.num_rows, f"{distinct} distinct ids in {table.num_rows} rows",
                       {"distinct_ids": distinct})


def _row_count(table: pa.Table) -> AuditResult:
    return AuditResult(table.num_rows == SMOKE_ROWS, f"{table.num_rows} rows (expected {SMOKE_ROWS})")


SMOKE_AUDITS = [
    Audit("ids_unique", _ids_unique, blocking=True, description="id is unique in the staged snapshot"),
    Audit("row_count", _row_count, blocking=False, description="the smoke table has its expected size"),
]
SMOKE_LAKEHOUSE_KEY = dg.AssetKey(["platform", "smoke_lakehouse"])


@dg.asset(
    key=SMOKE_LAKEHOUSE_KEY,
    group_name=GROUP,
    deps=[smoke_warehouse],
    check_specs=audit_check_specs(SMOKE_LAKEHOUSE_KEY, SMOKE_AUDITS),
    description="The same rows published as Iceberg table platform.smoke on S3 with write-audit-publish.",
    kinds={"iceberg", "s3"},
)
def smoke_lakehouse(context: dg.AssetExecutionContext, lakehouse: LakehouseResource):
    rows = _smoke_rows()
    yield from lakehouse.write_audit_publish("platform", "smoke", rows, audits=SMOKE_AUDITS,
                                             asset_key=SMOKE_LAKEHOUSE_KEY)
    published = lakehouse.read("platform", "smoke")
    context.log.info("smoke_lakehouse: published %d rows", published.num_rows)
    yield dg.MaterializeResult(metadata={"dagster/row_count": published.num_rows,
                                         **lakehouse.snapshot_metadata("platform", "smoke")})
