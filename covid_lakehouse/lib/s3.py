"""S3 access: boto3 client, pyarrow filesystem and write-once raw objects, from one set of settings."""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from typing import BinaryIO

import dagster as dg
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from covid_lakehouse.lib.settings import ServiceSettings, SettingError

_CLIENT_CONFIG = Config(
    s3={"addressing_style": "path"},  # MinIO and SeaweedFS serve buckets by path
    retries={"max_attempts": 3, "mode": "standard"},
    connect_timeout=5,
    read_timeout=60,
)


_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


class ObjectExistsError(RuntimeError):
    """A write-once key already holds an object: raw data is never overwritten."""


class KeyOutsidePrefixError(SettingError):
    """An object key from run config or a run tag is not a plain key under the domain's own prefix."""


def key_in_prefix(key: str, prefix: str, *, field: str) -> str:
    """``key`` if it is a relative key under ``prefix`` (no ``..``, ``.`` or empty segments, no leading
    ``/``, no backslash or control characters), else KeyOutsidePrefixError naming ``field``: whoever
    launches a run must not point a load at another domain's raw objects (CleverTap's hold PII)."""
    base = prefix.strip("/") + "/"
    segments = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(ord(c) < 32 or c == "\x7f" for c in key):
        problem = "is empty, absolute or holds a backslash or control character"
    elif any(s in ("", ".", "..") for s in segments):
        problem = "has an empty, '.' or '..' path segment"
    elif len(key) > 1024:
        problem = "is longer than 1024 characters"
    elif not key.startswith(base):
        problem = f"is not under this domain's prefix {base!r}"
    else:
        return key
    raise KeyOutsidePrefixError(f"{field}: key {key[:200]!r} {problem}")


def s3_client(settings: ServiceSettings):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=_CLIENT_CONFIG,
    )


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    sha256: str
    size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class LakeS3Resource(S3Resource):
    """dagster-aws's S3Resource pointed at our endpoint, plus pyarrow access and write-once puts."""

    def get_client(self):  # path-style addressing for S3-compatible servers
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            region_name=self.region_name or "us-east-1",
            config=_CLIENT_CONFIG,
        )

    def arrow_filesystem(self, *, background_writes: bool = True):
        """pyarrow's S3 filesystem on the same endpoint and credentials. ``background_writes=False``: an
        output stream uploads one part at a time instead of queueing every part in flight in memory."""
        from pyarrow import fs

        endpoint = self.endpoint_url or ""
        scheme = "http" if endpoint.startswith("http://") else "https"  # no endpoint: AWS itself, over TLS
        return fs.S3FileSystem(
            access_key=self.aws_access_key_id,
            secret_key=self.aws_secret_access_key,
            endpoint_override=endpoint.split("://", 1)[-1] or None,
            scheme=scheme,
            region=self.region_name or "us-east-1",
            force_virtual_addressing=False,
            background_writes=background_writes,
        )

    def put_write_once(self, bucket: str, key: str, body: BinaryIO, *, metadata: dict[str, str] | None = None) -> StoredObject:
        """Upload ``body`` to a key that must not exist yet (raw data is replayable only if never
        overwritten). One request: ``If-None-Match: *`` makes the server refuse an existing key
        atomically, Content-MD5 makes it refuse a body damaged on the way, and the sha256 is kept as
        object metadata for readers to verify."""
        digest, md5, size = _digests_of(body)
        body.seek(0)
        try:
            self.cached_client().put_object(
                Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentMD5=md5,
                Metadata={**(metadata or {}), "sha256": digest},
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise ObjectExistsError(f"s3://{bucket}/{key} already exists; raw objects are write-once") from None
            raise
        return StoredObject(bucket, key, digest, size)

    def cached_client(self):
        """One client per endpoint and key per process (boto3 clients are thread-safe and slow to build)."""
        # the secret's digest is part of the key so a rotated or wrong secret never reuses a client
        secret = hashlib.sha256((self.aws_secret_access_key or "").encode()).hexdigest()
        cache_key = (self.endpoint_url, self.aws_access_key_id, secret, self.region_name)
        with _CLIENTS_LOCK:
            if cache_key not in _CLIENTS:
                _CLIENTS[cache_key] = self.get_client()
            return _CLIENTS[cache_key]

    def object_exists(self, bucket: str, key: str, *, client=None) -> bool:
        client = client or self.get_client()
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    @classmethod
    def from_env(cls) -> LakeS3Resource:
        return cls(
            endpoint_url=dg.EnvVar("S3_ENDPOINT_URL"),
            aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
            region_name="us-east-1",
        )


def _digests_of(body: BinaryIO) -> tuple[str, str, int]:
    """sha256 (hex) and Content-MD5 (base64) of a seekable body, in one pass."""
    body.seek(0)
    sha, md5 = hashlib.sha256(), hashlib.md5()
    size = 0
    for chunk in iter(lambda: body.read(1 << 20), b""):
        sha.update(chunk)
        md5.update(chunk)
        size += len(chunk)
    return sha.hexdigest(), base64.b64encode(md5.digest()).decode(), size
