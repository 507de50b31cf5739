"""A new table's first publish (write_audit_publish or publish_files) creates the table WITH its first
snapshot in one commit: one metadata file, not a create and then a commit (on a tenant's first run,
ten tables: a visible share of its fixed cost). A table a concurrent run creates meanwhile gets the
publish as its next snapshot, nothing lost."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.wap import Audit, AuditResult, BlockingAuditFailed

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def _rows(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "name": [f"n{i}" for i in ids]}, schema=SCHEMA)


def _publish(lakehouse: LakehouseResource, how: str, ns: str, rows: pa.Table, tmp_path: Path, **kwargs) -> list:
    if how == "write_audit_publish":
        return list(lakehouse.write_audit_publish(ns, "t", rows, **kwargs))
    path = tmp_path / f"{ns}-{rows['id'][0]}.parquet"
    pq.write_table(rows, path)
    return list(lakehouse.publish_files(ns, "t", [path], SCHEMA, **kwargs))


@pytest.mark.parametrize("how", ["write_audit_publish", "publish_files"])
def test_a_new_tables_first_publish_is_one_commit(services, lakehouse, tmp_path, how):
    ns = f"first_publish_one_commit_{how}"
    results = _publish(lakehouse, how, ns, _rows([1, 2]), tmp_path,
                       audits=[Audit("two_rows", lambda staged: AuditResult(True))])
    assert [r.passed for r in results] == [True]
    table = lakehouse.load_table(ns, "t")
    assert table.metadata.metadata_log == []  # the table's first metadata file already has the snapshot
    assert len(table.snapshots()) == 1
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == [1, 2]


@pytest.mark.parametrize("how", ["write_audit_publish", "publish_files"])
def test_a_blocking_failure_on_a_new_tables_first_publish_creates_no_table(services, lakehouse, tmp_path, how):
    ns = f"first_publish_blocked_{how}"
    with pytest.raises(BlockingAuditFailed):
        _publish(lakehouse, how, ns, _rows([1]), tmp_path, audits=[Audit("never", lambda staged: AuditResult(False))])
    assert not lakehouse.table_exists(ns, "t")


@pytest.mark.parametrize("how", ["write_audit_publish", "publish_files"])
def test_a_table_created_concurrently_gets_the_publish_as_its_next_snapshot(services, lakehouse, tmp_path,
                                                                            monkeypatch, how):
    ns = f"first_publish_race_{how}"
    real = SqlCatalog.create_table_transaction

    def concurrent_run_first(catalog, identifier, schema, *args, **kwargs):
        # another run creates the table and publishes into it after this one found no table
        catalog.create_table(identifier, schema=SCHEMA).append(_rows([100]))
        return real(catalog, identifier, schema, *args, **kwargs)

    monkeypatch.setattr(SqlCatalog, "create_table_transaction", concurrent_run_first)
    _publish(lakehouse, how, ns, _rows([1, 2]), tmp_path, mode="append")
    table = lakehouse.load_table(ns, "t")
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == [1, 2, 100]
    assert len(table.snapshots()) == 2
