"""LakeS3Resource against the real S3 server: write-once raw objects and pyarrow access."""

import hashlib
import io
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_lakehouse.lib.s3 import ObjectExistsError

pytestmark = pytest.mark.integration


def test_raw_objects_are_write_once_with_their_checksum(s3):
    key = f"test/{uuid.uuid4().hex}.json"
    body = b'{"rows": [1, 2, 3]}'
    stored = s3.put_write_once("raw", key, io.BytesIO(body), metadata={"source": "unit"})
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and stored.size == len(body)
    with pytest.raises(ObjectExistsError, match="write-once"):
        s3.put_write_once("raw", key, io.BytesIO(b"something else"))
    obj = s3.get_client().get_object(Bucket="raw", Key=key)
    assert obj["Body"].read() == body  # the original survived the second attempt
    assert obj["Metadata"] == {"source": "unit", "sha256": stored.sha256}


def test_pyarrow_filesystem_from_the_same_settings(s3):
    key = f"lakehouse/test/{uuid.uuid4().hex}.parquet"
    table = pa.table({"id": list(range(100)), "name": [f"n{i}" for i in range(100)]})
    fs = s3.arrow_filesystem()
    pq.write_table(table, key, filesystem=fs)
    assert pq.read_table(key, filesystem=fs).equals(table)
