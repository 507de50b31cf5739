"""IO managers: every published dataset loads as an asset input, and outputs that fit are written
through them.

- ``warehouse_io_manager`` (PostgresIOManager): tables in PostgreSQL, pandas or Arrow, partition slices.
- ``lakehouse_io_manager`` (LakehouseIOManager): Iceberg tables (parquet on S3/MinIO), one snapshot
  per write, a namespace per partition (omop_<tenant>) or a partition column.
- ``s3_object_io_manager`` (S3ObjectIOManager): raw objects, write-once and content-addressed, as bytes.
"""

from covid_lakehouse.lib.io_managers.lakehouse import LakehouseIOManager
from covid_lakehouse.lib.io_managers.postgres import (
    TABLE_NAME,
    PostgresIOManager,
    TableLockTimeout,
    pg_type,
)
from covid_lakehouse.lib.io_managers.s3 import S3ObjectIOManager

__all__ = ["TABLE_NAME", "LakehouseIOManager", "PostgresIOManager", "S3ObjectIOManager", "TableLockTimeout",
           "pg_type"]
