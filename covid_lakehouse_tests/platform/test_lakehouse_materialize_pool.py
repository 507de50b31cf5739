"""LakehouseResource.materialize copies a table's data files a few at a time (landing_row gains a file per
run): every file whole, named and returned in the manifest's order; a copy that fails while others are
under way leaves none of the call's files behind (test_lakehouse_materialize.py: the rest of its contract)."""

import threading
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.lib.lakehouse import MATERIALIZE_THREADS, LakehouseResource

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])
FILES = 12
# Bounds the waits of the gated streams below, so that a copy which never overlaps fails the test
# instead of hanging it; never reached when the copies run side by side.
WAIT_S = 10


def _table_of_many_files(lakehouse: LakehouseResource, tmp_path) -> tuple[str, list]:
    ns = f"materialize_pool_{uuid.uuid4().hex[:8]}"
    staged = []
    for i in range(FILES):
        staged.append(tmp_path / f"staged-{i}.parquet")
        pq.write_table(pa.table({"id": pa.array(range(i * 100, i * 100 + 50 + i), pa.int64()),
                                 "name": [f"file {i}"] * (50 + i)}), staged[-1])
    list(lakehouse.publish_files(ns, "t", staged, SCHEMA, mode="append"))
    return ns, list(lakehouse.load_table(ns, "t").scan().plan_files())


def test_a_table_of_many_files_is_copied_whole_in_the_manifests_order(lakehouse, s3, tmp_path):
    ns, tasks = _table_of_many_files(lakehouse, tmp_path)
    assert len(tasks) == FILES > MATERIALIZE_THREADS

    paths = lakehouse.materialize(ns, "t", tmp_path / "out")

    assert [p.name for p in paths] == [f"t-{n:05d}.parquet" for n in range(FILES)]
    assert sorted(tmp_path.joinpath("out").iterdir()) == paths
    client = s3.get_client()
    for path, task in zip(paths, tasks, strict=True):  # byte for byte the manifest's file at its position
        bucket, _, key = task.file.file_path.removeprefix("s3://").partition("/")
        assert path.read_bytes() == client.get_object(Bucket=bucket, Key=key)["Body"].read()


class _GatedStream:
    """An S3 object's stream. The failing one waits until the other copies have each written a chunk
    and are still copying (blocked in their next read), records what is on disk, then fails."""

    def __init__(self, inner, gate: "_Gate", failing: bool):
        self.inner, self.gate, self.failing, self.reads = inner, gate, failing, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()

    def read(self, size):
        self.reads += 1
        gate = self.gate
        if self.failing:
            with gate.cond:
                gate.overlapped = gate.cond.wait_for(lambda: gate.copying >= MATERIALIZE_THREADS - 1, WAIT_S)
            gate.on_disk = sorted(p.name for p in gate.directory.iterdir())
            gate.failed.set()
            raise OSError("S3 read failed: connection reset by peer")
        if self.reads == 2:  # the first chunk is written: this copy is under way
            with gate.cond:
                gate.copying += 1
                gate.cond.notify_all()
            gate.failed.wait(WAIT_S)
        return self.inner.read(size)


class _Gate:
    def __init__(self, real_fs, failing_key: str, directory):
        self.real_fs, self.failing_key, self.directory = real_fs, failing_key, directory
        self.cond, self.failed = threading.Condition(), threading.Event()
        self.copying, self.overlapped, self.on_disk = 0, False, []

    def open_input_stream(self, key):
        return _GatedStream(self.real_fs.open_input_stream(key), self, key == self.failing_key)


def test_a_copy_failing_while_others_copy_fails_the_call_and_leaves_no_file(lakehouse, tmp_path, monkeypatch):
    ns, tasks = _table_of_many_files(lakehouse, tmp_path)
    out = tmp_path / "out"
    # The third file fails: the first copies (up to the pool's size) run beside it.
    gate = _Gate(lakehouse.staging_filesystem(), tasks[2].file.file_path.removeprefix("s3://"), out)
    monkeypatch.setattr(LakehouseResource, "staging_filesystem", lambda self: gate)

    with pytest.raises(OSError, match="connection reset by peer"):
        lakehouse.materialize(ns, "t", out)

    assert gate.overlapped  # the other copies were under way when it failed ...
    assert len(gate.on_disk) >= MATERIALIZE_THREADS  # its file and theirs, open (written in part)
    assert list(out.iterdir()) == []  # ... and none of their files is left
