"""Parsers against every real file we have, checked with the csv module (see conftest.raw_rows)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from covid_lakehouse.defs.vaccines.sources import (
    SourceFormatError,
    is_truncated,
    parse_allocations,
    parse_population,
)
from covid_lakehouse_tests.vaccines import support as ref


def _parse(path: Path, manufacturer: str | None = None) -> pd.DataFrame:
    return parse_allocations(path.read_bytes(), source=path.name, manufacturer=manufacturer or path.name)


def _week(raw: str) -> dt.date:
    return (dt.datetime.fromisoformat(raw[:10]) if "-" in raw else dt.datetime.strptime(raw, "%m/%d/%Y")).date()


# --- allocations: every long layout ---------------------------------------------------------------


def test_every_long_layout_matches_the_raw_rows(long_file: Path) -> None:
    raw = ref.raw_rows(long_file)
    parsed = _parse(long_file, ref.manufacturer_of(long_file))

    assert list(parsed.columns) == ["jurisdiction", "week", "first_dose", "second_dose"]
    assert parsed["first_dose"].dtype == "int64" and parsed["second_dose"].dtype == "int64"
    assert pd.api.types.is_datetime64_any_dtype(parsed["week"])
    # Row for row: no row dropped, merged or reordered.
    assert len(parsed) == len(raw)
    # Footnote marks go: the Pfizer long_complete file has "Minnesota***" and "Federal Entities ****".
    assert list(parsed["jurisdiction"]) == [r["jurisdiction"].rstrip("* ") for r in raw]
    assert [d.date() for d in parsed["week"]] == [_week(r["week"]) for r in raw]
    assert list(parsed["first_dose"]) == [r["first"] for r in raw]
    assert list(parsed["second_dose"]) == [r["second"] for r in raw]
    assert set(parsed["week"].dt.day_of_week) == {0}  # CDC allocation weeks are Mondays


def test_the_three_header_styles_give_the_same_frame() -> None:
    """SODA snake_case + ISO timestamps, CDC display headers + MM/DD/YYYY and R's write.csv copy."""
    def week_of(path: Path) -> pd.DataFrame:
        frame = _parse(path, "moderna")
        return frame[frame["week"] == "2021-03-15"].sort_values("jurisdiction", ignore_index=True)

    frames = [
        week_of(path)
        for path in (
            ref.MODERNA_DEMO,
            ref.FIXTURES / "cdc_rows.csv_export_Moderna_thru_2021-04-05.csv",
            ref.FIXTURES / "cdc_full_Rwritecsv_moderna_thru_2021-06-21.csv",
        )
    ]
    assert len(frames[0]) == 63
    for other in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], other)


def test_janssen_has_no_second_dose_column_so_second_dose_is_zero() -> None:
    path = ref.FIXTURES / "cdc_full_Rwritecsv_janssen_thru_2021-06-21.csv"
    parsed = _parse(path, "janssen")
    assert (parsed["second_dose"] == 0).all()
    assert parsed["first_dose"].sum() == sum(r["first"] for r in ref.raw_rows(path)) > 0


def test_two_dose_vaccine_without_second_dose_column_is_an_error() -> None:
    """A missing 2nd-dose column must not become a silent zero for Moderna/Pfizer."""
    body = b"Jurisdiction,Week of Allocations,1st Dose Allocations\nMaine,04/05/2021,14300\n"
    with pytest.raises(SourceFormatError, match=r"missing column\(s\) '2nd Dose Allocations'"):
        parse_allocations(body, source="x.csv", manufacturer="moderna")


def test_thousands_separators_footnotes_and_whitespace() -> None:
    body = (
        b'Jurisdiction,Week of Allocations,1st Dose Allocations,2nd Dose Allocations\n'
        b'"Guam**",03/15/2021,"1,234"," 12,000 "\n'
        b'"  Federal Entities **** ",2021-03-15T00:00:00.000,"1,234,567",0\n'
        b'"Houston ~",03/15/2021,0,0\n'
    )
    parsed = parse_allocations(body, source="x.csv", manufacturer="moderna")
    assert list(parsed["jurisdiction"]) == ["Guam", "Federal Entities", "Houston"]
    assert list(parsed["first_dose"]) == [1234, 1234567, 0]
    assert list(parsed["second_dose"]) == [12000, 0, 0]


def test_columns_are_found_by_name_not_position() -> None:
    body = (
        b"2nd Dose Allocations,extra,1st Dose Allocations,Week of Allocations,Jurisdiction\n"
        b"7,ignored,5,03/17/2021,Maine\n"  # a Wednesday: normalised to its Monday
    )
    parsed = parse_allocations(body, source="x.csv", manufacturer="moderna")
    assert parsed.iloc[0].to_dict() == {
        "jurisdiction": "Maine", "week": pd.Timestamp("2021-03-15"), "first_dose": 5, "second_dose": 7,
    }


# --- allocations: what must be rejected -----------------------------------------------------------


def test_wide_layout_is_rejected_not_misread(wide_file: Path) -> None:
    with pytest.raises(SourceFormatError, match=r"wide layout \(one column per week\) is not supported") as err:
        _parse(wide_file, "moderna")
    assert str(err.value).startswith(wide_file.name)


@pytest.mark.parametrize(
    "name, quoted",
    [
        ("soda_outage_html_body_2021-02-21.csv.txt", "Site Currently Unavailable"),
        ("soda_outage_html_body_2021-02-21.csv.txt", "This Socrata-powered site is currently unavailable."),
        ("soda_outage_json_error_2021-09-28.csv.txt",
         "Internal error: please include code bd4caddf-45d8-442f-9f1a-b2a5d170e96b if you report the error"),
        ("soda_outage_json_error_2022-01-12.csv.txt", "'Internal error' (status=500)"),
    ],
)
def test_outage_bodies_are_rejected_with_their_message(name: str, quoted: str) -> None:
    url = "https://data.cdc.gov/resource/b7pe-5nws.csv"
    with pytest.raises(SourceFormatError) as err:
        parse_allocations((ref.FIXTURES / name).read_bytes(), source=url, manufacturer="moderna")
    assert str(err.value).startswith(url + ": ")
    assert quoted in str(err.value)
    assert "<" not in str(err.value)  # the HTML is reduced to its text


def test_missing_column_is_named_and_found_columns_listed() -> None:
    rows = list(csv.reader(io.StringIO(ref.MODERNA_DEMO.read_text())))
    body = ref.csv_bytes([c for i, c in enumerate(rows[0]) if i != 1], [r[:1] + r[2:] for r in rows[1:]])
    with pytest.raises(SourceFormatError) as err:
        parse_allocations(body, source="moderna.csv", manufacturer="moderna")
    message = str(err.value)
    assert "'Week of Allocations'" in message
    assert "found 'jurisdiction', '_1st_dose_allocations', '_2nd_dose_allocations'" in message


def test_non_numeric_dose_names_column_line_and_value() -> None:
    rows = list(csv.reader(io.StringIO(ref.MODERNA_DEMO.read_text())))
    rows[5][3] = "N/A"  # file line 6
    with pytest.raises(SourceFormatError, match=r"column '_2nd_dose_allocations', line 6: 'N/A' is not a whole number"):
        parse_allocations(ref.csv_bytes(rows[0], rows[1:]), source="moderna.csv", manufacturer="moderna")


@pytest.mark.parametrize("value", ["", "12.5", "-3", "1e5"])
def test_blank_decimal_or_negative_doses_are_errors_not_zero(value: str) -> None:
    body = f"jurisdiction,week_of_allocations,_1st_dose_allocations,_2nd_dose_allocations\nMaine,2021-03-15,{value},1\n"
    with pytest.raises(SourceFormatError, match="line 2"):
        parse_allocations(body.encode(), source="x.csv", manufacturer="moderna")


def test_bad_date_is_an_error() -> None:
    body = b"jurisdiction,week_of_allocations,_1st_dose_allocations,_2nd_dose_allocations\nMaine,week 11,1,1\n"
    with pytest.raises(SourceFormatError, match=r"column 'week_of_allocations', line 2: 'week 11' is not a date"):
        parse_allocations(body, source="x.csv", manufacturer="moderna")


def test_repeated_jurisdiction_week_is_an_error() -> None:
    body = ref.MODERNA_DEMO.read_bytes()
    first_row = body.splitlines(keepends=True)[1]
    with pytest.raises(SourceFormatError, match="'Connecticut' appears twice for week 2021-06-21"):
        parse_allocations(body + first_row, source="x.csv", manufacturer="moderna")


@pytest.mark.parametrize("body", [b"", b"  \r\n\n", b"jurisdiction,week_of_allocations,_1st_dose_allocations\n"])
def test_empty_bodies_are_errors(body: bytes) -> None:
    with pytest.raises(SourceFormatError, match=r"^x\.csv: (empty body|no data rows)"):
        parse_allocations(body, source="x.csv", manufacturer="moderna")


# --- truncation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("manufacturer, dataset", [("moderna", "b7pe-5nws"), ("pfizer", "saz5-9hgg")])
def test_lake_snapshots_are_flagged_as_truncated(manufacturer: str, dataset: str) -> None:
    path = ref.MODERNA_DEMO if manufacturer == "moderna" else ref.PFIZER_DEMO
    raw = ref.raw_rows(path)
    per_week = Counter(r["week"] for r in raw)
    # The premise, from the raw file: 1,000 rows and a partial earliest week.
    assert len(raw) == 1000
    assert per_week[min(per_week)] < max(per_week.values())

    warning = is_truncated(_parse(path, manufacturer), source=path.name, manufacturer=manufacturer)
    assert warning is not None
    assert path.name in warning and "2021-03-08" in warning and "55 of 63" in warning
    assert f"https://data.cdc.gov/resource/{dataset}.csv?$limit=50000" in warning


def test_first_1000_rows_of_a_complete_series_are_flagged() -> None:
    path = ref.FIXTURES / "cdc_full_Rwritecsv_pfizer_thru_2021-06-21.csv"
    cut = b"".join(path.read_bytes().splitlines(keepends=True)[:1001])
    assert is_truncated(parse_allocations(cut, source="cut.csv", manufacturer="pfizer"),
                        source="cut.csv", manufacturer="pfizer") is not None


def test_complete_series_are_not_flagged(complete_file: Path) -> None:
    manufacturer = ref.manufacturer_of(complete_file)
    parsed = _parse(complete_file, manufacturer)
    assert is_truncated(parsed, source=complete_file.name, manufacturer=manufacturer) is None


# --- population -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path_name", ["PEP_2018", "COUNTY_POPULATION"])
def test_population_layouts_total_327_167_434(path_name: str) -> None:
    path = getattr(ref, path_name)
    population = parse_population(path.read_bytes(), source=path.name)
    assert list(population.columns) == ["state", "county", "population"]
    assert population["population"].dtype == "int64"
    assert len(population) == 3142
    assert population["population"].sum() == 327_167_434
    assert population["state"].nunique() == 51


def test_population_layouts_agree_and_match_the_raw_file() -> None:
    pep = parse_population(ref.PEP_2018.read_bytes(), source="pep")
    lake = parse_population(ref.COUNTY_POPULATION.read_bytes(), source="lake")
    pd.testing.assert_frame_equal(pep, lake)
    assert pep.groupby("state")["population"].sum().to_dict() == ref.raw_pep_population_by_state()
    # latin-1 decoded, the AFF description row skipped
    row = pep[pep["county"].str.startswith("Do")].query("state == 'New Mexico'").iloc[0]
    assert (row["county"], row["population"]) == ("Do\u00f1a Ana County", 217522)
    assert "Id" not in set(pep["state"]) and "Geography" not in set(pep["county"])


def test_population_utf8_copy_of_the_aff_export() -> None:
    utf8 = ref.PEP_2018.read_bytes().decode("latin-1").encode("utf-8")
    pd.testing.assert_frame_equal(
        parse_population(utf8, source="utf8"), parse_population(ref.PEP_2018.read_bytes(), source="latin1")
    )


def test_population_unknown_layout_is_an_error() -> None:
    with pytest.raises(SourceFormatError, match=r"^vaccines\.csv: not a 2018 county population file.*found 'jurisdiction'"):
        parse_population(ref.MODERNA_DEMO.read_bytes(), source="vaccines.csv")


def test_population_non_numeric_estimate_is_an_error() -> None:
    lines = ref.COUNTY_POPULATION.read_text().splitlines(keepends=True)
    lines[3] = lines[3].rsplit(",", 1)[0] + ",(X)\n"
    with pytest.raises(SourceFormatError, match=r"column 'Population Estimate 2018', line 4: '\(X\)'"):
        parse_population("".join(lines).encode(), source="pop.csv")
