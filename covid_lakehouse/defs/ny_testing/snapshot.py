"""Build Socrata ``rows.json`` bodies for the NYS testing dataset (xdss-u53e) without the network.

No committed ``rows.json`` of this dataset exists, so the bundled snapshot is rebuilt from the portal's
CSV export and written in the exact layout of real Socrata exports (see shared/data/socrata): a
``meta.view`` object whose ``columns`` start with 8 hidden system columns, then ``data`` rows holding
the 8 system values followed by the user values as strings.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

Row = Sequence[str | None]

# 2023-09-01, the day the dataset was frozen: stands in for Socrata's created/updated stamps.
FROZEN_AT = 1693526400
_SYSTEM_FIELDS = ("sid", "id", "position", "created_at", "created_meta", "updated_at", "updated_meta", "meta")
_SOCRATA_4X4 = "23456789abcdefghijkmnpqrstuvwxyz"  # alphabet of Socrata's row and view ids


@dataclass(frozen=True)
class ColumnSpec:
    field_name: str  # API name (fieldName)
    name: str  # display name (as in the CSV header)
    data_type: str = "text"  # Socrata dataTypeName: text, number, calendar_date


# The API's columns, in the portal's order, keyed by the CSV export's headers.
CSV_HEADER_COLUMNS: dict[str, ColumnSpec] = {
    c.name: c
    for c in (
        ColumnSpec("test_date", "Test Date", "calendar_date"),
        ColumnSpec("county", "County"),
        ColumnSpec("new_positives", "New Positives", "number"),
        ColumnSpec("cumulative_number_of_positives", "Cumulative Number of Positives", "number"),
        ColumnSpec("total_number_of_tests", "Total Number of Tests Performed", "number"),
        ColumnSpec("cumulative_number_of_tests", "Cumulative Number of Tests Performed", "number"),
        ColumnSpec("test_positive", "Test % Positive", "number"),
        ColumnSpec("geography", "Geography"),
    )
}


_PAIRS = [a + b for a in _SOCRATA_4X4 for b in _SOCRATA_4X4]  # 10 bits -> 2 characters
_encode = json.JSONEncoder(ensure_ascii=False).encode


def _sid(i: int) -> str:
    # Deterministic look-alike of "row-wpzn~5ait~q2vt": the row index in 12 base-32 digits.
    p = _PAIRS
    return (f"row-{p[i >> 50 & 1023]}{p[i >> 40 & 1023]}~{p[i >> 30 & 1023]}{p[i >> 20 & 1023]}"
            f"_{p[i >> 10 & 1023]}{p[i & 1023]}")  # fmt: skip


def _system_values(n: int) -> list:
    # :sid, :id, :position, :created_at, :created_meta, :updated_at, :updated_meta, :meta
    return [_sid(n), f"00000000-0000-0000-{n >> 48 & 0xFFFF:04X}-{n & 0xFFFFFFFFFFFF:012X}", 0,
            FROZEN_AT, None, FROZEN_AT, None, "{ }"]  # fmt: skip


def _column_meta(col: ColumnSpec, position: int) -> dict:
    return {
        "id": 600000000 + position,
        "name": col.name,
        "dataTypeName": col.data_type,
        "fieldName": col.field_name,
        "position": position,
        "renderTypeName": col.data_type,
        "tableColumnId": 150000000 + position,
        "format": {},
    }


def _view_meta(view_id: str, view_name: str, columns: list[ColumnSpec]) -> dict:
    system = [
        {
            "id": -1,
            "name": f,
            "dataTypeName": "meta_data",
            "fieldName": f":{f}",
            "position": 0,
            "renderTypeName": "meta_data",
            "format": {},
            "flags": ["hidden"],
        }
        for f in _SYSTEM_FIELDS
    ]
    return {
        "view": {
            "id": view_id,
            "name": view_name,
            "assetType": "dataset",
            "attribution": "New York State Department of Health",
            "category": "Health",
            "description": "Offline snapshot rebuilt from the portal's CSV export in the rows.json layout.",
            "displayType": "table",
            "provenance": "official",
            "rowsUpdatedAt": FROZEN_AT,
            "viewType": "tabular",
            "columns": system + [_column_meta(c, i) for i, c in enumerate(columns, start=1)],
        }
    }


def write_rows_json(
    out: BinaryIO,
    columns: list[ColumnSpec],
    rows: Iterable[Row],
    *,
    view_id: str = "xdss-u53e",
    view_name: str = "New York State Statewide COVID-19 Testing",
) -> int:
    """Stream a rows.json body to ``out`` one row at a time; returns the number of rows written."""
    meta = json.dumps(_view_meta(view_id, view_name, columns), indent=2, separators=(",", " : "))
    out.write(b'{\n  "meta" : ' + meta.replace("\n", "\n  ").encode() + b',\n  "data" : [ ')
    n = 0
    for n, row in enumerate(rows, start=1):
        if len(row) != len(columns):
            raise ValueError(f"row {n} has {len(row)} values for {len(columns)} columns")
        # Jackson's pretty printer, as Socrata emits it: "[ a, b ]" rows separated by "\n, ".
        body = _encode(_system_values(n) + list(row))[1:-1]
        out.write(("" if n == 1 else "\n, ").encode() + b"[ " + body.encode() + b" ]")
    out.write(b"\n ]\n}\n")
    return n


def _plain_number(value: str) -> str:
    # The export shows "1,364,305" and "9.98%"; the API serves plain digits.
    return value.replace(",", "").removesuffix("%").strip()


def _api_date(value: str) -> str:
    return datetime.strptime(value.strip(), "%m/%d/%Y").strftime("%Y-%m-%dT00:00:00")


def read_export_csv(path: str | Path) -> tuple[list[ColumnSpec], Iterator[list[str | None]]]:
    """Read the portal's CSV export; returns the API columns and the rows as the API would serve them."""
    f = open(path, encoding="utf-8-sig", newline="")
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        f.close()
        raise ValueError(f"{path}: empty CSV")
    unknown = [h for h in header if h not in CSV_HEADER_COLUMNS]
    if unknown:
        f.close()
        raise ValueError(f"{path}: unknown CSV columns {unknown}")
    columns = [CSV_HEADER_COLUMNS[h] for h in header]
    by_type = {"calendar_date": _api_date, "number": _plain_number}
    converters = [by_type.get(c.data_type, str.strip) for c in columns]

    def rows() -> Iterator[list[str | None]]:
        with f:
            for line in reader:
                yield [conv(v) if v != "" else None for conv, v in zip(converters, line, strict=True)]

    return columns, rows()


def scaled_rows(rows: Iterable[Row], factor: int, *, date_index: int = 0) -> Iterator[list[str | None]]:
    """Synthetic benchmark data: ``factor`` copies of ``rows``, copy k dated k x (the span of the original)
    later, so every geography keeps one row per day. ``date_index`` is the test_date column's index.
    Cumulative measures restart in each copy: the figures are for load, not for analysis."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    original = [list(r) for r in rows]
    days = {s: date.fromisoformat(s[:10]) for s in {r[date_index] for r in original}}
    span = (max(days.values()) - min(days.values())).days + 1 if days else 0
    for k in range(factor):
        # Shift each distinct date string once per copy (not once per row), keeping its time suffix.
        shifted = {s: (d + timedelta(days=k * span)).isoformat() + s[10:] for s, d in days.items()}
        for r in original:
            r = r.copy()
            r[date_index] = shifted[r[date_index]]
            yield r
