"""Iceberg maintenance on the real catalog and S3: snapshots past the retention expire (never the
current one), a file any remaining snapshot references is never deleted, an unreferenced file is
deleted only once older than the margin, and the daily job covers every namespace."""

import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

from covid_lakehouse.defs.platform.maintenance import ORPHAN_MARGIN_HOURS, lakehouse_maintenance
from covid_lakehouse.lib.lakehouse_maintenance import bucket_key, maintain_table, referenced_files
from covid_lakehouse.lib.policies import MAX_RUNTIME_TAG
from covid_lakehouse.runtime import REPO_ROOT

pytestmark = pytest.mark.integration

RETENTION, MARGIN = timedelta(days=7), timedelta(hours=24)


def _rows(start: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + 10), pa.int64())})


@pytest.fixture
def table(lakehouse):
    namespace = f"maint_{uuid.uuid4().hex[:8]}"
    for start in (0, 100, 200):  # three overwrites: five snapshots (an overwrite is a delete + an append)
        list(lakehouse.write_audit_publish(namespace, "t", _rows(start)))
    yield namespace, lakehouse.load_table(namespace, "t")
    lakehouse.catalog().drop_table((namespace, "t"))
    lakehouse.catalog().drop_namespace(namespace)


def _objects(s3, table) -> set[tuple[str, str]]:
    bucket, prefix = bucket_key(table.metadata.location + "/")
    pages = s3.get_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {(bucket, o["Key"]) for page in pages for o in page.get("Contents", [])}


def _orphan(s3, table, name: str) -> tuple[tuple[str, str], datetime]:
    """An unreferenced parquet file under the table's data folder, as a failed commit leaves; and its
    LastModified as S3 reports it (the clock maintenance compares with)."""
    bucket, key = bucket_key(f"{table.metadata.location}/data/{name}.parquet")
    client = s3.get_client()
    client.put_object(Bucket=bucket, Key=key, Body=b"PAR1 not committed")
    return (bucket, key), client.head_object(Bucket=bucket, Key=key)["LastModified"]


def test_old_snapshots_expire_and_only_their_files_go(lakehouse, s3, table):
    namespace, tbl = table
    current = tbl.current_snapshot()
    live = referenced_files(tbl)
    # Of the current snapshot only: what a reader of the table needs.
    needed = {bucket_key(current.manifest_list)}
    for manifest in current.manifests(tbl.io):
        needed.add(bucket_key(manifest.manifest_path))
        needed |= {bucket_key(e.data_file.file_path) for e in manifest.fetch_manifest_entry(tbl.io)}
    assert len(tbl.metadata.snapshots) == 5

    later = datetime.now(UTC) + RETENTION + timedelta(days=1)  # every snapshot and file is old by then
    report = maintain_table(lakehouse.catalog(), (namespace, "t"), s3.get_client(), retention=RETENTION,
                            margin=MARGIN, now=later)

    tbl = lakehouse.load_table(namespace, "t")
    assert [s.snapshot_id for s in tbl.metadata.snapshots] == [current.snapshot_id]
    assert report.expired_snapshots == 4
    remaining = _objects(s3, tbl)
    assert needed <= remaining  # nothing a live snapshot references was deleted
    assert referenced_files(tbl) <= remaining
    assert report.deleted_files and all(bucket_key(u) in live - referenced_files(tbl) for u in report.deleted_files)
    assert tbl.scan().to_arrow()["id"].to_pylist() == list(range(200, 210))


def test_snapshots_within_the_retention_and_their_files_stay(lakehouse, s3, table):
    namespace, tbl = table
    before = _objects(s3, tbl)
    report = maintain_table(lakehouse.catalog(), (namespace, "t"), s3.get_client(), retention=RETENTION,
                            margin=MARGIN, now=datetime.now(UTC) + MARGIN + timedelta(hours=1))
    assert (report.expired_snapshots, report.deleted_files) == (0, [])
    tbl = lakehouse.load_table(namespace, "t")
    assert len(tbl.metadata.snapshots) == 5 and _objects(s3, tbl) == before
    # time travel to the first snapshot still reads
    first = tbl.metadata.snapshots[0].snapshot_id
    assert tbl.scan(snapshot_id=first).to_arrow()["id"].to_pylist() == list(range(10))


def test_an_orphan_is_deleted_only_once_older_than_the_margin(lakehouse, s3, table):
    namespace, tbl = table
    orphan, written = _orphan(s3, tbl, "failed-commit-00001")
    catalog, client = lakehouse.catalog(), s3.get_client()

    young = maintain_table(catalog, (namespace, "t"), client, retention=RETENTION, margin=MARGIN, now=written + MARGIN)
    assert young.deleted_files == [] and young.young_orphans == 1
    assert orphan in _objects(s3, tbl)

    old = maintain_table(catalog, (namespace, "t"), client, retention=RETENTION, margin=MARGIN,
                         now=written + MARGIN + timedelta(seconds=1))
    assert old.deleted_files == [f"s3://{orphan[0]}/{orphan[1]}"]
    assert orphan not in _objects(s3, tbl)
    assert lakehouse.load_table(namespace, "t").scan().to_arrow().num_rows == 10


def test_another_tables_files_are_not_its_orphans(lakehouse, s3, table):
    """Table "t" and table "t2" share a name prefix: t's listing must not reach into t2's location."""
    namespace, tbl = table
    list(lakehouse.write_audit_publish(namespace, "t2", _rows(0)))
    try:
        other = lakehouse.load_table(namespace, "t2")
        before = _objects(s3, other)
        maintain_table(lakehouse.catalog(), (namespace, "t"), s3.get_client(), retention=RETENTION, margin=MARGIN,
                       now=datetime.now(UTC) + RETENTION + timedelta(days=1))
        assert _objects(s3, other) == before
    finally:
        lakehouse.catalog().drop_table((namespace, "t2"))


def test_the_daily_job_covers_every_namespace(lakehouse, s3, resources, instance):
    namespaces = [f"maint_tenant_{uuid.uuid4().hex[:6]}_{i}" for i in range(3)]
    for ns in namespaces:
        list(lakehouse.write_audit_publish(ns, "care_site", _rows(0)))
        list(lakehouse.write_audit_publish(ns, "care_site", _rows(10)))
    try:
        result = lakehouse_maintenance.execute_in_process(resources=resources, instance=instance)
        assert result.success
        [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        tables = output.event_specific_data.metadata["tables"].value
        assert tables >= len(namespaces)
        for ns in namespaces:  # recent snapshots are within the retention
            assert len(lakehouse.load_table(ns, "care_site").metadata.snapshots) == 3
    finally:
        for ns in namespaces:
            lakehouse.catalog().drop_table((ns, "care_site"))
            lakehouse.catalog().drop_namespace(ns)


def test_the_default_margin_outlasts_every_run_allowed():
    import yaml

    from covid_lakehouse.definitions import code_location

    margin = float(ORPHAN_MARGIN_HOURS.default) * 3600
    default = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["run_monitoring"]["max_runtime_seconds"]
    tagged = [float(j.tags[MAX_RUNTIME_TAG]) for j in code_location().resolve_all_job_defs()
              if MAX_RUNTIME_TAG in j.tags]
    assert tagged and margin >= max([default, *tagged])


def test_the_job_refuses_a_margin_shorter_than_the_longest_run(resources, monkeypatch):
    monkeypatch.setenv(ORPHAN_MARGIN_HOURS.name, "1")
    with dg.instance_for_test(overrides={"run_monitoring": {"enabled": True, "max_runtime_seconds": 7200}}) as inst:
        result = lakehouse_maintenance.execute_in_process(resources=resources, instance=inst, raise_on_error=False)
    assert not result.success
    assert "LAKEHOUSE_ORPHAN_MARGIN_HOURS=1 is shorter than the longest run allowed (2 h" in str(
        result.failure_data_for_node("maintain_lakehouse").error.message)
