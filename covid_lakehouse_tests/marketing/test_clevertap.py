"""CleverTap events export against its mock: cursor paging (cursors arrive URL-encoded), the concurrency
cap's 429, transient errors, auth failure, a changed ts format, stable keys for id-less records."""

import base64
import json
from datetime import UTC, date, datetime
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import pytest

from covid_lakehouse.defs.marketing.clevertap import (
    CleverTapEvents,
    CleverTapResource,
    RecordParser,
    event_identity,
    parse_ts,
)
from covid_lakehouse.defs.marketing.common import SourceApiError, SourceSchemaError
from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import AuthError, ClientError, RateLimitedError
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse
from covid_lakehouse_dev.apis.marketing import (
    CLEVERTAP_PATH,
    DATA,
    change_schema,
    clevertap_rate_limit_fault,
)

DAY = date(2024, 7, 1)
EVENTS = f"{CLEVERTAP_PATH}/1/events.json"


def connector(clock: FakeClock | None = None) -> CleverTapEvents:
    return CleverTapResource(batch_size=2).connector(clock=clock or FakeClock())


def test_cursors_are_followed_as_received_until_next_cursor_is_absent(api: MockApi) -> None:
    pages = list(connector().pages("App Launched", DAY))

    assert [len(p.doc["records"]) for p in pages] == [2, 2, 1]  # 4 events + 1 exact repeat, 2 per batch
    assert "next_cursor" not in pages[-1].doc
    post, *gets = api.requests
    assert (post.method, post.query["batch_size"], post.json()) == (
        "POST", ["2"], {"event_name": "App Launched", "from": 20240701, "to": 20240701})
    assert post.headers["X-CleverTap-Account-Id"] == "DEMO-ACCOUNT-ID"
    assert [g.method for g in gets] == ["GET"] * 3
    # The server decoded exactly once what it had encoded: the cursor was not encoded a second time.
    assert gets[1].query["cursor"] == [unquote(pages[0].doc["next_cursor"])]
    assert "%" in pages[0].doc["next_cursor"]


def test_the_real_encoded_cursor_is_sent_byte_for_byte(api: MockApi) -> None:
    cursor = json.loads((DATA / "clevertap_get_events_cursor_fixture.json").read_text())["cursor"]
    api.fail_next(EVENTS, Fault.custom(MockResponse.json_body({"status": "success", "cursor": cursor})))

    with pytest.raises(ClientError):  # the mock does not know CleverTap's real cursor: 400 after the GET
        list(connector().pages("App Launched", DAY))

    get = api.requests[1]
    assert get.method == "GET" and get.query["cursor"] == [unquote(cursor)]  # decoded once = sent as received


def test_the_concurrency_cap_429_is_retried_with_backoff(api: MockApi) -> None:
    api.fail_next(EVENTS, clevertap_rate_limit_fault(), times=2)
    clock = FakeClock()

    assert len(list(connector(clock).pages("UTM Visited", DAY))) == 1
    assert len(clock.sleeps) == 2 and len(api.requests) == 4


def test_parallel_requests_above_the_cap_are_refused_by_the_mock(api: MockApi, mock) -> None:
    mock.clevertap_max_concurrent = 0  # every request is "one too many"
    clock = FakeClock()

    with pytest.raises(RateLimitedError, match="429"):
        list(connector(clock).pages("UTM Visited", DAY))
    assert len(clock.sleeps) == 5  # the whole retry budget (6 attempts) was used


def test_transient_errors_are_retried(api: MockApi) -> None:
    api.fail_next(EVENTS, Fault.server_error(502))
    clock = FakeClock()

    assert len(list(connector(clock).pages("UTM Visited", DAY))) == 1
    assert len(clock.sleeps) == 1


def test_wrong_credentials_fail_at_once_naming_the_variables(api: MockApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLEVERTAP_PASSCODE", "wrong-passcode")
    clock = FakeClock()

    with pytest.raises(AuthError, match="CLEVERTAP_PASSCODE") as raised:
        list(connector(clock).pages("App Launched", DAY))
    assert "wrong-passcode" not in str(raised.value)
    assert clock.sleeps == [] and len(api.requests) == 1


def test_the_event_count_is_polled_until_ready(api: MockApi, mock) -> None:
    mock.clevertap_count_partial = True
    clock = FakeClock()

    assert connector(clock).reported_count("App Launched", DAY) == 5
    assert clock.sleeps == [2.0]


def test_the_count_poll_reads_its_last_answer_and_is_bounded_by_time(api: MockApi, mock) -> None:
    mock.clevertap_count_partial = True
    req_id = base64.urlsafe_b64encode(json.dumps({"e": "App Launched", "f": "20240701", "t": "20240701"}).encode())
    partial = Fault.custom(MockResponse.json_body({"status": "partial", "req_id": req_id.decode()}))
    api.fail_next(f"{CLEVERTAP_PATH}/1/counts/events.json", partial, times=1 + 29)  # the POST, then 29 polls
    clock = FakeClock()

    assert connector(clock).reported_count("App Launched", DAY) == 5  # the 30th poll answers in time
    assert clock.sleeps == [2.0] * 30

    api.fail_next(f"{CLEVERTAP_PATH}/1/counts/events.json", partial, times=100)
    with pytest.raises(SourceApiError, match=r"event count for 'App Launched' on 2024-07-01: still partial after 60s"):
        connector(FakeClock()).reported_count("App Launched", DAY)


def test_ts_switched_to_epoch_seconds_is_reported_precisely(api: MockApi) -> None:
    change_schema(api, "clevertap")
    page = next(connector().pages("App Launched", DAY))

    with pytest.raises(SourceSchemaError, match=r"records\[0\]: ts is \d{10} \(looks like epoch seconds\), expected YYYYMMDDHHMMSS"):
        RecordParser("App Launched", ZoneInfo("UTC")).page_table(page, "raw-object")


def test_ts_is_local_time_of_the_account() -> None:
    assert parse_ts(20221119054937, "r", ZoneInfo("UTC"))[1] == datetime(2022, 11, 19, 5, 49, 37, tzinfo=UTC)
    day, instant = parse_ts(20221119054937, "r", ZoneInfo("Asia/Kolkata"))
    assert (day, instant.astimezone(UTC)) == (date(2022, 11, 19), datetime(2022, 11, 19, 0, 19, 37, tzinfo=UTC))


def test_keys_are_stable_across_exports_and_exact_repeats_are_numbered(api: MockApi) -> None:
    def export() -> list[tuple[str, int]]:
        parser = RecordParser("App Launched", ZoneInfo("UTC"))
        return [(r["event_key"], r["occurrence"]) for p in connector().pages("App Launched", DAY)
                for r in parser.rows(p.doc, "page", DAY)]

    first, second = export(), export()

    assert first == second
    assert len(set(first)) == 5 and [o for _, o in first].count(1) == 1  # the repeat is occurrence 1
    assert first[-1] == (first[0][0], 1)


def test_only_pseudonymous_profile_fields_are_kept() -> None:
    doc = json.loads((DATA / "clevertap_get_events_records_fixture.json").read_text())
    doc["records"][0]["profile"] |= {"email": "person@example.com", "name": "A Person", "phone": "+15550000"}

    [row] = RecordParser("App Launched", ZoneInfo("UTC")).rows(doc, "fixture", date(2022, 11, 19))

    assert row["profile_object_id"] == "__g9e75e20dcf3d41ee9f1ebd907663164e" and row["platform"] == "Android"
    assert "person@example.com" not in json.dumps(row, default=str)
    record = doc["records"][0]
    assert row["event_key"] == event_identity("App Launched", record["profile"]["objectId"], record["ts"],
                                              record["event_props"], record["session_props"])
    assert json.loads(row["session_props"])["utm_source"] == "google-play"
