"""Write-audit-publish on the real lakehouse (Iceberg on S3) and the real warehouse (PostgreSQL)."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg import sql

from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.postgres import PostgresResource, table_ident
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_check_specs, audit_or_raise

pytestmark = pytest.mark.integration


def _no_negatives(table: pa.Table) -> AuditResult:
    bad = pc.sum(pc.less(table["v"], 0)).as_py() or 0
    return AuditResult(bad == 0, f"{bad} negative values", {"negative_rows": bad})


def _small(table: pa.Table) -> AuditResult:
    return AuditResult(table.num_rows < 3, f"{table.num_rows} rows")


AUDITS = [Audit("no_negatives", _no_negatives, blocking=True), Audit("small", _small, blocking=False)]


def _lake_asset(namespace: str, values: list[int]):
    key = dg.AssetKey([namespace, "numbers"])

    @dg.asset(key=key, check_specs=audit_check_specs(key, AUDITS))
    def numbers(lakehouse: LakehouseResource):
        yield from lakehouse.write_audit_publish(namespace, "numbers", pa.table({"v": pa.array(values, pa.int64())}),
                                                 audits=AUDITS, asset_key=key)
        yield dg.MaterializeResult(metadata=lakehouse.snapshot_metadata(namespace, "numbers"))

    return numbers


def test_lakehouse_publishes_when_audits_pass_and_keeps_old_snapshot_when_they_fail(services, lakehouse, instance):
    ns = "wap_lake"
    ok = dg.materialize([_lake_asset(ns, [1, 2, 3])], resources={"lakehouse": lakehouse}, instance=instance)
    assert ok.success
    warn = {e.check_name: e.passed for e in ok.get_asset_check_evaluations()}
    assert warn == {"no_negatives": True, "small": False}  # WARN check fails, data still published
    snapshot = lakehouse.load_table(ns, "numbers").current_snapshot().snapshot_id

    bad = dg.materialize([_lake_asset(ns, [5, -1])], resources={"lakehouse": lakehouse}, instance=instance,
                         raise_on_error=False)
    assert not bad.success
    evaluations = {e.check_name: e for e in bad.get_asset_check_evaluations()}
    assert evaluations["no_negatives"].passed is False
    assert evaluations["no_negatives"].metadata["negative_rows"].value == 1
    assert "nothing published" in str(bad.failure_data_for_node("wap_lake__numbers").error.message)
    assert lakehouse.load_table(ns, "numbers").current_snapshot().snapshot_id == snapshot
    assert sorted(lakehouse.read(ns, "numbers")["v"].to_pylist()) == [1, 2, 3]


def test_lakehouse_overwrite_is_one_atomic_snapshot(services, lakehouse):
    ns = "wap_atomic"
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"v": pa.array(range(1000), pa.int64())})))
    first = lakehouse.load_table(ns, "t").current_snapshot().snapshot_id
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"v": pa.array(range(10), pa.int64())})))
    tbl = lakehouse.load_table(ns, "t")
    assert tbl.scan().to_arrow().num_rows == 10
    # time travel: the previous snapshot is intact and whole
    assert tbl.scan(snapshot_id=first).to_arrow().num_rows == 1000


def test_postgres_staged_rows_are_audited_before_publish(services, warehouse, pg, unique_schema, instance):
    key = dg.AssetKey([unique_schema, "numbers"])
    target = table_ident(unique_schema, "numbers")

    def staged_no_negatives(conn, staging) -> AuditResult:
        bad = conn.execute(sql.SQL("select count(*) from {} where v < 0").format(staging)).fetchone()[0]
        return AuditResult(bad == 0, f"{bad} negative values")

    audits = [Audit("no_negatives", staged_no_negatives)]

    def make(values):
        @dg.asset(key=key, check_specs=audit_check_specs(key, audits))
        def numbers(warehouse: PostgresResource):
            with warehouse.connection() as conn:
                PostgresResource.ensure_schema(conn, unique_schema)
                conn.execute(sql.SQL("create table if not exists {} (v int)").format(target))
                staging = PostgresResource.create_staging_like(conn, target, "stage_numbers")
                PostgresResource.copy_arrow(conn, staging, pa.table({"v": values}))
                yield from audit_or_raise(audits, conn, staging, asset_key=key)
                conn.execute(sql.SQL("delete from {}").format(target))
                conn.execute(sql.SQL("insert into {} select * from {}").format(target, staging))
            yield dg.MaterializeResult()
        return numbers

    assert dg.materialize([make([1, 2])], resources={"warehouse": warehouse}, instance=instance).success
    bad = dg.materialize([make([3, -4])], resources={"warehouse": warehouse}, instance=instance, raise_on_error=False)
    assert not bad.success
    assert [e.passed for e in bad.get_asset_check_evaluations()] == [False]
    assert pg.execute(f'select array_agg(v order by v) from "{unique_schema}".numbers').fetchone()[0] == [1, 2]


def test_iceberg_schema_evolves_by_adding_columns_without_losing_rows(services, lakehouse):
    ns = "wap_evolve"
    v1 = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})
    list(lakehouse.write_audit_publish(ns, "people", v1))
    v2 = pa.table({"id": pa.array([4], pa.int64()), "name": ["d"], "score": pa.array([9.5], pa.float64())})
    list(lakehouse.write_audit_publish(ns, "people", v2, mode="append"))
    table = lakehouse.load_table(ns, "people")
    assert table.schema().column_names == ["id", "name", "score"]
    rows = sorted(lakehouse.read(ns, "people").to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "name": "a", "score": None}, {"id": 2, "name": "b", "score": None},
                    {"id": 3, "name": "c", "score": None}, {"id": 4, "name": "d", "score": 9.5}]
