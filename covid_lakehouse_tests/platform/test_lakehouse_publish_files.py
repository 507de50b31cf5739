"""Write-audit-publish of data already written as local parquet files (LakehouseResource.publish_files):
the audits see the staged files before anything is committed, and a table gets one snapshot per publish.
Each staged file's manifest entry is built from the local file it copied: nothing staged is read back
from S3 (a HEAD and GETs per file were most of a small table's publish)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.io.pyarrow import parquet_file_to_data_file

from covid_lakehouse.lib.lakehouse import LakehouseResource
from covid_lakehouse.lib.wap import Audit, AuditResult, BlockingAuditFailed
from covid_lakehouse_tests.platform.support import another_catalog

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def _file(tmp_path: Path, name: str, table: pa.Table) -> Path:
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def _rows(lakehouse: LakehouseResource, ns: str, table: str, **scan) -> list[dict]:
    return sorted(lakehouse.load_table(ns, table).scan(**scan).to_arrow().to_pylist(), key=lambda r: r["id"])


def test_publish_files_replaces_the_table_in_one_snapshot_after_auditing_the_staged_files(services, lakehouse, tmp_path):
    ns = "publish_files_overwrite"
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})))
    before = lakehouse.load_table(ns, "t")
    first, snapshots = before.current_snapshot().snapshot_id, len(before.snapshots())
    seen = []

    def ids_positive(files) -> AuditResult:
        seen.append(list(files))
        ids = pa.concat_tables([pq.read_table(f) for f in files])["id"].to_pylist()
        return AuditResult(min(ids) > 0, f"{len(ids)} rows")

    parts = [_file(tmp_path, "part-1.parquet", pa.table({"id": pa.array([10, 11], pa.int64()), "name": ["x", "y"]},
                                                        schema=SCHEMA)),
             _file(tmp_path, "part-2.parquet", pa.table({"id": pa.array([12], pa.int64()), "name": [None]}, schema=SCHEMA))]
    results = list(lakehouse.publish_files(ns, "t", parts, SCHEMA, audits=[Audit("ids_positive", ids_positive)],
                                           snapshot_properties={"test.marker": "yes"}))
    assert [r.passed for r in results] == [True] and seen == [parts]
    after = lakehouse.load_table(ns, "t")
    assert len(after.snapshots()) == snapshots + 1  # one snapshot: the overwrite, not a delete and an append
    assert after.current_snapshot().summary["operation"].value == "overwrite"
    assert after.current_snapshot().summary["test.marker"] == "yes"
    assert _rows(lakehouse, ns, "t") == [{"id": 10, "name": "x"}, {"id": 11, "name": "y"}, {"id": 12, "name": None}]
    # the previous snapshot is intact (time travel)
    assert [r["id"] for r in _rows(lakehouse, ns, "t", snapshot_id=first)] == [1, 2, 3]


def test_a_blocking_audit_failure_on_staged_files_publishes_nothing(services, lakehouse, tmp_path):
    ns = "publish_files_blocked"
    good = _file(tmp_path, "good.parquet", pa.table({"id": pa.array([1], pa.int64()), "name": ["a"]}, schema=SCHEMA))
    list(lakehouse.publish_files(ns, "t", [good], SCHEMA))
    snapshot = lakehouse.load_table(ns, "t").current_snapshot().snapshot_id
    bad = _file(tmp_path, "bad.parquet", pa.table({"id": pa.array([-5], pa.int64()), "name": ["b"]}, schema=SCHEMA))

    def never(files) -> AuditResult:
        return AuditResult(False, "staged rows rejected")

    with pytest.raises(BlockingAuditFailed, match="nothing published"):
        list(lakehouse.publish_files(ns, "t", [bad], SCHEMA, audits=[Audit("never", never)]))
    assert lakehouse.load_table(ns, "t").current_snapshot().snapshot_id == snapshot
    assert _rows(lakehouse, ns, "t") == [{"id": 1, "name": "a"}]


def test_appended_files_evolve_the_schema_and_empty_files_add_no_rows(services, lakehouse, tmp_path):
    ns = "publish_files_append"
    list(lakehouse.publish_files(ns, "t", [_file(tmp_path, "a.parquet", pa.table(
        {"id": pa.array([1], pa.int64()), "name": ["a"]}, schema=SCHEMA))], SCHEMA, mode="append"))
    wider = SCHEMA.append(pa.field("score", pa.float64()))
    list(lakehouse.publish_files(ns, "t", [_file(tmp_path, "b.parquet", pa.table(
        {"id": pa.array([2], pa.int64()), "name": ["b"], "score": [9.5]}, schema=wider)),
        _file(tmp_path, "empty.parquet", wider.empty_table())], wider, mode="append"))
    table = lakehouse.load_table(ns, "t")
    assert table.schema().column_names == ["id", "name", "score"]
    assert int(table.current_snapshot().summary["added-data-files"]) == 1  # the empty file is not added
    assert _rows(lakehouse, ns, "t") == [{"id": 1, "name": "a", "score": None}, {"id": 2, "name": "b", "score": 9.5}]


def test_publishing_only_empty_files_creates_an_empty_table_and_empties_a_full_one(services, lakehouse, tmp_path):
    ns = "publish_files_empty"
    empty = _file(tmp_path, "empty.parquet", SCHEMA.empty_table())
    list(lakehouse.publish_files(ns, "new", [empty], SCHEMA))
    assert lakehouse.load_table(ns, "new").scan().to_arrow().num_rows == 0
    full = _file(tmp_path, "full.parquet", pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]}, schema=SCHEMA))
    list(lakehouse.publish_files(ns, "t", [full], SCHEMA))
    list(lakehouse.publish_files(ns, "t", [empty], SCHEMA))
    table = lakehouse.load_table(ns, "t")
    assert table.scan().to_arrow().num_rows == 0 and len(table.snapshots()) == 2


def _recording_reads(monkeypatch, lakehouse: LakehouseResource, ns: str) -> list[str]:
    """Every location the table's FileIO opens for reading from now on."""
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([1], pa.int64()), "name": ["a"]})))
    io_class = type(lakehouse.load_table(ns, "t").io)
    opened: list[str] = []
    real = io_class.new_input

    def new_input(self, location: str):
        opened.append(location)
        return real(self, location)

    monkeypatch.setattr(io_class, "new_input", new_input)
    return opened


@pytest.mark.parametrize("audited", [True, False], ids=["with-audits", "without-audits"])
def test_staged_files_are_never_read_back_and_their_entries_match_pyiceberg(services, lakehouse, tmp_path,
                                                                           monkeypatch, audited):
    ns = f"publish_files_local_stats_{'audited' if audited else 'plain'}"
    opened = _recording_reads(monkeypatch, lakehouse, ns)
    parts = [_file(tmp_path, "part-a.parquet", pa.table({"id": pa.array([10, 11], pa.int64()), "name": ["x", "y"]}, schema=SCHEMA)),
             _file(tmp_path, "part-b.parquet", pa.table({"id": pa.array([30], pa.int64()), "name": [None]}, schema=SCHEMA))]
    audits = [Audit("any_rows", lambda files: AuditResult(bool(files)))] if audited else []
    list(lakehouse.publish_files(ns, "t", parts, SCHEMA, audits=audits))

    table = lakehouse.load_table(ns, "t")
    entries = sorted((task.file for task in table.scan().plan_files()), key=lambda f: f.record_count)
    assert [e.record_count for e in entries] == [1, 2]
    staged = [e.file_path for e in entries]
    assert not [location for location in opened if location in staged]  # no HEAD or GET of a staged file
    monkeypatch.undo()
    for entry in entries:  # what pyiceberg reads from the staged copy itself
        expected = parquet_file_to_data_file(table.io, table.metadata, entry.file_path)
        assert (entry.file_size_in_bytes, entry.record_count, entry.lower_bounds, entry.upper_bounds,
                entry.null_value_counts, entry.value_counts) == (
            expected.file_size_in_bytes, expected.record_count, expected.lower_bounds, expected.upper_bounds,
            expected.null_value_counts, expected.value_counts)
    # the bounds prune: a filter above part-a's ids plans part-b's file only
    assert [task.file.record_count for task in table.scan(row_filter="id >= 20").plan_files()] == [1]
    assert table.scan(row_filter="id >= 20").to_arrow().to_pylist() == [{"id": 30, "name": None}]


def test_a_file_whose_columns_do_not_fit_the_table_is_refused_before_the_commit(services, lakehouse, tmp_path):
    ns = "publish_files_local_stats_refused"
    list(lakehouse.publish_files(ns, "t", [_file(tmp_path, "ok.parquet", pa.table(
        {"id": pa.array([1], pa.int64()), "name": ["a"]}))], SCHEMA))
    snapshot = lakehouse.load_table(ns, "t").current_snapshot().snapshot_id
    wrong = _file(tmp_path, "wrong.parquet", pa.table({"id": ["not a number"], "name": ["b"]}))
    with pytest.raises(ValueError, match="id"):
        list(lakehouse.publish_files(ns, "t", [wrong], SCHEMA))
    assert lakehouse.load_table(ns, "t").current_snapshot().snapshot_id == snapshot


def test_publish_files_returns_the_table_its_commit_created_whatever_commits_after_it(services, lakehouse, tmp_path):
    """snapshot_metadata of the returned table names the published snapshot even once another writer (a
    second catalog, as another process holds) has committed on top of it; a catalog load would not."""
    ns = "publish_files_returns"
    part = _file(tmp_path, "part.parquet", pa.table({"id": pa.array([1], pa.int64()), "name": ["a"]}, schema=SCHEMA))
    with pytest.raises(StopIteration) as done:  # no audits: nothing yielded, the committed table returned
        next(lakehouse.publish_files(ns, "t", [part], SCHEMA, snapshot_properties={"test.marker": "ours"}))
    committed = done.value.value
    other = another_catalog(lakehouse).load_table((ns, "t"))
    other.append(pa.table({"id": pa.array([2], pa.int64()), "name": ["b"]}, schema=SCHEMA))
    current = lakehouse.load_table(ns, "t").current_snapshot()
    named = lakehouse.snapshot_metadata(ns, "t", committed)["iceberg/snapshot_id"]
    assert named == str(current.parent_snapshot_id) != str(current.snapshot_id)
    assert lakehouse.load_table(ns, "t").snapshot_by_id(int(named)).summary["test.marker"] == "ours"
