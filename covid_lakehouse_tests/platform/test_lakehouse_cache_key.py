"""The catalog, FileIO and staging filesystem a LakehouseResource caches per process are shared only by
resources of the same configuration, credentials included: a second resource with other keys (another
tenant's bucket policy, a read-only identity) never writes through the first one's client. The secret's digest in the key is
taken once per secret and process, not on every call."""

import hashlib
from types import SimpleNamespace

from covid_lakehouse.lib import lakehouse as lakehouse_module
from covid_lakehouse.lib.lakehouse import LakehouseResource


def resource(**overrides: str) -> LakehouseResource:
    settings = {"catalog_dsn": "postgresql://catalog@127.0.0.1:1/catalog", "warehouse": "s3://lake/warehouse",
                "s3_endpoint_url": "http://127.0.0.1:1", "aws_access_key_id": "writer",
                "aws_secret_access_key": "writer-secret", **overrides}
    return LakehouseResource(**settings)


def test_the_staging_filesystem_is_shared_by_one_configuration_only() -> None:
    first = resource().staging_filesystem()
    assert resource().staging_filesystem() is first  # the same configuration: one client per process
    assert resource(aws_access_key_id="reader").staging_filesystem() is not first
    assert resource(aws_secret_access_key="rotated").staging_filesystem() is not first
    assert resource(region="eu-west-1").staging_filesystem() is not first
    # A copy with other credentials, however made, gets its own client.
    assert resource().model_copy(update={"aws_access_key_id": "reader"}).staging_filesystem() is not first


def test_the_secret_is_digested_once_not_per_call(lakehouse: LakehouseResource, monkeypatch) -> None:
    digests = []  # one entry per digest taken (not the secret: a failing assert would print it)
    real = hashlib.sha256

    def counting(data: bytes = b""):
        digests.append(1)
        return real(data)

    monkeypatch.setattr(lakehouse_module, "hashlib", SimpleNamespace(sha256=counting))
    lakehouse_module.secret_digest.cache_clear()  # as in a fresh process
    fresh = LakehouseResource(**dict(lakehouse))
    for _ in range(3):
        assert fresh.catalog() is fresh.catalog()
        fresh.file_io()
        fresh.staging_filesystem()
    assert len(digests) == 1
