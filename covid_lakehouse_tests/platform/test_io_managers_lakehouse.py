"""LakehouseIOManager over the real catalog and S3: a namespace per partition, slices of a shared
table replaced in one commit, and a blocking audit that stops a bad output before any commit."""

import uuid
from datetime import date

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from covid_lakehouse.lib.io_managers import LakehouseIOManager
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_check_specs, audit_or_raise

pytestmark = pytest.mark.integration
TENANTS = dg.StaticPartitionsDefinition(["acme", "globex"])
DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")


@pytest.fixture
def io(lakehouse) -> dict:
    return {"lakehouse_io_manager": LakehouseIOManager(lakehouse=lakehouse)}


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


def test_a_namespace_per_tenant_written_and_loaded_per_partition_or_all(io, lakehouse, prefix):
    @dg.asset(key=["io", "per_tenant"], partitions_def=TENANTS, io_manager_key="lakehouse_io_manager",
              metadata={"lakehouse/namespace": prefix + "_{partition}", "lakehouse/table": "things",
                        "lakehouse/partition_column": "tenant"})
    def per_tenant(context: dg.AssetExecutionContext) -> pa.Table:
        return pa.table({"name": [f"{context.partition_key}-{i}" for i in range(3 if context.partition_key == "acme" else 2)]})

    seen = {}

    @dg.asset(partitions_def=TENANTS)
    def one_tenant(context: dg.AssetExecutionContext, per_tenant: pd.DataFrame) -> None:
        seen[context.partition_key] = sorted(per_tenant["name"])

    @dg.asset
    def every_tenant(per_tenant: pa.Table) -> None:
        seen["all"] = sorted(zip(per_tenant["tenant"].to_pylist(), per_tenant["name"].to_pylist(), strict=True))

    for tenant in ("acme", "globex"):
        assert dg.materialize([per_tenant, one_tenant], partition_key=tenant, resources=io).success
    assert lakehouse.read(f"{prefix}_globex", "things").num_rows == 2
    assert dg.materialize([per_tenant.to_source_asset(), every_tenant], resources=io,
                          selection=[every_tenant.key]).success
    assert seen["acme"] == ["acme-0", "acme-1", "acme-2"] and seen["globex"] == ["globex-0", "globex-1"]
    assert seen["all"] == [("acme", "acme-0"), ("acme", "acme-1"), ("acme", "acme-2"),
                           ("globex", "globex-0"), ("globex", "globex-1")]


def test_a_daily_slice_is_replaced_and_loaded_alone(io, lakehouse, prefix):
    runs = {"n": 0}

    @dg.asset(key=[prefix, "daily"], partitions_def=DAYS, io_manager_key="lakehouse_io_manager",
              metadata={"partition_expr": "day"})
    def daily(context: dg.AssetExecutionContext) -> pa.Table:
        runs["n"] += 1
        day = date.fromisoformat(context.partition_key)
        return pa.table({"day": [day, day], "value": [runs["n"], runs["n"]]})

    loaded = {}

    @dg.asset(partitions_def=DAYS)
    def reader(context: dg.AssetExecutionContext, daily: pa.Table) -> None:
        loaded[context.partition_key] = daily["value"].to_pylist()

    for day in ("2024-01-01", "2024-01-02", "2024-01-01"):  # the third run replaces day 1 only
        assert dg.materialize([daily, reader], partition_key=day, resources=io).success
    table = lakehouse.read(prefix, "daily")
    assert sorted(zip(table["day"].to_pylist(), table["value"].to_pylist(), strict=True)) == [
        (date(2024, 1, 1), 3), (date(2024, 1, 1), 3), (date(2024, 1, 2), 2), (date(2024, 1, 2), 2)]
    assert loaded == {"2024-01-01": [3, 3], "2024-01-02": [2, 2]}


def _unique(table: pa.Table) -> AuditResult:
    ids = table["id"].to_pylist()
    return AuditResult(len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate ids")


AUDITS = [Audit("ids_unique", _unique, blocking=True)]


def test_a_failing_blocking_audit_stops_the_output_before_the_commit(io, lakehouse, prefix):
    key = dg.AssetKey([prefix, "audited"])

    def asset(ids: list[int]):
        @dg.asset(key=key, io_manager_key="lakehouse_io_manager", check_specs=audit_check_specs(key, AUDITS))
        def audited():
            table = pa.table({"id": ids})
            yield from audit_or_raise(AUDITS, table, asset_key=key)
            yield dg.Output(table)

        return audited

    assert dg.materialize([asset([1, 2])], resources=io).success
    snapshot = lakehouse.load_table(prefix, "audited").current_snapshot().snapshot_id
    result = dg.materialize([asset([3, 3])], resources=io, raise_on_error=False)
    assert not result.success
    assert [e.passed for e in result.get_asset_check_evaluations()] == [False]
    assert lakehouse.load_table(prefix, "audited").current_snapshot().snapshot_id == snapshot
    assert lakehouse.read(prefix, "audited")["id"].to_pylist() == [1, 2]
