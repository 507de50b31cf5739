"""CleverTap: one row per event however often the window is re-read. The key is the event's identity
(never the export-time profile), old keys are re-keyed before the next load, a repeated identity in the
staged + published rows blocks, the zone and region are required, "not ready" batches are waited for."""

import copy
import json
from datetime import date
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from covid_lakehouse.defs.marketing.assets import ASSETS, CLEVERTAP_KEY
from covid_lakehouse.defs.marketing.clevertap import CleverTapResource, RecordParser
from covid_lakehouse.defs.marketing.common import SourceApiError
from covid_lakehouse.defs.marketing.partitions import RANGE_END_TAG, RANGE_START_TAG
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import HttpError
from covid_lakehouse.lib.settings import SettingError
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse
from covid_lakehouse_dev.apis.marketing import CLEVERTAP_PATH, DATA, MarketingMock

DAY = date(2024, 7, 1)
EVENTS = f"{CLEVERTAP_PATH}/1/events.json"
PER_DAY = (4 + 1) + 2  # App Launched (4 + an exact repeat) + UTM Visited


def connector(clock: FakeClock | None = None, **kwargs):
    return CleverTapResource(batch_size=2, **kwargs).connector(clock=clock or FakeClock())


def materialize(resources, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(ASSETS, selection=[CLEVERTAP_KEY], resources=resources, instance=instance, raise_on_error=False,
                          tags={RANGE_START_TAG: "2024-07-01", RANGE_END_TAG: "2024-07-01"})


def meta(result) -> dict:
    [event] = result.asset_materializations_for_node(CLEVERTAP_KEY.to_python_identifier())
    return {k: v.value for k, v in event.metadata.items()}


def test_the_key_ignores_the_export_time_profile() -> None:
    doc = json.loads((DATA / "clevertap_get_events_records_fixture.json").read_text())
    later = copy.deepcopy(doc)
    later["records"][0]["profile"]["events"]["App Launched"] |= {"count": 9, "last_seen": 1700000000}
    later["records"][0]["profile"]["app_version"] = "1.2.0"
    other = copy.deepcopy(doc)
    other["records"][0]["event_props"]["Install"] = "n"

    def key(d) -> str:
        return RecordParser("App Launched", ZoneInfo("UTC")).rows(d, "p", date(2022, 11, 19))[0]["event_key"]

    assert key(doc) == key(later) != key(other)


def test_exports_are_asked_without_profile_event_summaries(api: MockApi) -> None:
    pages = list(connector().pages("UTM Visited", DAY))

    assert api.requests[0].query["events"] == ["false"]
    assert all("events" not in r["profile"] for p in pages for r in p.doc["records"])


@pytest.mark.integration
def test_rereading_the_window_with_changed_profiles_inserts_nothing(
        clean_marketing, marketing_resources, instance, pg, mock: MarketingMock) -> None:
    mock.clevertap_honour_events_param = False  # the profile differs on every export
    assert materialize(marketing_resources, instance).success

    again = materialize(marketing_resources, instance)

    assert again.success and meta(again)["inserted"] == 0 and meta(again)["unchanged"] == PER_DAY
    assert pg.execute("SELECT count(*) FROM marketing.clevertap_events").fetchone()[0] == PER_DAY


def _make_legacy(pg) -> None:
    """Rows as the old release left them: whole-record keys (key_version 1), and a second copy of one
    event from an earlier export, under another old key."""
    pg.execute("UPDATE marketing.clevertap_events SET event_key = 'old-' || left(event_key, 20), key_version = 1, "
               "account_timezone = NULL")
    pg.execute("INSERT INTO marketing.clevertap_events (event_key, occurrence, event_name, event_date, event_ts, "
               "profile_object_id, platform, app_version, event_props, session_props, raw_object, key_version, updated_at) "
               "SELECT 'older-export-' || event_key, occurrence, event_name, event_date, event_ts, profile_object_id, "
               "platform, app_version, event_props, session_props, raw_object, 1, updated_at - interval '1 day' "
               "FROM marketing.clevertap_events WHERE event_name = 'UTM Visited' AND occurrence = 0 "
               "ORDER BY event_key LIMIT 1")


@pytest.mark.integration
def test_rows_with_old_keys_are_rekeyed_so_the_first_run_does_not_duplicate_the_window(
        clean_marketing, marketing_resources, instance, pg) -> None:
    assert materialize(marketing_resources, instance).success
    before = pg.execute("SELECT event_key, occurrence FROM marketing.clevertap_events ORDER BY 1, 2").fetchall()
    _make_legacy(pg)

    rerun = materialize(marketing_resources, instance)

    assert rerun.success
    assert (meta(rerun)["rekeyed_legacy_rows"], meta(rerun)["removed_legacy_duplicates"]) == (PER_DAY, 1)
    assert meta(rerun)["inserted"] == 0
    assert pg.execute("SELECT event_key, occurrence FROM marketing.clevertap_events ORDER BY 1, 2").fetchall() == before
    assert pg.execute("SELECT count(*) FROM marketing.clevertap_events WHERE key_version <> 2").fetchone()[0] == 0


@pytest.mark.integration
def test_an_event_under_two_keys_in_staged_plus_published_rows_blocks(
        clean_marketing, marketing_resources, instance, pg) -> None:
    assert materialize(marketing_resources, instance).success
    _make_legacy(pg)
    pg.execute("UPDATE marketing.clevertap_events SET key_version = 2")  # keys the re-key will not touch
    published = pg.execute("SELECT count(*), max(updated_at) FROM marketing.clevertap_events").fetchone()

    result = materialize(marketing_resources, instance)

    assert not result.success
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "event_identity_unique"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "appear under more than one key in the staged + published rows" in check.description
    assert pg.execute("SELECT count(*), max(updated_at) FROM marketing.clevertap_events").fetchone() == published


def test_the_time_zone_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLEVERTAP_TIMEZONE", raising=False)

    with pytest.raises(SettingError, match=r"CLEVERTAP_TIMEZONE is not set: .*e\.g\. Asia/Kolkata"):
        CleverTapResource().zone()
    assert CleverTapResource(timezone="Asia/Kolkata").zone() == ZoneInfo("Asia/Kolkata")
    with pytest.raises(SettingError, match="'India' is not an IANA time zone"):
        CleverTapResource(timezone="India").zone()


def test_the_region_is_required_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLEVERTAP_API_URL", raising=False)
    monkeypatch.delenv("CLEVERTAP_REGION", raising=False)

    with pytest.raises(SettingError, match=r"CLEVERTAP_REGION is not set: .*eu1, in1, us1, sg1, aps3, mec1"):
        CleverTapResource().api_base()
    with pytest.raises(SettingError, match="'eu2' is not a CleverTap region"):
        CleverTapResource(region="eu2").api_base()
    assert [CleverTapResource(region=r).api_base() for r in ("in1", "MEC1")] == [
        "https://in1.api.clevertap.com", "https://mec1.api.clevertap.com"]
    assert CleverTapResource(region="in1", api_url="https://proxy.example/ct").api_base() == "https://proxy.example/ct"


def test_a_batch_that_is_not_ready_is_asked_again_on_the_same_cursor(api: MockApi, mock: MarketingMock) -> None:
    mock.clevertap_not_ready_polls = 2
    clock = FakeClock()

    [page] = list(connector(clock).pages("UTM Visited", DAY))

    assert len(page.doc["records"]) == 2 and clock.sleeps == [15.0, 15.0]
    gets = [r for r in api.requests if r.method == "GET"]
    assert len(gets) == 3 and len({r.query["cursor"][0] for r in gets}) == 1


def test_not_ready_beyond_the_budget_fails(api: MockApi, mock: MarketingMock) -> None:
    mock.clevertap_not_ready_polls = 100
    clock = FakeClock()

    with pytest.raises(SourceApiError, match=r"still not ready \(code 2: .*\) after 30s of waiting \(budget 40s\)"):
        list(connector(clock, not_ready_budget_s=40).pages("UTM Visited", DAY))
    assert clock.sleeps == [15.0, 15.0]


def test_a_2xx_other_than_200_fails(api: MockApi) -> None:
    """A regression guard: the client's ok_statuses=(200,) already refused a 202 when this test was written."""
    api.fail_next(EVENTS, Fault.custom(MockResponse.json_body({"status": "success", "cursor": "abc"}, 202)))

    with pytest.raises(HttpError, match="HTTP 202"):
        list(connector().pages("UTM Visited", DAY))
    assert len(api.requests) == 1
