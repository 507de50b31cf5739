"""LakehouseIOManager: Arrow tables and DataFrames in and out of Iceberg tables (parquet on S3/MinIO).

Our own, on pyiceberg and the LakehouseResource's SQL catalog, rather than dagster-iceberg: its
current release (0.3.x) pins pyiceberg < 0.12 (this project runs 0.12) and knows one namespace per
asset, while a tenant's tables live in the tenant's own namespace (omop_<tenant>). See
docs/orchestration.md.

Where a dataset lives, from the asset's metadata:
- ``lakehouse/namespace``: the namespace; ``{partition}`` in it is replaced by the partition key
  (``omop_{partition}``: a namespace per tenant). Default: the asset key's prefix.
- ``lakehouse/table``: the table. Default: the asset key's last part.
- ``partition_expr``: the column holding the partition key (or time) when partitions share a table.
- ``lakehouse/partition_column``: loading a namespace-per-partition dataset adds the partition key
  as this column (default ``partition``), so several tenants concatenate into one table.

A write is ONE Iceberg transaction (the whole table, or the partition's slice with an overwrite
filter: its delete and append commit together): readers see the previous snapshot or the new one. Audits run in the asset on the data before it is
returned; a failing blocking audit raises there, so nothing reaches this IO manager.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
from dagster._core.definitions.partitions.utils import TimeWindow

from covid_lakehouse.lib.lakehouse import LakehouseResource

NAMESPACE = "lakehouse/namespace"
TABLE = "lakehouse/table"
PARTITION_COLUMN = "lakehouse/partition_column"
PARTITION_EXPR = "partition_expr"


def _location(key: dg.AssetKey, metadata: dict[str, Any]) -> tuple[str, str]:
    namespace = metadata.get(NAMESPACE) or (key.path[-2] if len(key.path) > 1 else "default")
    return str(namespace), str(metadata.get(TABLE) or key.path[-1])


def _row_filter(tbl, column: str, partitions: TimeWindow | list[str]):
    from pyiceberg.expressions import And, GreaterThanOrEqual, In, LessThan
    from pyiceberg.types import DateType

    if isinstance(partitions, TimeWindow):
        as_date = isinstance(tbl.schema().find_field(column).field_type, DateType)
        start, end = ((partitions.start.date().isoformat(), partitions.end.date().isoformat()) if as_date
                      else (partitions.start.isoformat(), partitions.end.isoformat()))
        return And(GreaterThanOrEqual(column, start), LessThan(column, end))
    return In(column, set(partitions))


def _partitions(context: dg.InputContext | dg.OutputContext) -> TimeWindow | list[str] | None:
    if not context.has_asset_partitions:
        return None
    if isinstance(context.asset_partitions_def, dg.TimeWindowPartitionsDefinition):
        return context.asset_partitions_time_window
    return list(context.asset_partition_keys)


class LakehouseIOManager(dg.ConfigurableIOManager):
    """Iceberg tables through the lakehouse's catalog (metadata keys in the module docstring)."""

    lakehouse: LakehouseResource

    @classmethod
    def from_env(cls) -> LakehouseIOManager:
        return cls(lakehouse=LakehouseResource.from_env())

    # ---- output -----------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj: pa.Table | pd.DataFrame | None) -> None:
        if obj is None:  # MaterializeResult: the asset wrote its data itself
            return
        data = pa.Table.from_pandas(obj, preserve_index=False) if isinstance(obj, pd.DataFrame) else obj
        if not isinstance(data, pa.Table):
            raise TypeError(f"{context.asset_key.to_user_string()}: LakehouseIOManager stores pyarrow Tables or "
                            f"pandas DataFrames, not {type(obj).__name__}")
        metadata = context.definition_metadata or {}
        template, table = _location(context.asset_key, metadata)
        partitions = _partitions(context)
        overwrite_filter = None
        if "{partition}" in template:
            if not isinstance(partitions, list) or len(partitions) != 1:
                raise ValueError(f"{context.asset_key.to_user_string()}: one run writes one partition's namespace "
                                 f"({template}); got {partitions!r}")
            namespace = template.format(partition=partitions[0])
        else:
            namespace = template
            if partitions is not None:
                column = metadata.get(PARTITION_EXPR)
                if not column:
                    raise ValueError(f"{context.asset_key.to_user_string()} is partitioned: set metadata "
                                     f"'{PARTITION_EXPR}' (the column of its partition key) or a '{{partition}}' "
                                     f"namespace")
                if self.lakehouse.table_exists(namespace, table):
                    overwrite_filter = _row_filter(self.lakehouse.load_table(namespace, table), column, partitions)
        # One commit: the table, or the slice of this run's partitions, replaced atomically.
        list(self.lakehouse.write_audit_publish(namespace, table, data, overwrite_filter=overwrite_filter))
        context.add_output_metadata({
            "dagster/row_count": data.num_rows,
            "dagster/table_name": f"{namespace}.{table}",
            **self.lakehouse.snapshot_metadata(namespace, table),
        })

    # ---- input ------------------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> pa.Table | pd.DataFrame:
        upstream = context.upstream_output
        metadata = (upstream.definition_metadata if upstream is not None else None) or {}
        template, table = _location(context.asset_key, metadata)
        partitions = _partitions(context)
        if "{partition}" in template:
            keys = partitions if isinstance(partitions, list) else self._every_partition(template, table)
            column = str(metadata.get(PARTITION_COLUMN) or "partition")
            parts = [self._read(context, template.format(partition=k), table, None, None) for k in keys]
            parts = [p if column in p.column_names else p.append_column(column, pa.array([k] * p.num_rows, pa.string()))
                     for p, k in zip(parts, keys, strict=True)]
            data = pa.concat_tables(parts, promote_options="permissive") if parts else pa.table({column: pa.array([], pa.string())})
        else:
            data = self._read(context, template, table, metadata.get(PARTITION_EXPR), partitions)
        want = context.dagster_type.typing_type
        return data if want is pa.Table else data.to_pandas()

    def _every_partition(self, template: str, table: str) -> list[str]:
        """An unpartitioned reader (or a notebook) of a namespace-per-partition dataset reads every
        partition whose namespace holds the table."""
        head, tail = template.split("{partition}", 1)
        names = sorted(ns[0] for ns in self.lakehouse.catalog().list_namespaces() if len(ns) == 1)
        return [n[len(head):len(n) - len(tail)] for n in names
                if n.startswith(head) and n.endswith(tail) and len(n) > len(head) + len(tail)
                and self.lakehouse.table_exists(n, table)]

    def _read(self, context: dg.InputContext, namespace: str, table: str, column: str | None,
              partitions: TimeWindow | list[str] | None) -> pa.Table:
        if not self.lakehouse.table_exists(namespace, table):
            raise dg.Failure(f"Iceberg table {namespace}.{table} does not exist: materialize "
                             f"{context.asset_key.to_user_string()} first", allow_retries=False)
        tbl = self.lakehouse.load_table(namespace, table)
        # Only the columns (the input's "columns" metadata) and partitions asked for: pruned in the scan.
        selected = tuple((context.definition_metadata or {}).get("columns") or ("*",))
        if column and partitions is not None:
            return tbl.scan(row_filter=_row_filter(tbl, column, partitions), selected_fields=selected).to_arrow()
        return tbl.scan(selected_fields=selected).to_arrow()
