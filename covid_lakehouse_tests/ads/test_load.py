"""The hourly load, materialized through Dagster on the real PostgreSQL and S3 with the mock API:
backup first (write-once, sha256, bytes unchanged), then checks, then the upsert."""

import hashlib
import json

import pytest

from covid_lakehouse.defs.ads.assets import ADS_KEY, ads
from covid_lakehouse.defs.ads.backup import list_backup_keys, parse_backup_key
from covid_lakehouse.defs.ads.settings import BUCKET, AdsSettings
from covid_lakehouse.lib.embedded import free_port
from covid_lakehouse.lib.s3 import LakeS3Resource
from covid_lakehouse_dev.apis.ads import PATH
from covid_lakehouse_dev.apis.harness import Fault, MockApi
from covid_lakehouse_tests.ads.support import live_ids, materialize

pytestmark = pytest.mark.integration


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_load_backs_up_each_response_unchanged_then_upserts(ads_clean, ads_api: MockApi, ads_resources, instance,
                                                             pg, s3):
    resources = {**ads_resources, "ads_settings": AdsSettings(pages_per_run=2)}
    result = materialize([ads], resources, instance)
    assert result.success
    assert all(_checks(result).values()) and len(_checks(result)) == 4

    client = s3.get_client()
    keys = list_backup_keys(client)
    assert len(keys) == 2
    rows = pg.execute("SELECT ad_id::text, ad_campaign, ad_campaign_raw, backup_key, row_version FROM ads.ads").fetchall()
    assert len(rows) == 200
    for n, key in enumerate(keys, start=1):
        fetched_at, run_id, page = parse_backup_key(key)
        assert (run_id, page) == (result.run_id, n) and key.startswith(f"backup/date={fetched_at:%Y-%m-%d}/")
        obj = client.get_object(Bucket=BUCKET, Key=key)
        body = obj["Body"].read()
        assert obj["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
        served = json.loads(body)  # the bytes as sent: the ads in the table are exactly these
        assert {a["ad_id"] for a in served} == {r[0] for r in rows if r[3] == key}
        for ad in served:
            if ad["ad_campaign"] == "__unknown":
                assert (ad["ad_id"], None, "__unknown") in {(r[0], r[1], r[2]) for r in rows}
    assert len({r[4] for r in rows}) == 200  # every version distinct

    again = materialize([ads], ads_resources, instance)
    assert again.success
    assert len(list_backup_keys(client)) == 3  # a new object per fetch, nothing overwritten
    mat = again.asset_materializations_for_node("ads__ads")[0].metadata
    assert mat["inserted"].value == 100 and mat["dagster/row_count"].value == 300


@pytest.mark.parametrize("outage", ["closed port", "wrong credentials"])
def test_s3_down_during_backup_loads_nothing(ads_clean, ads_api, ads_resources, instance, pg, services, outage):
    broken = LakeS3Resource(
        endpoint_url=f"http://127.0.0.1:{free_port()}" if outage == "closed port" else services.s3_endpoint_url,
        aws_access_key_id="not-the-key-id" if outage == "wrong credentials" else services.aws_access_key_id,
        aws_secret_access_key="not-the-secret" if outage == "wrong credentials" else services.aws_secret_access_key,
        region_name="us-east-1")
    result = materialize([ads], {**ads_resources, "s3": broken}, instance)
    assert not result.success
    failure = result.failure_data_for_node("ads__ads").error.message
    assert "backup of the ads API response to s3://ad-data/backup/" in failure
    assert "nothing was loaded into the warehouse" in failure
    assert "not-the-secret" not in failure
    exists = pg.execute("SELECT to_regclass('ads.ads') IS NOT NULL").fetchone()[0]
    assert not exists or pg.execute("SELECT count(*) FROM ads.ads").fetchone()[0] == 0


@pytest.mark.parametrize(("transform", "check"), [
    (lambda b: b.replace(b'"ad_group": "brand"', b'"ad_group": "sales"'), "ad_group_known"),
    (lambda b: b.replace(b'"ad_id": "', b'"ad_id": "x', 1), "ad_id_valid_unique"),
    (lambda b: json.dumps([{**a, "shown_at": a["shown_at"] + 86_400} for a in json.loads(b)]).encode(),
     "shown_at_not_future"),
])
def test_blocking_checks_stop_the_load_but_keep_the_raw_backup(ads_clean, ads_api: MockApi, ads_resources,
                                                                 instance, pg, s3, transform, check):
    materialize([ads], ads_resources, instance)
    before = live_ids(pg)
    ads_api.transform(PATH, transform)
    result = materialize([ads], ads_resources, instance)
    assert not result.success
    checks = _checks(result)
    assert checks[check] is False
    assert all(passed for name, passed in checks.items() if name not in (check, "unknown_campaign_share"))
    assert live_ids(pg) == before  # nothing published
    assert len(list_backup_keys(s3.get_client())) == 2  # the rejected response is kept as received


def test_unknown_campaign_share_only_warns(ads_clean, ads_api: MockApi, ads_resources, instance, pg):
    ads_api.transform(PATH, lambda b: json.dumps([{**a, "ad_campaign": "__unknown"} for a in json.loads(b)]).encode())
    result = materialize([ads], ads_resources, instance)
    assert result.success
    warn = next(e for e in result.get_asset_check_evaluations() if e.check_name == "unknown_campaign_share")
    assert not warn.passed and warn.severity.value == "WARN"
    assert warn.metadata["unknown_share"].value == 1.0
    assert pg.execute("SELECT count(*) FROM ads.ads WHERE ad_campaign IS NULL").fetchone()[0] == 100


def test_api_that_keeps_failing_fails_the_run_with_nothing_backed_up(ads_clean, ads_api: MockApi, ads_resources,
                                                                      instance, s3):
    ads_api.fail_next(PATH, Fault.malformed(), times=3)
    result = materialize([ads], ads_resources, instance)
    assert not result.success
    assert "unusable body 3 time(s)" in result.failure_data_for_node("ads__ads").error.message
    assert list_backup_keys(s3.get_client()) == []


def test_missing_api_url_fails_before_anything(ads_clean, ads_resources, instance, monkeypatch):
    monkeypatch.delenv("ADS_API_URL", raising=False)
    result = materialize([ads], ads_resources, instance)
    assert not result.success
    assert "ADS_API_URL" in result.failure_data_for_node("ads__ads").error.message
    assert ADS_KEY not in {m.asset_key for m in result.get_asset_materialization_events()}
