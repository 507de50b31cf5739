"""publish_files copies each staged file to S3 holding one upload part at a time, not the whole file:
with background writes (pyiceberg's FileIO default) a copy from local disk outruns the upload and the
parts still uploading queued up in Arrow's memory, so a tenant's publish grew with its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration

MB = 1 << 20
# In a fresh process, so Arrow's high-water mark is the publish's own.
_PUBLISH = """
import json, sys
import pyarrow as pa
import pyarrow.parquet as pq
from covid_lakehouse.lib.lakehouse import LakehouseResource
spec = json.loads(sys.argv[1])
lakehouse = LakehouseResource(**spec["lakehouse"])
path = spec["path"]
list(lakehouse.publish_files("staging_memory", "t", [path], pq.read_schema(path)))
print(json.dumps({"max_memory": pa.default_memory_pool().max_memory(),
                  "rows": lakehouse.load_table("staging_memory", "t").scan().to_arrow().num_rows}))
"""


def test_publishing_a_large_file_holds_one_upload_part_at_a_time_not_the_file(services, lakehouse, tmp_path):
    path = tmp_path / "large.parquet"
    blobs = pa.array([os.urandom(MB) for _ in range(96)], pa.binary())  # random: the file stays ~96 MB
    pq.write_table(pa.table({"id": pa.array(range(96), pa.int64()), "blob": blobs}), path, compression="none")
    assert path.stat().st_size > 90 * MB
    spec = {"path": str(path), "lakehouse": {
        "catalog_dsn": lakehouse.catalog_dsn, "warehouse": lakehouse.warehouse, "s3_endpoint_url": lakehouse.s3_endpoint_url,
        "aws_access_key_id": lakehouse.aws_access_key_id, "aws_secret_access_key": lakehouse.aws_secret_access_key}}
    done = subprocess.run([sys.executable, "-c", _PUBLISH, json.dumps(spec)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"] == 96
    # one part being uploaded (and the one filling) in Arrow's pool: tens of MB at most, not the file
    assert result["max_memory"] < 40 * MB, result
