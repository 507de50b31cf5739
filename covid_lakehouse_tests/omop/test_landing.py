"""Client file parsing (values kept exactly as written) and the landing sensor's cursor."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from covid_lakehouse.defs.omop.landing import LandingObject, parse_landing_file
from covid_lakehouse.defs.omop.sensors import LandingCursor
from covid_lakehouse_tests.omop.support import SAMPLE_CSV


def test_the_sample_file_is_read_as_written():
    parsed = parse_landing_file("omop/landing/x/E4_sample_providers.csv", SAMPLE_CSV)
    assert parsed.reject_reason is None and parsed.format == "csv" and len(parsed.rows) == 15
    first, null_npi, null_name, laura = parsed.rows[0], parsed.rows[4], parsed.rows[7], parsed.rows[10]
    assert first == {"line_no": 2, "provider_name": "John Doe", "provider_id": "001", "npi": "1234567890",
                     "specialty": "Cardiology", "site_name": "City Hospital", "source_id": "JD001",
                     "spec_source": "Cardiology", "id_source": "JD-NPI", "malformed_reason": None, "raw_record": None}
    assert null_npi["npi"] == "NULL" and null_name["provider_name"] == "NULL"  # placeholders kept raw here
    assert laura["npi"] == "0123456789" and laura["provider_id"] == "009"  # zero padding survives


def test_headers_match_whatever_their_case_and_punctuation():
    body = b"provider_name,Provider ID,npi,SITE NAME\nAnn Lee,7,1234567893,City Hospital\n"
    parsed = parse_landing_file("a.CSV", body)
    assert parsed.rows[0]["provider_name"] == "Ann Lee" and parsed.rows[0]["site_name"] == "City Hospital"
    assert parsed.rows[0]["specialty"] is None  # optional column absent


@pytest.mark.parametrize(("name", "body", "reason"), [
    ("a.csv", b"ProviderName,ProviderID,Specialty\nAnn,1,Peds\n", "missing_columns"),
    ("a.csv", b"ProviderName,ProviderID,NPI,npi\nAnn,1,2,3\n", "duplicate_columns"),
    ("a.csv", "ProviderName,ProviderID,NPI\nRen\xe9,1,2\n".encode("latin-1"), "not_utf8"),
    ("a.xlsx", b"PK\x03\x04", "unsupported_format"),
    ("a.json", b'{"ProviderName": "Ann", ', "unparseable"),
    ("a.json", b'"just a string"', "unsupported_json_shape"),
])
def test_unusable_files_are_rejected_whole_with_a_reason(name, body, reason):
    assert parse_landing_file(name, body).reject_reason == reason


def test_a_row_with_the_wrong_number_of_fields_is_kept_as_malformed_and_the_rest_read():
    body = b"ProviderName,ProviderID,NPI\nAnn,1,1234567893\nBob,2\nCid,3,1234567800\n"
    rows = parse_landing_file("a.csv", body).rows
    assert [(r["line_no"], r["malformed_reason"], r["raw_record"]) for r in rows] == [
        (2, None, None), (3, "wrong_field_count", "Bob,2"), (4, None, None)]


def test_json_arrays_single_records_and_json_lines():
    array = parse_landing_file("a.json", json.dumps([
        {"ProviderName": "Ann", "ProviderID": 7, "NPI": "1234567893"}, ["not", "a", "record"]]).encode())
    assert array.rows[0]["provider_id"] == "7"  # numbers become text (their zero padding is already lost)
    assert array.rows[1]["malformed_reason"] == "not_an_object"
    single = parse_landing_file("a.json", b'{"ProviderName": "Ann", "ProviderID": "007", "NPI": null}')
    assert single.rows[0]["provider_id"] == "007" and single.rows[0]["npi"] is None
    lines = parse_landing_file(
        "a.jsonl", b'{"ProviderName": "Ann", "ProviderID": "1", "NPI": "1"}\n{broken\n\n{"ProviderName": "Bob"}\n')
    assert [(r["line_no"], r["malformed_reason"], r["provider_name"]) for r in lines.rows] == [
        (1, None, "Ann"), (2, "invalid_json", None), (4, None, "Bob")]


def test_an_empty_drop_is_a_file_without_rows_not_an_error():
    parsed = parse_landing_file("empty.csv", b"")
    assert parsed.reject_reason is None and parsed.rows == []


def _obj(key: str, second: int) -> LandingObject:
    return LandingObject(key, "etag-" + key, 10, datetime(2024, 5, 1, tzinfo=UTC) + timedelta(seconds=second))


def test_cursor_hands_out_each_object_once_even_within_one_second():
    cursor = LandingCursor.parse(None)
    first = [_obj("b.csv", 0)]
    assert cursor.new_objects("t", first) == first
    cursor.advance("t", first)
    cursor = LandingCursor.parse(cursor.dump())  # as stored between ticks
    # "a.csv" landed in the same second as "b.csv" but after the listing: still new. "c.csv" later.
    listing = [_obj("a.csv", 0), _obj("b.csv", 0), _obj("c.csv", 3)]
    new = cursor.new_objects("t", listing)
    assert [o.key for o in new] == ["a.csv", "c.csv"]
    cursor.advance("t", new)
    assert cursor.new_objects("t", listing) == []
    assert cursor.new_objects("other", listing) == listing  # per tenant
