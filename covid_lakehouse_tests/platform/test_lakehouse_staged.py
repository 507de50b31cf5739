"""Staged writes (LakehouseResource.stage, publish_staged): the files of a write are on S3 in an open
transaction and nothing is visible until its commit, so a step can stage several tables side by side
and commit them in the order it needs. A commit returns the committed table, whose snapshot_metadata
needs no catalog load (a tenant's first run loaded two tables again only to name their snapshots)."""

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.wap import Audit, AuditResult, BlockingAuditFailed

pytestmark = pytest.mark.integration


def _rows(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64())})


def _count_loads(monkeypatch) -> list:
    loads = []
    real = SqlCatalog.load_table

    def counted(catalog, identifier):
        loads.append(identifier)
        return real(catalog, identifier)

    monkeypatch.setattr(SqlCatalog, "load_table", counted)
    return loads


def test_staged_writes_are_invisible_until_committed_in_the_callers_order(services, lakehouse: LakehouseResource):
    ns = "staged_order"
    list(lakehouse.write_audit_publish(ns, "first", _rows([1])))
    second = lakehouse.stage(ns, "second", _rows([20]))  # a table that does not exist yet
    first = lakehouse.stage(ns, "first", _rows([2]), mode="append")
    assert not lakehouse.table_exists(ns, "second")
    assert lakehouse.read(ns, "first")["id"].to_pylist() == [1]
    first.commit()
    assert sorted(lakehouse.read(ns, "first")["id"].to_pylist()) == [1, 2]
    assert not lakehouse.table_exists(ns, "second")
    second.commit()
    assert lakehouse.read(ns, "second")["id"].to_pylist() == [20]


def test_a_blocking_failure_on_a_staged_write_commits_nothing(services, lakehouse: LakehouseResource):
    ns = "staged_blocked"
    list(lakehouse.write_audit_publish(ns, "t", _rows([1])))
    staged = lakehouse.stage(ns, "t", _rows([5, 6]))
    with pytest.raises(BlockingAuditFailed):
        list(lakehouse.publish_staged(staged, audits=[Audit("never", lambda rows: AuditResult(False))]))
    assert lakehouse.read(ns, "t")["id"].to_pylist() == [1]


@pytest.mark.parametrize("exists", [False, True], ids=["new table", "existing table"])
def test_the_committed_table_names_the_new_snapshot_without_a_catalog_load(services, lakehouse, monkeypatch, exists):
    ns = f"staged_committed_{int(exists)}"
    if exists:
        list(lakehouse.write_audit_publish(ns, "t", _rows([1])))
    loads = _count_loads(monkeypatch)
    publishing = lakehouse.write_audit_publish(ns, "t", _rows([7]), audits=[Audit("ok", lambda rows: AuditResult(True))])
    checks = []
    try:
        while True:
            checks.append(next(publishing))
    except StopIteration as done:
        committed = done.value
    assert [c.passed for c in checks] == [True]
    loads_by_the_publish = len(loads)
    metadata = lakehouse.snapshot_metadata(ns, "t", committed)
    assert len(loads) == loads_by_the_publish  # no load after the commit
    assert metadata == lakehouse.snapshot_metadata(ns, "t")  # what a fresh load says
    assert metadata["iceberg/snapshot_id"] == str(lakehouse.load_table(ns, "t").current_snapshot().snapshot_id)
