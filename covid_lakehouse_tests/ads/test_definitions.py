"""The domain's definitions: jobs, schedules and checks as the issue names them, and `make demo`'s
procedure (runtime.run_demo) materializing the domain offline on its mock API."""

import json

import dagster as dg
import pytest

from covid_lakehouse import runtime
from covid_lakehouse.defs.ads.backup import list_backup_keys
from covid_lakehouse.defs.ads.definitions import defs
from covid_lakehouse.lib.resources import platform_resources
from covid_lakehouse_tests.ads.support import assert_invariant


def test_jobs_schedules_and_checks():
    merged = dg.Definitions.merge(defs, dg.Definitions(resources={
        "warehouse": object(), "s3": object(), "lakehouse": object(), "http": object(),
        "warehouse_io_manager": dg.mem_io_manager, "lakehouse_io_manager": dg.mem_io_manager}))
    assert {s.name: (s.job_name, s.cron_schedule) for s in merged.schedules} == {
        "api_load_hourly": ("api_load", "0 * * * *"), "ad_archive_daily": ("ad_archive", "30 0 * * *")}
    graph = merged.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {"ads/ads", "ads/ads_archive",
                                                                        "ads/shown_per_group_daily"}
    assert all(graph.get(k).group_name == "ads" for k in graph.get_all_asset_keys())
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert checks == {("ads/ads", "ad_id_valid_unique"), ("ads/ads", "ad_group_known"),
                      ("ads/ads", "shown_at_not_future"), ("ads/ads", "unknown_campaign_share"),
                      ("ads/ads_archive", "archived_equals_deleted")}
    assert merged.resolve_job_def("api_load").asset_layer.selected_asset_keys == {dg.AssetKey(["ads", "ads"])}


@pytest.mark.integration
def test_demo_procedure_loads_then_archives_offline(ads_clean, ads_api, services, instance, pg, lakehouse, s3):
    merged = dg.Definitions.merge(defs, dg.Definitions(resources=platform_resources()))
    report = runtime.run_demo(merged, instance)
    assert report.ok and report.runs == [("unpartitioned assets", True)]
    assert sorted(report.materialized) == ["ads/ads", "ads/ads_archive", "ads/shown_per_group_daily"]
    client = s3.get_client()
    [key] = list_backup_keys(client)
    served = {ad["ad_id"] for ad in json.loads(client.get_object(Bucket="ad-data", Key=key)["Body"].read())}
    live, archived = assert_invariant(pg, lakehouse, served)
    assert archived > 0 and live > 0  # the mock's retention (12 h) archives part of the page
