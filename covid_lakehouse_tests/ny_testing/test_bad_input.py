"""Bad input end to end through the real HTTP path (MockApi faults, the platform client with a FakeClock):
retried where it helps, then a clear error; nothing stored as raw data, tables already loaded untouched."""

from __future__ import annotations

import datetime as dt

import pytest

from covid_lakehouse.defs.ny_testing.snapshot import ColumnSpec
from covid_lakehouse_dev.apis.harness import Fault, MockResponse
from covid_lakehouse_tests.ny_testing.support import COLUMNS, dataset

pytestmark = pytest.mark.integration

# Socrata's JSON error body during an outage (shared/data/vaccines/soda_outage_*.txt), here sent with 200.
SODA_ERROR = b'{\n  "error" : true,\n  "message" : "Internal error",\n  "status" : 500\n}\n'
HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Site Currently Unavailable</title></head>"
             b"<body>maintenance</body></html>\n")


@pytest.fixture
def loaded(ny):
    """Good data loaded once; returns a snapshot of every county table to compare with afterwards."""
    ny.serve(dataset())
    assert ny.daily().success
    ny.api.reset()  # forget the good requests: each test counts its own
    return {t: ny.rows(t) for t in ("albany", "new_york", "st_lawrence")}


def error_of(result) -> str:
    assert not result.success
    return result.failure_data_for_node("ny_testing__raw_rows_json").error.message


def assert_untouched(ny, loaded) -> None:
    assert {t: ny.rows(t) for t in loaded} == loaded
    assert ny.tick().run_requests == []  # no new raw materialization: the sensor has nothing to load


def quarantined(ny, s3) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=f"{ny.settings.raw_prefix}/quarantine/")
    return [o["Key"] for o in listing.get("Contents", [])]


def stored_raw(ny, s3) -> list[str]:
    listing = s3.get_client().list_objects_v2(Bucket="raw", Prefix=f"{ny.settings.raw_prefix}/sha256=")
    return [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".json")]


def test_an_html_outage_page_is_retried_then_fails_clearly(ny, loaded):
    ny.api.fail_next("/ny_testing/*", Fault.html_outage(503), times=3)
    error = error_of(ny.download())
    assert "gave up after 3 attempt(s)" in error and "HTTP 503" in error
    assert "HTML page: Site Currently Unavailable" in error
    assert len(ny.api.requests) == 3 and len(ny.clock.sleeps) == 2  # backoff waited on the fake clock
    assert_untouched(ny, loaded)


@pytest.mark.parametrize(("body", "problem"), [
    (HTML_PAGE, "received an HTML page instead of rows.json (title: 'Site Currently Unavailable')"),
    (SODA_ERROR, "the API returned an error: 'Internal error' (code 500)"),
])
def test_an_error_body_served_with_200_is_quarantined_not_stored(ny, s3, loaded, body, problem):
    ny.api.fail_next("/ny_testing/*", Fault.custom(MockResponse(200, body)))
    error = error_of(ny.download())
    assert problem in error
    assert "Nothing was stored as raw data or loaded" in error
    [key] = quarantined(ny, s3)
    assert key in error
    assert s3.get_client().get_object(Bucket="raw", Key=key)["Body"].read() == body
    assert len(stored_raw(ny, s3)) == 1  # only the good download from the fixture
    assert_untouched(ny, loaded)


def test_a_body_cut_short_in_transit_is_retried_and_then_loads(ny, loaded):
    ny.serve(dataset(days=4))
    ny.api.fail_next("/ny_testing/*", Fault.truncated(0.5))
    assert ny.download().success
    assert len(ny.api.requests) == 2
    assert ny.latest_raw()["bytes"] == len(ny.body)  # the retry's full body, not partial + full
    assert ny.run(ny.tick().run_requests[0]).success
    assert len(ny.rows("albany")) == 4


def test_a_truncated_json_document_fails_with_where_it_ends(ny, s3, loaded):
    ny.api.fail_next("/ny_testing/*", Fault.custom(MockResponse(200, ny.body[: len(ny.body) // 2])))
    error = error_of(ny.download())
    assert "truncated or malformed JSON" in error
    assert len(quarantined(ny, s3)) == 1
    assert_untouched(ny, loaded)


def test_rate_limited_then_success_waits_as_asked(ny, loaded):
    ny.serve(dataset(days=4))
    ny.api.fail_next("/ny_testing/*", Fault.rate_limited(retry_after=30))
    assert ny.download().success
    assert len(ny.api.requests) == 2
    assert ny.clock.sleeps and ny.clock.sleeps[0] >= 30  # Retry-After honoured (on the fake clock)


def test_server_errors_exhausting_the_budget_fail_clearly(ny, loaded):
    ny.api.fail_next("/ny_testing/*", Fault.server_error(502), times=5)
    result = ny.download()
    error = error_of(result)
    assert "gave up after 3 attempt(s)" in error and "HTTP 502" in error
    assert len(ny.api.requests) == 3
    assert result.retry_attempts_for_node("ny_testing__raw_rows_json") == 0  # HTTP retries live in one place
    assert_untouched(ny, loaded)


@pytest.mark.parametrize("http_settings", [{"max_attempts": 3, "read_timeout_s": 0.3}])
def test_a_timeout_is_retried(ny, loaded, http_settings):
    ny.serve(dataset(days=4))
    ny.api.fail_next("/ny_testing/*", Fault.slow(3))
    assert ny.download().success
    assert len(ny.api.requests) == 2


def test_a_renamed_column_and_a_new_one_are_handled(ny, loaded):
    columns = [ColumnSpec("total_new_positives", "Total New Positives", "number") if c.field_name == "new_positives"
               else c for c in COLUMNS] + [ColumnSpec("notes", "Notes")]
    rows = [r + ["revised"] for r in dataset(days=4)]
    ny.serve(rows, columns)
    assert ny.download().success
    raw = ny.latest_raw()
    assert raw["column_mapping"]["new_positives"] == "total_new_positives"
    assert raw["ignored_columns"] == ["notes"]
    assert ny.run(ny.tick().run_requests[0]).success
    albany = ny.rows("albany")
    assert len(albany) == 4 and albany[dt.date(2022, 9, 14)]["new_positives"] == 5
    assert {d: r for d, r in albany.items() if d.day < 14} == loaded["albany"]  # same values: untouched


def test_a_missing_column_fails_naming_it(ny, s3, loaded):
    columns = [c for c in COLUMNS if c.field_name != "cumulative_number_of_tests"]
    ny.serve([r[:5] + r[6:] for r in dataset(days=4)], columns)
    error = error_of(ny.download())
    assert "missing required column(s) ['cumulative_number_of_tests_performed']" in error
    assert len(quarantined(ny, s3)) == 1
    assert_untouched(ny, loaded)
