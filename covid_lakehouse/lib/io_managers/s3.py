"""S3ObjectIOManager: raw objects in S3/MinIO as bytes, write-once and content-addressed.

Output: ``bytes`` stored at ``s3://<bucket>/<prefix>/<asset key>/[partition=<key>/]sha256=<digest>``
(bucket and prefix from metadata ``s3/bucket`` / ``s3/prefix`` or the manager's config) with
``If-None-Match: *``: the same bytes land on the same key once, a stored object is never replaced.

Input: the object(s) the upstream asset's latest materialization (of each partition asked for)
recorded in its metadata, whoever wrote them (this manager or the asset itself):
- ``s3_uri`` (and ``sha256``, verified): one object, loaded as ``bytes``;
- ``sources``: a list of ``{name, bucket, key, sha256}``, loaded as ``dict[name, bytes]``.
Several partitions load as ``dict[partition_key, ...]``.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import dagster as dg

from covid_lakehouse.lib.s3 import LakeS3Resource, ObjectExistsError


class RawObjectError(RuntimeError):
    """A stored object does not match what its materialization recorded."""


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not key:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


class S3ObjectIOManager(dg.ConfigurableIOManager):
    s3: LakeS3Resource
    bucket: str = "raw"
    prefix: str = "assets"

    @classmethod
    def from_env(cls) -> S3ObjectIOManager:
        return cls(s3=LakeS3Resource.from_env())

    def handle_output(self, context: dg.OutputContext, obj: bytes | None) -> None:
        if obj is None:  # MaterializeResult: the asset stored its objects itself
            return
        if not isinstance(obj, bytes):
            raise TypeError(f"{context.asset_key.to_user_string()}: S3ObjectIOManager stores bytes, "
                            f"not {type(obj).__name__}")
        metadata = context.definition_metadata or {}
        bucket = str(metadata.get("s3/bucket") or self.bucket)
        digest = hashlib.sha256(obj).hexdigest()
        parts = [str(metadata.get("s3/prefix") or self.prefix).strip("/"), *context.asset_key.path]
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) != 1:
                raise ValueError(f"{context.asset_key.to_user_string()}: one object per partition; got {len(keys)}")
            parts.append(f"partition={keys[0]}")
        key = "/".join([*parts, f"sha256={digest}"])
        try:
            self.s3.put_write_once(bucket, key, io.BytesIO(obj))
            stored = True
        except ObjectExistsError:  # content-addressed: the same bytes are already there
            self._verify(bucket, key, digest)
            stored = False
        context.add_output_metadata({"s3_uri": f"s3://{bucket}/{key}", "sha256": digest, "bytes": len(obj),
                                     "newly_stored": stored})

    def load_input(self, context: dg.InputContext) -> Any:
        key = context.asset_key
        if not context.has_asset_partitions:
            return self._load_recorded(key, self._latest(context.instance, key, None))
        return_dict = len(context.asset_partition_keys) > 1
        loaded = {pk: self._load_recorded(key, self._latest(context.instance, key, pk))
                  for pk in context.asset_partition_keys}
        return loaded if return_dict else next(iter(loaded.values()))

    @staticmethod
    def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> dict[str, Any]:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1).records
        if not records or records[0].asset_materialization is None:
            what = key.to_user_string() + (f" partition {partition}" if partition else "")
            raise dg.Failure(f"{what} has never been materialized: nothing stored to load", allow_retries=False)
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}

    def _load_recorded(self, key: dg.AssetKey, metadata: dict[str, Any]) -> Any:
        if "s3_uri" in metadata:
            bucket, object_key = _split(str(metadata["s3_uri"]))
            return self._get(bucket, object_key, metadata.get("sha256"))
        if isinstance(metadata.get("sources"), list):
            return {s["name"]: self._get(s["bucket"], s["key"], s.get("sha256")) for s in metadata["sources"]}
        raise dg.Failure(f"{key.to_user_string()}: its materialization names no S3 object (metadata 's3_uri' "
                         "or 'sources')", allow_retries=False)

    def _get(self, bucket: str, key: str, sha256: str | None) -> bytes:
        body = self.s3.cached_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        if sha256 and hashlib.sha256(body).hexdigest() != sha256:
            raise RawObjectError(f"s3://{bucket}/{key}: content does not match its recorded sha256 {sha256}")
        return body

    def _verify(self, bucket: str, key: str, digest: str) -> None:
        stored = self.s3.cached_client().head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")
        if stored != digest:
            raise RawObjectError(f"s3://{bucket}/{key} holds sha256 {stored!r}, not {digest}")
