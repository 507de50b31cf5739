"""StagingWriter: rows reach a private staging table while the source is still read, without holding a
transaction open; the publish merges and drops it; a failure leaves neither staged rows nor a half
publish; tables of killed processes are swept."""

import threading

import dagster as dg
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from covid_lakehouse.defs.marketing.checks import KEY_UNIQUE
from covid_lakehouse.defs.marketing.load import (
    STAGING_SCHEMA,
    StagingWriter,
    stage_audit_publish,
)
from covid_lakehouse.defs.marketing.tables import SCHEMA, TableSpec
from covid_lakehouse.lib.postgres import PostgresResource
from covid_lakehouse.lib.wap import Audit, AuditResult, BlockingAuditFailed
from covid_lakehouse_tests.marketing.support import create_probe, probe_rows, probe_spec

pytestmark = pytest.mark.integration

PROBE = probe_spec("staging_probe")


@pytest.fixture
def probe(clean_marketing, warehouse: PostgresResource) -> TableSpec:
    return create_probe(warehouse, PROBE)


def rows(*ids: int, v: str = "x") -> pa.Table:
    return probe_rows(PROBE, *ids, v=v)


def exists(pg: psycopg.Connection, name: str) -> bool:
    return pg.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{STAGING_SCHEMA}.{name}",)).fetchone()[0]


def publish(warehouse: PostgresResource, staging: StagingWriter, audits=(), checks: list | None = None):
    steps = stage_audit_publish(warehouse, PROBE, audits=list(audits), asset_key=dg.AssetKey([SCHEMA, PROBE.name]),
                                staged=staging)
    while True:
        try:
            (checks if checks is not None else []).append(next(steps))
        except StopIteration as done:
            return done.value


def test_rows_are_staged_while_the_source_is_read_with_no_transaction_left_open(probe, warehouse, pg) -> None:
    with StagingWriter(warehouse, probe) as staging:
        staging.write(rows(1, 2), pages=1)
        staging.write(rows(3), pages=1)
        staging.flush()  # as if the reader now waited out a rate limit
        qualified = f"{STAGING_SCHEMA}.{staging.name}"
        assert pg.execute(f"SELECT count(*) FROM {qualified}").fetchone()[0] == 3  # committed, visible to others
        holders = pg.execute("SELECT count(*) FROM pg_locks WHERE relation = %s::regclass", (qualified,)).fetchone()[0]
        assert holders == 0  # no session sits in a transaction on the staging table between pages
        assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.staging_probe").fetchone()[0] == 0  # nothing published
        published = publish(warehouse, staging)
    assert (published.staged_rows, staging.pages, published.counts.inserted) == (3, 2, 3)
    assert [r[0] for r in pg.execute(f"SELECT id FROM {SCHEMA}.staging_probe ORDER BY id")] == [1, 2, 3]
    assert not exists(pg, staging.name)


def test_a_failing_blocking_audit_rolls_back_the_merge_that_ran_beside_it(probe, warehouse, pg) -> None:
    with StagingWriter(warehouse, probe) as staging:
        staging.write(rows(1, 2, v="first"))
        publish(warehouse, staging)
    no_threes = Audit("no_id_3", lambda staged: AuditResult(
        staged.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE id = 3").format(staged.staging)).fetchone()[0] == 0,
        "id 3 is refused"), blocking=True)
    checks: list = []
    with pytest.raises(BlockingAuditFailed, match="no_id_3"), StagingWriter(warehouse, probe) as staging:
        staging.write(rows(1, 3, v="second"))
        publish(warehouse, staging, [no_threes], checks)
    assert [(c.check_name, c.passed) for c in checks] == [("no_id_3", False)]
    assert pg.execute(f"SELECT id, v FROM {SCHEMA}.staging_probe ORDER BY id").fetchall() == [(1, "first"), (2, "first")]
    assert not exists(pg, staging.name)


def test_staged_rows_are_hidden_from_analysts_who_read_every_published_table(probe, warehouse, pg) -> None:
    def analyst_reads(table: str) -> bool:
        return pg.execute("SELECT has_table_privilege('analyst', %s, 'SELECT')", (table,)).fetchone()[0]

    with StagingWriter(warehouse, probe) as staging:
        assert analyst_reads(f"{SCHEMA}.staging_probe")  # default privileges of the published schema
        assert not analyst_reads(f"{STAGING_SCHEMA}.{staging.name}")


def test_a_failing_read_drops_the_staged_rows_and_publishes_nothing(probe, warehouse, pg) -> None:
    with pytest.raises(TimeoutError), StagingWriter(warehouse, probe) as staging:
        staging.write(rows(1, 2), pages=1)
        staging.flush()
        raise TimeoutError("the API stopped answering")
    assert not exists(pg, staging.name)
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.staging_probe").fetchone()[0] == 0


def test_rows_the_warehouse_refuses_fail_the_run_naming_the_table_and_never_block_readers(probe, warehouse, pg) -> None:
    bad = pa.table({"id": ["not-a-number"], "v": ["x"], "raw_object": ["s3://raw/p#1.json"]})
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            with StagingWriter(warehouse, probe, max_queued=2) as staging:
                outcome.append(staging)  # type: ignore[arg-type]
                staging.write(bad, pages=1)
                for n in range(20):  # more than the queue holds: the failed copier must keep consuming
                    staging.write(rows(n), pages=1)
                publish(warehouse, staging)
        except BaseException as err:
            outcome.append(err)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    reader.join(timeout=120)  # a guard, not a synchronisation: a blocked reader would hang here
    assert not reader.is_alive(), "a reader stayed blocked on the queue of a failed copier"
    staging, raised = outcome
    assert isinstance(raised, RuntimeError)
    assert f"staging_probe: staging rows in {STAGING_SCHEMA}.staging_probe__" in str(raised)
    assert "invalid input syntax for type bigint" in str(raised)
    assert not exists(pg, staging.name)
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.staging_probe").fetchone()[0] == 0


def test_columns_are_staged_by_name_whatever_their_order(probe, warehouse, pg) -> None:
    reordered = rows(1, v="kept").select(["raw_object", "v", "id"])
    with StagingWriter(warehouse, probe) as staging:
        staging.write(reordered)
        publish(warehouse, staging)
    assert pg.execute(f"SELECT id, v FROM {SCHEMA}.staging_probe").fetchall() == [(1, "kept")]
    with StagingWriter(warehouse, probe) as staging, pytest.raises(ValueError, match=r"lack column\(s\) \['raw_object'\]"):
        staging.write(rows(2).drop_columns(["raw_object"]))


def test_duplicate_keys_fail_the_key_audit_not_the_merge(probe, warehouse, pg) -> None:
    checks: list = []
    with pytest.raises(BlockingAuditFailed, match="natural_key_unique"), StagingWriter(warehouse, probe) as staging:
        staging.write(rows(7, 7, 8))  # new to the target: the merge itself would trip over the primary key
        publish(warehouse, staging, [KEY_UNIQUE], checks)
    assert [(c.check_name, c.passed) for c in checks] == [("natural_key_unique", False)]
    assert pg.execute(f"SELECT count(*) FROM {SCHEMA}.staging_probe").fetchone()[0] == 0
