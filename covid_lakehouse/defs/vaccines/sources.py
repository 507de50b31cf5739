"""Parsers for the vaccines domain's raw inputs: CDC weekly allocations and 2018 county populations.

Pure functions over bytes: no network, no database. Every parser is strict: a body it does not fully
understand raises SourceFormatError naming the source, rather than producing plausible wrong numbers.
"""

from __future__ import annotations

import html
import io
import json
import re

import pandas as pd

# Socrata dataset ids, used to tell the operator where the complete series lives.
SODA_DATASETS = {"moderna": "b7pe-5nws", "pfizer": "saz5-9hgg", "janssen": "w9zu-fywh"}
# Socrata answers a resource query without $limit with at most 1,000 rows.
SODA_DEFAULT_LIMIT = 1000
# Only single-dose vaccines may lack a 2nd-dose column; for the others a missing column is an error,
# never a silent zero.
SINGLE_DOSE_MANUFACTURERS = frozenset({"janssen"})

# Canonical column -> normalised header (see _norm). One key covers the SODA snake_case names
# (_1st_dose_allocations), the CDC display names (1st Dose Allocations) and R's write.csv mangling
# (X1st.Dose.Allocations).
_JURISDICTION, _WEEK, _FIRST, _SECOND = "jurisdiction", "weekofallocations", "1stdoseallocations", "2nddoseallocations"
_LABELS = {_JURISDICTION: "Jurisdiction", _WEEK: "Week of Allocations",
           _FIRST: "1st Dose Allocations", _SECOND: "2nd Dose Allocations"}
# The retired wide layout put the week into the header ("Doses allocated week of 12/21", "first_doses_12_14").
_WIDE_HEADER = re.compile(r"\d{1,2}[/_]\d{1,2}")
# Footnote marks the CDC appends to names ("Guam**", "Houston ~", "Federal Entities ****").
_FOOTNOTES = re.compile(r"[\s*~†‡]+$")


class SourceFormatError(ValueError):
    """A raw input that cannot be read as the expected layout. The message starts with the source."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def parse_allocations(data: bytes, *, source: str, manufacturer: str) -> pd.DataFrame:
    """One row per data row of a long-layout CDC allocation file.

    Columns: jurisdiction (str, footnote marks stripped), week (datetime64, Monday of the allocation
    week), first_dose and second_dose (int64; second_dose is 0 for single-dose vaccines whose layout
    has no such column). Rows are never dropped or merged, so len(result) is the source's row count.
    """
    raw = _read_csv(data, source)
    columns = {_norm(c): c for c in raw.columns}
    if _WEEK not in columns and any(_WIDE_HEADER.search(c) for c in raw.columns):
        raise SourceFormatError(
            source,
            "wide layout (one column per week) is not supported: it is the CDC's early allocation "
            "table with 'N/A' cells and a 'Total' row; use the long layout (Jurisdiction, Week of "
            "Allocations, 1st/2nd Dose Allocations) served by the SODA endpoint",
        )
    needed = [_JURISDICTION, _WEEK, _FIRST]
    if _SECOND in columns or manufacturer.lower() not in SINGLE_DOSE_MANUFACTURERS:
        needed.append(_SECOND)
    missing = [_LABELS[key] for key in needed if key not in columns]
    if missing:
        raise SourceFormatError(
            source, f"missing column(s) {', '.join(map(repr, missing))} for {manufacturer} allocations; "
            f"found {', '.join(map(repr, raw.columns))}",
        )

    jurisdiction = raw[columns[_JURISDICTION]].map(_clean_jurisdiction)
    if (jurisdiction == "").any():
        raise SourceFormatError(source, f"empty jurisdiction on line {_line(jurisdiction == '')}")
    week = _parse_week(raw[columns[_WEEK]], columns[_WEEK], source)
    result = pd.DataFrame({
        "jurisdiction": jurisdiction.astype(str),
        "week": week,
        "first_dose": _parse_int(raw[columns[_FIRST]], columns[_FIRST], source),
        "second_dose": (_parse_int(raw[columns[_SECOND]], columns[_SECOND], source) if _SECOND in columns
                        else pd.Series(0, index=raw.index, dtype="int64")),
    })
    # A repeated jurisdiction-week would be counted twice downstream (e.g. pages concatenated twice).
    duplicated = result.duplicated(["jurisdiction", "week"])
    if duplicated.any():
        row = result[duplicated].iloc[0]
        raise SourceFormatError(
            source, f"{row.jurisdiction!r} appears twice for week {row.week.date()} (line {_line(duplicated)})"
        )
    return result


def parse_population(data: bytes, *, source: str) -> pd.DataFrame:
    """County population estimates for 2018: columns state, county (str) and population (int64).

    Accepts the Census PEP 2018 American FactFinder export (two header rows, "Autauga County, Alabama"
    in GEO.display-label, the estimate in respop72018; latin-1 or UTF-8) and the covid19-lake layout
    (Id,Id2,County,State,Population Estimate 2018).
    """
    raw = _read_csv(data, source)
    columns = {_norm(c): c for c in raw.columns}
    if "geodisplaylabel" in columns and "respop72018" in columns:
        # The AFF export's second header row holds descriptions ("Id,Id2,Geography,..."): not data.
        if len(raw) and _norm(raw.iloc[0, 0]) == "id":
            raw = raw.iloc[1:]
        label = raw[columns["geodisplaylabel"]].str.strip()
        parts = label.str.rpartition(", ")
        if (parts[1] == "").any():
            bad = label[parts[1] == ""].iloc[0]
            raise SourceFormatError(source, f"cannot split {bad!r} into county and state (line {_line(parts[1] == '')})")
        county, state, population = parts[0], parts[2], raw[columns["respop72018"]]
        population_column = columns["respop72018"]
    elif {"county", "state", "populationestimate2018"} <= columns.keys():
        county, state = raw[columns["county"]].str.strip(), raw[columns["state"]].str.strip()
        population_column = columns["populationestimate2018"]
        population = raw[population_column]
    else:
        raise SourceFormatError(
            source, "not a 2018 county population file: expected GEO.display-label and respop72018 "
            "(Census PEP export) or County, State and Population Estimate 2018 (covid19-lake layout); "
            f"found {', '.join(map(repr, raw.columns))}",
        )
    return pd.DataFrame({
        "state": state.astype(str),
        "county": county.astype(str),
        "population": _parse_int(population, population_column, source),
    }).reset_index(drop=True)


def is_truncated(allocations: pd.DataFrame, *, source: str, manufacturer: str,
                 row_limit: int = SODA_DEFAULT_LIMIT) -> str | None:
    """A warning if `allocations` (from parse_allocations: one row per source row) looks cut at the
    Socrata API's default row limit, else None.

    The covid19-lake copies were fetched without $limit, so they hold only the first 1,000 rows the API
    returned (newest weeks first): the tell is exactly 1,000 rows with the earliest week holding fewer
    jurisdictions than the others. len(allocations) is the source's row count (parse never drops rows).
    """
    if len(allocations) != row_limit:
        return None
    per_week = allocations.groupby("week")["jurisdiction"].nunique().sort_index()
    if len(per_week) < 2 or per_week.iloc[0] >= per_week.iloc[1:].max():
        return None
    dataset = SODA_DATASETS.get(manufacturer.lower())
    complete = (f"https://data.cdc.gov/resource/{dataset}.csv?$limit=50000" if dataset
                else "the dataset's SODA endpoint with $limit=50000")
    return (
        f"{source}: {manufacturer} allocations look truncated at the Socrata API's {row_limit:,}-row default: "
        f"exactly {row_limit:,} rows and the earliest week ({per_week.index[0].date()}) lists "
        f"{per_week.iloc[0]} of {per_week.iloc[1:].max()} jurisdictions, so earlier weeks are missing and "
        f"dose totals are too low. Point the source at the complete series, e.g. {complete}"
    )


def _clean_jurisdiction(name: str) -> str:
    """'Guam**' -> 'Guam', ' New  York ' -> 'New York'."""
    return _FOOTNOTES.sub("", " ".join(str(name).split()))


def _read_csv(data: bytes, source: str) -> pd.DataFrame:
    """All cells as str. Rejects empty bodies and the HTML/JSON error pages Socrata serves at .csv URLs."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # The Census AFF exports are latin-1 ("Doña Ana County"); every byte is valid latin-1.
        text = data.decode("latin-1")
    body = text.strip()
    if not body:
        raise SourceFormatError(source, "empty body (expected CSV)")
    if body.startswith("<"):
        raise SourceFormatError(source, f"got an HTML page instead of CSV: {_html_text(body)!r}")
    if body.startswith(("{", "[")):
        raise SourceFormatError(source, f"got a JSON body instead of CSV: {_json_message(body)}")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SourceFormatError(source, f"not valid CSV: {exc}") from exc
    if frame.empty:
        raise SourceFormatError(source, f"no data rows (header: {', '.join(map(repr, frame.columns))})")
    return frame


_HTML_PREFIX_CHARS = 64 * 1024  # an outage page says what it is near its start
_HIDDEN_BLOCKS = ("style", "script", "head")


def _html_text(body: str, limit: int = 300) -> str:
    """The visible text of an HTML error page, shortened: enough to recognise an outage page.

    One left-to-right scan over a bounded prefix (a backtracking regex was quadratic on bodies such as
    ``<head `` repeated): comments, tags and the contents of style/script/head blocks are dropped; an
    unterminated tag or block is kept as text, as the regex did. A closer searched for and not found is
    remembered, so no search is repeated over the rest of the prefix."""
    head = body[:_HTML_PREFIX_CHARS]
    lower = head.lower()
    missing: set[str] = set()

    def find(needle: str, start: int) -> int:
        if needle in missing:
            return -1
        at = lower.find(needle, start)
        if at < 0:
            missing.add(needle)
        return at

    out: list[str] = []
    i = 0
    while i < len(head):
        lt = head.find("<", i)
        if lt < 0:
            out.append(head[i:])
            break
        out.append(head[i:lt])
        end = -1
        if head.startswith("<!--", lt):
            close = find("-->", lt + 4)
            end = close + 3 if close >= 0 else -1
        else:
            name = next((n for n in _HIDDEN_BLOCKS if lower.startswith("<" + n, lt)
                         and not lower[lt + 1 + len(n):lt + 2 + len(n)].isalnum()), None)
            close = find(f"</{name}>", lt) if name else -1
            if close >= 0:
                end = close + len(name) + 3  # type: ignore[arg-type]
            else:
                gt = find(">", lt)
                end = gt + 1 if gt >= 0 else -1
        if end < 0:  # unterminated: the rest is text
            out.append(head[lt:])
            break
        out.append(" ")
        i = end
    text = " ".join(html.unescape("".join(out)).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _json_message(body: str) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return repr(body[:300])
    if isinstance(payload, dict) and "message" in payload:
        details = [f"{key}={payload[key]}" for key in ("errorCode", "status", "code") if key in payload]
        return repr(payload["message"]) + (f" ({', '.join(details)})" if details else "")
    return repr(body[:300])


def _norm(header: str) -> str:
    """Header key: lower-case alphanumerics only, minus the 'X' R prepends to names starting with a digit."""
    key = re.sub(r"[^0-9a-z]", "", str(header).lower())
    return key[1:] if re.match(r"x\d", key) else key


def _line(mask: pd.Series) -> int:
    """File line of the first True row. Index labels are read_csv's row numbers (kept through any
    slicing), and the header is line 1, so row i is line i + 2."""
    return int(mask[mask].index[0]) + 2


def _parse_int(values: pd.Series, column: str, source: str) -> pd.Series:
    """Whole numbers, thousands separators allowed. Blank, 'N/A' or decimals are errors, not zeros."""
    cleaned = values.str.strip().str.replace(",", "", regex=False)
    bad = ~cleaned.str.fullmatch(r"[0-9]+")
    if bad.any():
        raise SourceFormatError(
            source, f"column {column!r}, line {_line(bad)}: {values[bad].iloc[0]!r} is not a whole number"
        )
    return cleaned.astype("int64")


def _parse_week(values: pd.Series, column: str, source: str) -> pd.Series:
    """ISO timestamps (SODA: 2021-06-21T00:00:00.000) or MM/DD/YYYY (CDC export), as the week's Monday."""
    stripped = values.str.strip()
    dates = pd.to_datetime(stripped, format="ISO8601", errors="coerce")
    us = dates.isna()
    dates[us] = pd.to_datetime(stripped[us], format="%m/%d/%Y", errors="coerce")
    if dates.isna().any():
        raise SourceFormatError(
            source, f"column {column!r}, line {_line(dates.isna())}: {values[dates.isna()].iloc[0]!r} is not a date"
        )
    # CDC weeks start on Monday (every published date is one); normalise anything else to its Monday.
    return (dates - pd.to_timedelta(dates.dt.day_of_week, unit="D")).dt.normalize().astype("datetime64[ns]")
