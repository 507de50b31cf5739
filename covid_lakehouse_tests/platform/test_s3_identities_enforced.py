"""The deployments' S3 policies (deploy/s3/policies) enforced by a real S3 server: a SeaweedFS started
with one identity per policy, translated by lib/embedded/s3.py's ``seaweed_identities``. A lakehouse
reader or analyst key gets AccessDenied on the raw bucket (API pages with personal data) and reads the
lakehouse; the platform key reads and writes every platform bucket."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from covid_lakehouse.lib.embedded.processes import terminate_server
from covid_lakehouse.lib.embedded.s3 import WEED, seaweed_identities, start_s3
from covid_lakehouse_tests.platform.support import ROOT

POLICIES = ROOT / "deploy" / "s3" / "policies"
BUCKETS = ("raw", "lakehouse", "ad-data", "dagster-compute-logs")
USERS = {  # identity -> the policies compose / Kubernetes attach to it
    "platform": ["covid-lakehouse-rw", "covid-lakehouse-compute-logs-rw"],
    "lakehouse-reader": ["covid-lakehouse-lakehouse-read"],
    "analyst": ["covid-lakehouse-lakehouse-read"],
    "webserver": ["covid-lakehouse-compute-logs-read"],
}


def client(port: int, key: str, secret: str):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def s3_by_identity(tmp_path_factory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("s3-identities")
    keys = {name: (f"{name}-{secrets.token_hex(4)}", secrets.token_urlsafe(24)) for name in ["admin", *USERS]}
    users = [("admin", *keys["admin"], None)]
    users += [(name, *keys[name], [json.loads((POLICIES / f"{p}.json").read_text()) for p in policies])
              for name, policies in USERS.items()]
    config = home / "identities.json"
    config.write_text(json.dumps(seaweed_identities(users)))
    config.chmod(0o600)
    (home / "logs").mkdir()
    data = home / "data"
    port, pid = start_s3(data, home / "logs", *keys["admin"], avoid=set(), identities=config)
    try:
        admin = client(port, *keys["admin"])
        for bucket in BUCKETS:
            admin.create_bucket(Bucket=bucket)
            admin.put_object(Bucket=bucket, Key="ny_testing/page.json", Body=b'{"email": "a@example.com"}')
        yield {name: client(port, *key) for name, key in keys.items()}
    finally:
        terminate_server(pid, program=WEED, folder=data)


def denied(call) -> bool:
    try:
        call()
    except ClientError as err:
        assert err.response["Error"]["Code"] == "AccessDenied", err.response["Error"]
        return True
    return False


@pytest.mark.parametrize("reader", ["lakehouse-reader", "analyst"])
def test_readers_are_denied_raw_and_read_the_lakehouse(s3_by_identity, reader):
    s3 = s3_by_identity[reader]
    assert denied(lambda: s3.get_object(Bucket="raw", Key="ny_testing/page.json"))
    assert denied(lambda: s3.list_objects_v2(Bucket="raw"))
    assert denied(lambda: s3.get_object(Bucket="ad-data", Key="ny_testing/page.json"))
    assert s3.get_object(Bucket="lakehouse", Key="ny_testing/page.json")["Body"].read().startswith(b'{"email"')
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="lakehouse")["Contents"]] == ["ny_testing/page.json"]
    assert denied(lambda: s3.put_object(Bucket="lakehouse", Key="x.json", Body=b"{}"))
    assert denied(lambda: s3.delete_object(Bucket="lakehouse", Key="ny_testing/page.json"))


def test_the_webserver_key_reads_compute_logs_only(s3_by_identity):
    s3 = s3_by_identity["webserver"]
    assert s3.get_object(Bucket="dagster-compute-logs", Key="ny_testing/page.json")["Body"].read()
    for bucket in ("raw", "lakehouse", "ad-data"):
        assert denied(lambda bucket=bucket: s3.get_object(Bucket=bucket, Key="ny_testing/page.json"))
    assert denied(lambda: s3.put_object(Bucket="dagster-compute-logs", Key="x", Body=b"x"))


def test_the_platform_key_reads_and_writes_every_platform_bucket(s3_by_identity):
    s3 = s3_by_identity["platform"]
    for bucket in BUCKETS:
        s3.put_object(Bucket=bucket, Key="platform/x.json", Body=b"{}")
        assert s3.get_object(Bucket=bucket, Key="platform/x.json")["Body"].read() == b"{}"
        s3.delete_object(Bucket=bucket, Key="platform/x.json")
    assert denied(lambda: s3.create_bucket(Bucket="another"))  # no bucket administration
