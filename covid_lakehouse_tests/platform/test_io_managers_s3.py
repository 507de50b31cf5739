"""S3ObjectIOManager over the real S3 server: write-once content-addressed objects, loading what an
asset's materialization recorded (also objects the asset stored itself), and a blocking audit that
stops a bad output before anything is stored."""

import hashlib
import io as iolib
import uuid

import dagster as dg
import pytest

from covid_lakehouse.lib.io_managers import S3ObjectIOManager
from covid_lakehouse.lib.wap import Audit, AuditResult, audit_check_specs, audit_or_raise

pytestmark = pytest.mark.integration


@pytest.fixture
def io(s3) -> dict:
    return {"s3_object_io_manager": S3ObjectIOManager(s3=s3, prefix="test-io/" + uuid.uuid4().hex[:8])}


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    listed = s3.get_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_bytes_are_stored_once_and_loaded_downstream(io, s3, instance):
    body = b"id,value\n1,2\n"

    @dg.asset(io_manager_key="s3_object_io_manager")
    def raw_body() -> bytes:
        return body

    got = []

    @dg.asset
    def reader(raw_body: bytes) -> None:
        got.append(raw_body)

    for _ in range(2):  # the same bytes: the same key, stored once, loaded both times
        assert dg.materialize([raw_body, reader], resources=io, instance=instance).success
    prefix = io["s3_object_io_manager"].prefix
    assert _keys(s3, "raw", prefix) == [f"{prefix}/raw_body/sha256={hashlib.sha256(body).hexdigest()}"]
    assert got == [body, body]


def test_objects_an_asset_stored_itself_load_from_its_materialization(io, s3, instance):
    key = f"test-io/self/{uuid.uuid4().hex}.json"
    body = b'{"rows": []}'
    s3.put_write_once("raw", key, iolib.BytesIO(body))

    @dg.asset(io_manager_key="s3_object_io_manager")
    def stored_itself() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"s3_uri": f"s3://raw/{key}",
                                              "sha256": hashlib.sha256(body).hexdigest()})

    defs = dg.Definitions(assets=[stored_itself], resources=io)
    assert dg.materialize([stored_itself], resources=io, instance=instance).success
    assert defs.load_asset_value(stored_itself.key, instance=instance) == body


def _not_empty(body: bytes) -> AuditResult:
    return AuditResult(bool(body.strip()), f"{len(body)} bytes")


AUDITS = [Audit("not_empty", _not_empty, blocking=True)]


def test_a_failing_blocking_audit_stops_the_output_before_it_is_stored(io, s3):
    key = dg.AssetKey(["audited_body"])

    @dg.asset(key=key, io_manager_key="s3_object_io_manager", check_specs=audit_check_specs(key, AUDITS))
    def audited_body():
        body = b"   "
        yield from audit_or_raise(AUDITS, body, asset_key=key)
        yield dg.Output(body)

    result = dg.materialize([audited_body], resources=io, raise_on_error=False)
    assert not result.success
    assert [e.passed for e in result.get_asset_check_evaluations()] == [False]
    assert _keys(s3, "raw", io["s3_object_io_manager"].prefix) == []
