"""The Iceberg table ads.ads_archive (parquet under s3://ad-data/archive/, partitioned by shown date):
its schema in Iceberg and in Arrow, creating it, scanning it one data file at a time, counting its rows."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa
from pyiceberg.exceptions import TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan
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

from covid_lakehouse.defs.ads.api import ADS_ARROW_SCHEMA
from covid_lakehouse.defs.ads.settings import ARCHIVE_LOCATION, ARCHIVE_NAMESPACE, ARCHIVE_TABLE
from covid_lakehouse.lib.lakehouse import LakehouseResource

log = logging.getLogger(__name__)


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
TIMESTAMP_UTC = pa.timestamp("us", tz="UTC")
# The same columns in Arrow (the ad as the API gives it, then what the load and the archive add), each
# carrying its Iceberg field id into the parquet files.
ARCHIVE_ARROW = pa.schema([
    *ADS_ARROW_SCHEMA,
    pa.field("shown_date", pa.date32(), nullable=False),
    pa.field("backup_key", pa.string(), nullable=False),
    pa.field("loaded_at", TIMESTAMP_UTC, nullable=False),
    pa.field("row_version", pa.int64(), nullable=False),
    pa.field("batch_id", pa.string(), nullable=False),
    pa.field("archived_at", TIMESTAMP_UTC, nullable=False),
])
ARCHIVE_ARROW = pa.schema([f.with_metadata({"PARQUET:field_id": str(ARCHIVE_SCHEMA.find_field(f.name).field_id)})
                           for f in ARCHIVE_ARROW])

ALL_ROWS = AlwaysTrue()


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


def scan_batches(table: Table, row_filter: BooleanExpression = ALL_ROWS,
                 selected_fields: tuple[str, ...] = ("*",)) -> Iterator[pa.RecordBatch]:
    """The table's rows matching ``row_filter``, one data file at a time (pyiceberg's own batch
    reader reads every file of the scan at once: memory would grow with the archive)."""
    scan = table.scan(row_filter=row_filter, selected_fields=selected_fields)
    reader = ArrowScan(table.metadata, table.io, scan.projection(), scan.row_filter)
    for task in scan.plan_files():
        yield from reader.to_record_batches([task])


def archived_row_count(lakehouse: LakehouseResource) -> int:
    """Rows in the archive's current snapshot (0 when the table does not exist yet)."""
    if not lakehouse.table_exists(ARCHIVE_NAMESPACE, ARCHIVE_TABLE):
        return 0
    snapshot = lakehouse.load_table(ARCHIVE_NAMESPACE, ARCHIVE_TABLE).current_snapshot()
    return int(snapshot.summary.get("total-records", 0)) if snapshot and snapshot.summary else 0
