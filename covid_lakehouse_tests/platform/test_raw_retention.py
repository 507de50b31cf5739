"""Raw retention: objects under a prefix with a retention are deleted once older than its days, the
longest matching prefix wins, everything else is kept; the daily job runs on the real S3 server."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from covid_lakehouse.defs.platform.raw_retention import (
    RAW_BUCKET,
    expire_raw,
    raw_retention_daily,
    raw_retention_job,
    retention_rules,
)
from covid_lakehouse.lib.settings import SettingError


@pytest.fixture
def raw_objects(s3):
    client = s3.get_client()
    base = f"tests/retention-{uuid.uuid4().hex[:8]}/"
    keys = [f"{base}marketing/clevertap/date=2026-01-01/p.tar", f"{base}marketing/facebook/date=2026-01-01/p.tar",
            f"{base}marketing/clevertap/profiles/keep-longer.tar", f"{base}ny_testing/rows.json"]
    for key in keys:
        client.upload_fileobj(io.BytesIO(b"{}"), RAW_BUCKET, key)
    yield client, base
    for key in keys:
        client.delete_object(Bucket=RAW_BUCKET, Key=key)


def _left(client, base: str) -> set[str]:
    listing = client.list_objects_v2(Bucket=RAW_BUCKET, Prefix=base).get("Contents", [])
    return {o["Key"].removeprefix(base) for o in listing}


def test_objects_past_their_prefix_retention_are_deleted_and_others_kept(raw_objects):
    client, base = raw_objects
    rules = retention_rules(f"{base}marketing/clevertap/=90, {base}marketing/clevertap/profiles/=400,"
                            f"{base}marketing/facebook/=365")
    stored = datetime.now(UTC)

    assert expire_raw(client, rules, stored + timedelta(days=89)) == {p: 0 for p in rules}
    deleted = expire_raw(client, rules, stored + timedelta(days=91))

    assert deleted[f"{base}marketing/clevertap/"] == 1
    assert _left(client, base) == {"marketing/facebook/date=2026-01-01/p.tar",
                                   "marketing/clevertap/profiles/keep-longer.tar", "ny_testing/rows.json"}
    expire_raw(client, rules, stored + timedelta(days=401))
    assert _left(client, base) == {"ny_testing/rows.json"}  # under no rule: kept


@pytest.mark.parametrize("value, problem", [("marketing=30", "prefix/=days"), ("marketing/=soon", "whole number"),
                                            ("marketing/=0", "at least 1"), ("../x/=3", "prefix/=days")])
def test_a_bad_retention_setting_names_the_setting(value, problem):
    with pytest.raises(SettingError, match=f"RAW_RETENTION_DAYS.*{problem}"):
        retention_rules(value)


def test_the_daily_job_runs_on_the_real_bucket_and_keeps_fresh_objects(raw_objects, resources, monkeypatch):
    client, base = raw_objects
    monkeypatch.setenv("RAW_RETENTION_DAYS", f"{base}marketing/clevertap/=1")
    result = raw_retention_job.execute_in_process(resources={"s3": resources["s3"]})
    assert result.success
    assert len(_left(client, base)) == 4  # stored today: younger than a day
    assert raw_retention_daily.cron_schedule == "30 3 * * *"
    assert raw_retention_daily.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.delenv("RAW_RETENTION_DAYS")
    assert retention_rules() == {"marketing/clevertap/": 90}  # the default: CleverTap pages hold e-mail, phone
