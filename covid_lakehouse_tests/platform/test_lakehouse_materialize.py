"""LakehouseResource.materialize: a table's current snapshot as local parquet files (streamed copies of its
live data files), for readers that scan files themselves (DuckDB) instead of holding the table in memory."""

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.types import StringType

from covid_lakehouse.lib.lakehouse import LakehouseResource, MaterializeRefused

pytestmark = pytest.mark.integration

V1 = pa.schema([("id", pa.int64()), ("name", pa.string())])
V2 = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.int32())])


def _namespace(label: str) -> str:
    return f"materialize_{label}_{uuid.uuid4().hex[:8]}"


def _rows_by_name(paths: list[Path], schema: pa.Schema) -> list[dict]:
    """The files' rows read by column name, a column a file lacks as NULL: how DuckDB reads them."""
    rows = []
    for path in paths:
        data = pq.read_table(path)
        rows += pa.table({f.name: data[f.name].cast(f.type) if f.name in data.column_names
                          else pa.nulls(data.num_rows, f.type) for f in schema}).to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def _table_rows(lakehouse: LakehouseResource, ns: str, table: str) -> list[dict]:
    return sorted(lakehouse.read(ns, table).to_pylist(), key=lambda r: r["id"])


def test_the_files_hold_the_tables_rows_also_after_schema_evolution(lakehouse, tmp_path):
    ns = _namespace("evolved")
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", None]}),
                                       mode="append"))
    # A later write adds a column (schema evolution): the first file has no "score" at all.
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([3], pa.int64()), "name": ["c"],
                                                          "score": pa.array([7], pa.int32())}), mode="append"))
    # And one staged by publish_files: no Iceberg field ids, resolved by the table's name mapping.
    staged = tmp_path / "staged.parquet"
    pq.write_table(pa.table({"id": pa.array([4], pa.int64()), "name": ["d"], "score": pa.array([None], pa.int32())}),
                   staged)
    list(lakehouse.publish_files(ns, "t", [staged], V2, mode="append"))

    paths = lakehouse.materialize(ns, "t", tmp_path / "out")

    assert len(paths) == 3 and all(p.parent == tmp_path / "out" for p in paths)
    assert sum("score" not in pq.read_schema(p).names for p in paths) == 1  # copied as is, not rewritten
    assert _rows_by_name(paths, V2) == _table_rows(lakehouse, ns, "t") == [
        {"id": 1, "name": "a", "score": None}, {"id": 2, "name": None, "score": None},
        {"id": 3, "name": "c", "score": 7}, {"id": 4, "name": "d", "score": None}]


def test_after_an_overwrite_only_the_live_files_are_copied(lakehouse, tmp_path):
    ns = _namespace("overwrite")
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})))
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([5], pa.int64()), "name": ["e"]})))

    paths = lakehouse.materialize(ns, "t", tmp_path)

    assert _rows_by_name(paths, V1) == _table_rows(lakehouse, ns, "t") == [{"id": 5, "name": "e"}]


def test_a_missing_table_an_empty_one_and_one_emptied_by_an_overwrite_have_no_files(lakehouse, tmp_path):
    ns = _namespace("empty")
    lakehouse.ensure_table(ns, "never_written", V1)
    list(lakehouse.write_audit_publish(ns, "emptied", pa.table({"id": pa.array([1], pa.int64()), "name": ["a"]})))
    list(lakehouse.write_audit_publish(ns, "emptied", V1.empty_table()))

    assert lakehouse.materialize(ns, "absent", tmp_path) == []
    assert lakehouse.materialize(ns, "never_written", tmp_path) == []
    assert lakehouse.materialize(ns, "emptied", tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_a_snapshot_with_delete_files_is_refused_naming_the_table(lakehouse, tmp_path):
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    ns = _namespace("deletes")
    list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([1, 2], pa.int64()), "name": ["a", "b"]})))
    table = lakehouse.load_table(ns, "t")
    [task] = table.scan().plan_files()
    # A position delete file (another engine's row-level delete; this platform never writes one): only
    # its manifest entry matters, materialize must refuse before reading any file.
    deletes = DataFile.from_args(content=DataFileContent.POSITION_DELETES, file_path=task.file.file_path + ".deletes",
                                 file_format=FileFormat.PARQUET, partition=Record(), record_count=1,
                                 file_size_in_bytes=1, spec_id=table.metadata.default_spec_id)
    with table.transaction() as tx, tx.update_snapshot().fast_append() as append:
        append.append_data_file(deletes)

    with pytest.raises(MaterializeRefused, match=f"{ns}.t.*delete files"):
        lakehouse.materialize(ns, "t", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_table_with_a_renamed_or_re_added_column_is_refused_naming_it(lakehouse, tmp_path):
    """Read by name, older files would give NULL for a renamed column, or the dropped column's values
    for one added again under its name, without any error (pyiceberg reads by field id)."""
    rows = pa.table({"id": pa.array([1], pa.int64()), "name": ["a"]})
    renamed, readded = _namespace("renamed"), _namespace("readded")
    for ns in (renamed, readded):
        list(lakehouse.write_audit_publish(ns, "t", rows, mode="append"))
    with lakehouse.load_table(renamed, "t").update_schema() as update:
        update.rename_column("name", "full_name")
    with lakehouse.load_table(readded, "t").update_schema() as update:
        update.delete_column("name")
    with lakehouse.load_table(readded, "t").update_schema() as update:
        update.add_column("name", StringType())

    with pytest.raises(MaterializeRefused, match=f"{renamed}.t: column 'full_name' was renamed from 'name'"):
        lakehouse.materialize(renamed, "t", tmp_path)
    with pytest.raises(MaterializeRefused, match=f"{readded}.t: column 'name' was dropped and added again"):
        lakehouse.materialize(readded, "t", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_file_removed_while_it_is_copied_fails_naming_the_table_and_leaves_no_file(lakehouse, s3, tmp_path):
    ns = _namespace("vanished")
    for i in range(2):
        list(lakehouse.write_audit_publish(ns, "t", pa.table({"id": pa.array([i], pa.int64()), "name": ["a"]}),
                                           mode="append"))
    tasks = list(lakehouse.load_table(ns, "t").scan().plan_files())
    # The second file goes (as maintenance removes an expired snapshot's files): the first was copied.
    bucket, _, key = tasks[1].file.file_path.removeprefix("s3://").partition("/")
    s3.get_client().delete_object(Bucket=bucket, Key=key)

    with pytest.raises(RuntimeError, match=f"{ns}.t: data file .* vanished while it was copied"):
        lakehouse.materialize(ns, "t", tmp_path)
    assert list(tmp_path.iterdir()) == []
