"""PostgresIOManager over the real warehouse: round trips, partitions, idempotence, atomicity."""

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from covid_lakehouse.lib.io_managers import PostgresIOManager

pytestmark = pytest.mark.integration

REGIONS = dg.StaticPartitionsDefinition(["east", "north", "west"])


def _assets(schema: str, values: dict[str, list[int]]):
    @dg.asset(key_prefix=[schema], partitions_def=REGIONS, io_manager_key="warehouse_io_manager",
              metadata={"partition_expr": "region"}, backfill_policy=dg.BackfillPolicy.single_run())
    def sales(context: dg.AssetExecutionContext) -> pd.DataFrame:
        keys = context.partition_keys
        return pd.DataFrame([{"region": k, "amount": v} for k in keys for v in values[k]])

    @dg.asset(key_prefix=[schema], io_manager_key="warehouse_io_manager", ins={"sales": dg.AssetIn(key=sales.key)},
              partitions_def=REGIONS, backfill_policy=dg.BackfillPolicy.single_run(),
              metadata={"partition_expr": "region"})
    def sales_total(context: dg.AssetExecutionContext, sales: pd.DataFrame) -> pa.Table:
        totals = sales.groupby("region", as_index=False)["amount"].sum()
        return pa.Table.from_pandas(totals, preserve_index=False)

    return sales, sales_total


def _range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def _run(assets, services, instance, start="east", end="west", selection=None):
    job = dg.define_asset_job("j", selection=selection or dg.AssetSelection.assets(*assets))
    defs = dg.Definitions(assets=assets, jobs=[job],
                          resources={"warehouse_io_manager": PostgresIOManager(dsn=services.warehouse_dsn)})
    return defs.resolve_job_def("j").execute_in_process(instance=instance, tags=_range_tags(start, end),
                                                        raise_on_error=False)


def test_one_run_writes_several_partitions_and_reads_them_back(services, instance, pg, unique_schema):
    assets = _assets(unique_schema, {"east": [1, 2], "north": [10], "west": [100, 200, 300]})
    result = _run(assets, services, instance)
    assert result.success
    rows = pg.execute(f'select region, amount from "{unique_schema}".sales_total order by region').fetchall()
    assert rows == [("east", 3), ("north", 10), ("west", 600)]
    mat = result.asset_materializations_for_node(f"{unique_schema}__sales")[0]
    assert mat.metadata["dagster/row_count"].value == 6


def test_rerun_replaces_its_slice_without_duplicates_and_keeps_other_slices(services, instance, pg, unique_schema):
    assets = _assets(unique_schema, {"east": [1, 2], "north": [10], "west": [100]})
    assert _run(assets, services, instance).success
    assets = _assets(unique_schema, {"east": [5], "north": [99], "west": [7]})
    assert _run(assets, services, instance, start="east", end="east").success
    assert _run(assets, services, instance, start="east", end="east").success  # idempotent
    rows = pg.execute(f'select region, amount from "{unique_schema}".sales order by region, amount').fetchall()
    assert rows == [("east", 5), ("north", 10), ("west", 100)]


def test_failure_in_the_middle_of_a_write_leaves_published_rows(services, instance, pg, unique_schema):
    assets = _assets(unique_schema, {"east": [1], "north": [2], "west": [3]})
    assert _run(assets, services, instance).success
    # The table refuses negative amounts: the COPY fails after the slice's DELETE already ran.
    pg.execute(f'alter table "{unique_schema}".sales add constraint positive check (amount > 0)')
    bad = _assets(unique_schema, {"east": [4, -1], "north": [5], "west": [6]})
    result = _run(bad, services, instance, selection=dg.AssetSelection.assets(bad[0]))
    assert not result.success
    rows = pg.execute(f'select region, amount from "{unique_schema}".sales order by region').fetchall()
    assert rows == [("east", 1), ("north", 2), ("west", 3)]


def test_partition_keys_are_bound_not_pasted(services, instance, pg, unique_schema):
    evil = "x'); drop table keep_me; --"
    parts = dg.StaticPartitionsDefinition([evil])
    pg.execute(f'create schema if not exists "{unique_schema}"')
    pg.execute(f'create table "{unique_schema}".keep_me (i int)')

    @dg.asset(key_prefix=[unique_schema], partitions_def=parts, io_manager_key="warehouse_io_manager",
              metadata={"partition_expr": "k"})
    def tricky(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return pd.DataFrame({"k": [context.partition_key], "v": [1]})

    for _ in range(2):  # the second run deletes the slice with the hostile key
        result = dg.materialize([tricky], partition_key=evil, instance=instance,
                                resources={"warehouse_io_manager": PostgresIOManager(dsn=services.warehouse_dsn)})
        assert result.success
    assert pg.execute(f'select count(*) from "{unique_schema}".tricky').fetchone()[0] == 1
    assert pg.execute(f"select to_regclass('\"{unique_schema}\".keep_me') is not null").fetchone()[0]
