"""Raw backups of the ad API's responses in s3://ad-data/backup/: one write-once object per API call,
bytes unchanged, sha256 in the object metadata. Keys sort chronologically, which replay relies on:

    backup/date=YYYY-MM-DD/<HHMMSSffffff>-<run_id>-<n>.json      (UTC fetch time, page n of the run)
"""

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from io import BytesIO

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from covid_lakehouse.defs.ads.api import FetchedPage
from covid_lakehouse.defs.ads.settings import BACKUP_PREFIX, BUCKET
from covid_lakehouse.lib.s3 import LakeS3Resource, StoredObject

_KEY = re.compile(r"date=(\d{4}-\d{2}-\d{2})/(\d{12})-(.+)-(\d+)\.json$")
_DELETE_BATCH = 1000  # S3 DeleteObjects limit


class BackupError(dg.Failure):
    """A backup could not be written or read back; the load stops before touching the warehouse."""

    def __init__(self, description: str):
        super().__init__(description=description)


@dataclass(frozen=True)
class BackupObject:
    key: str
    run_id: str
    page: int
    fetched_at: datetime
    body: bytes


def backup_key(fetched_at: datetime, run_id: str, page: int, prefix: str = BACKUP_PREFIX) -> str:
    at = fetched_at.astimezone(UTC)
    return f"{prefix}date={at:%Y-%m-%d}/{at:%H%M%S%f}-{run_id}-{page}.json"


def parse_backup_key(key: str) -> tuple[datetime, str, int]:
    """(fetched_at, run_id, page) from a key written by backup_key()."""
    match = _KEY.search(key)
    if not match:
        raise ValueError(f"{key!r} is not an ads backup key (expected date=YYYY-MM-DD/HHMMSSffffff-<run>-<n>.json)")
    day, clock, run_id, page = match.groups()
    fetched_at = datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H%M%S%f").replace(tzinfo=UTC)
    return fetched_at, run_id, int(page)


def write_backup(s3: LakeS3Resource, page: FetchedPage, run_id: str, page_number: int,
                 bucket: str = BUCKET, prefix: str = BACKUP_PREFIX) -> StoredObject:
    """Store the response as received, never overwriting; confirmed by reading the object's head."""
    key = backup_key(page.fetched_at, run_id, page_number, prefix)
    try:
        return s3.put_write_once(bucket, key, BytesIO(page.body), metadata={
            "fetched-at": page.fetched_at.astimezone(UTC).isoformat(), "run-id": run_id})
    except (BotoCoreError, ClientError, RuntimeError) as err:
        raise BackupError(f"backup of the ads API response to s3://{bucket}/{key} failed "
                          f"({type(err).__name__}: {err}); nothing was loaded into the warehouse") from None


def list_backup_keys(client, bucket: str = BUCKET, prefix: str = BACKUP_PREFIX) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return sorted(keys)


def read_backup(client, key: str, bucket: str = BUCKET) -> BackupObject:
    """One backup's bytes, checked against the sha256 recorded when it was written."""
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"].read()
    recorded = response.get("Metadata", {}).get("sha256")
    actual = hashlib.sha256(body).hexdigest()
    if recorded != actual:
        raise BackupError(f"s3://{bucket}/{key}: content does not match its recorded sha256 "
                          f"({recorded} recorded, {actual} read); the backup is damaged")
    fetched_at, run_id, page = parse_backup_key(key)
    return BackupObject(key, run_id, page, fetched_at, body)


def purge_backups(client, *, keep_days: int, today: date, bucket: str = BUCKET,
                  prefix: str = BACKUP_PREFIX) -> int:
    """Delete the backups of days older than ``keep_days`` before ``today``; returns objects deleted.
    Rows loaded from them stay in the warehouse, but replay can no longer rebuild them."""
    if keep_days < 1:
        raise ValueError("keep_days must be at least 1")
    oldest_kept = today - timedelta(days=keep_days)
    deleted = 0
    for day_prefix in _day_prefixes(client, bucket, prefix):
        day = date.fromisoformat(day_prefix[len(prefix) + len("date="):].rstrip("/"))
        if day >= oldest_kept:
            continue
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=day_prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = keys[i:i + _DELETE_BATCH]
                result = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if result.get("Errors"):
                    raise BackupError(f"could not delete expired backups under s3://{bucket}/{day_prefix}: "
                                      f"{result['Errors'][:3]}")
                deleted += len(batch)
    return deleted


def _day_prefixes(client, bucket: str, prefix: str) -> Iterator[str]:
    pattern = re.compile(re.escape(prefix) + r"date=\d{4}-\d{2}-\d{2}/$")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            if pattern.match(common["Prefix"]):
                yield common["Prefix"]
