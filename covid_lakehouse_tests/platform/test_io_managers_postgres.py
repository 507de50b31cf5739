"""PostgresIOManager: overlapping writers, tables written by resources loading as inputs, and a
blocking audit that stops a bad output before the IO manager writes."""

import threading

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest

from covid_lakehouse.lib.io_managers import PostgresIOManager, TableLockTimeout
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_check_specs, audit_or_raise
from covid_lakehouse_tests.platform.support import wait_until_blocked_or_done

pytestmark = pytest.mark.integration
ROWS = 1_000


def _io(services, **kw) -> dict:
    return {"warehouse_io_manager": PostgresIOManager(dsn=services.warehouse_dsn, **kw)}


def _writer(schema: str, tag: str):
    @dg.asset(key=[schema, "events"], io_manager_key="warehouse_io_manager")
    def events() -> pd.DataFrame:
        return pd.DataFrame({"i": range(ROWS), "run": [tag] * ROWS})

    return events


def test_two_overlapping_runs_leave_one_runs_rows(services, pg, unique_schema, monkeypatch):
    assert dg.materialize([_writer(unique_schema, "first")], resources=_io(services)).success
    real_copy = PostgresResource.copy_arrow
    a_copying, b_copying = threading.Event(), threading.Event()

    def copy(conn, target, data, columns=None):
        if threading.current_thread().name == "run-a":
            a_copying.set()
            # Hold run A between its DELETE and its COPY until run B has either reached its own COPY
            # (no serialization: both DELETEs ran) or is blocked behind A's transaction.
            wait_until_blocked_or_done(pg, b_copying)
        else:
            b_copying.set()
        return real_copy(conn, target, data, columns)

    monkeypatch.setattr(PostgresResource, "copy_arrow", staticmethod(copy))
    results = {}

    def run(tag: str) -> None:
        with dg.DagsterInstance.ephemeral() as inst:
            results[tag] = dg.materialize([_writer(unique_schema, tag)], resources=_io(services), instance=inst,
                                          raise_on_error=False).success

    a = threading.Thread(target=run, args=("a",), name="run-a")
    b = threading.Thread(target=run, args=("b",), name="run-b")
    a.start()
    a_copying.wait()
    b.start()
    a.join()
    b.join()
    assert results == {"a": True, "b": True}
    rows = pg.execute(f'SELECT run, count(*) FROM "{unique_schema}".events GROUP BY run').fetchall()
    assert rows == [("b", ROWS)]  # the later run replaced the earlier one's rows: 1,000, not 2,000


def test_a_writer_stuck_behind_another_fails_clearly(services, pg, unique_schema):
    assert dg.materialize([_writer(unique_schema, "first")], resources=_io(services)).success
    with PostgresResource(dsn=services.warehouse_dsn).connection() as holder:
        holder.execute(f'LOCK TABLE "{unique_schema}".events IN SHARE ROW EXCLUSIVE MODE')
        result = dg.materialize([_writer(unique_schema, "late")], resources=_io(services, lock_timeout_s=0.2),
                                raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error.cause
    assert error.cls_name == TableLockTimeout.__name__
    assert f"{unique_schema}.events" in error.message
    assert pg.execute(f'SELECT DISTINCT run FROM "{unique_schema}".events').fetchall() == [("first",)]


def test_a_table_written_by_a_resource_loads_by_its_table_name_and_partitions(services, pg, unique_schema):
    pg.execute(f'CREATE SCHEMA "{unique_schema}"')
    pg.execute(f'CREATE TABLE "{unique_schema}".by_region (region text, amount int)')
    pg.execute(f"INSERT INTO \"{unique_schema}\".by_region VALUES ('east', 1), ('east', 2), ('west', 50)")
    regions = dg.StaticPartitionsDefinition(["east", "west"])
    published = dg.AssetSpec(["upstream", "published_elsewhere"], partitions_def=regions,
                             metadata={"dagster/table_name": f"{unique_schema}.by_region", "partition_expr": "region"}).with_io_manager_key("warehouse_io_manager")
    seen = {}

    @dg.asset(partitions_def=regions, deps=[], ins={"published": dg.AssetIn(published.key)})
    def total(context: dg.AssetExecutionContext, published: pd.DataFrame) -> None:
        seen[context.partition_key] = sorted(published["amount"].tolist())

    defs = dg.Definitions(assets=[published, total], resources=_io(services))
    for region in ("east", "west"):
        assert defs.resolve_implicit_global_asset_job_def().execute_in_process(
            asset_selection=[total.key], partition_key=region).success
    assert seen == {"east": [1, 2], "west": [50]}
    # Analysts load the same slice without a run.
    value = defs.load_asset_value(published.key, partition_key="west")
    assert value.to_dict("records") == [{"region": "west", "amount": 50}]


def _no_negative(table: pa.Table) -> AuditResult:
    negatives = sum(1 for v in table["amount"].to_pylist() if v < 0)
    return AuditResult(negatives == 0, f"{negatives} negative amounts")


AUDITS = [Audit("no_negative_amounts", _no_negative, blocking=True)]


def test_a_failing_blocking_audit_stops_the_output_before_the_io_manager(services, pg, unique_schema):
    key = dg.AssetKey([unique_schema, "amounts"])

    def asset(amounts: list[int]):
        @dg.asset(key=key, io_manager_key="warehouse_io_manager", check_specs=audit_check_specs(key, AUDITS))
        def amounts_asset():
            table = pa.table({"amount": amounts})
            yield from audit_or_raise(AUDITS, table, asset_key=key)
            yield dg.Output(table)

        return amounts_asset

    assert dg.materialize([asset([1, 2])], resources=_io(services)).success
    result = dg.materialize([asset([3, -1])], resources=_io(services), raise_on_error=False)
    assert not result.success
    assert [e.passed for e in result.get_asset_check_evaluations()] == [False]
    assert pg.execute(f'SELECT amount FROM "{unique_schema}".amounts ORDER BY 1').fetchall() == [(1,), (2,)]


def test_day_slices_are_utc_days_whatever_the_servers_time_zone(services, pg, unique_schema):
    # A session in Tokyo casts a date to its midnight there (15:00 UTC the day before).
    tokyo = services.warehouse_dsn + ("&" if "?" in services.warehouse_dsn else "?") + "options=-c%20TimeZone%3DAsia/Tokyo"
    days = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")

    @dg.asset(key=[unique_schema, "daily"], partitions_def=days, io_manager_key="warehouse_io_manager",
              metadata={"partition_expr": "day"})
    def daily(context: dg.AssetExecutionContext) -> pa.Table:
        return pa.table({"day": [context.partition_time_window.start.date()], "run": [context.run_id]})

    loaded = {}

    @dg.asset(partitions_def=days)
    def reader(context: dg.AssetExecutionContext, daily: pd.DataFrame) -> None:
        loaded[context.partition_key] = [str(d) for d in daily["day"]]

    io = {"warehouse_io_manager": PostgresIOManager(dsn=tokyo)}
    for day in ("2024-01-01", "2024-01-02", "2024-01-02"):
        assert dg.materialize([daily, reader], partition_key=day, resources=io).success
    rows = pg.execute(f'SELECT day, count(*) FROM "{unique_schema}".daily GROUP BY day ORDER BY day').fetchall()
    assert [(str(d), n) for d, n in rows] == [("2024-01-01", 1), ("2024-01-02", 1)]
    assert loaded == {"2024-01-01": ["2024-01-01"], "2024-01-02": ["2024-01-02"]}
