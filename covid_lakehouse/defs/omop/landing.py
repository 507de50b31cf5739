"""Client file drops: list a tenant's landing prefix, parse CSV and JSON files into raw rows.

Nothing is cleaned here: every value is kept as the client wrote it (as text), with the file's key,
ETag and line number, so any published value can be traced back to its line. Files that cannot be
read as a whole are recorded with a reject reason; single bad rows are kept with a malformed reason.
Both end up in the quarantine table downstream.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime

# Client column -> our column. Headers match ignoring case, spaces and punctuation.
FILE_COLUMNS = {
    "providername": "provider_name",
    "providerid": "provider_id",
    "npi": "npi",
    "specialty": "specialty",
    "sitename": "site_name",
    "sourceid": "source_id",
    "specsource": "spec_source",
    "idsource": "id_source",
}
VALUE_COLUMNS = list(FILE_COLUMNS.values())
REQUIRED_COLUMNS = ("provider_name", "provider_id", "npi")
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class LandingObject:
    key: str
    etag: str
    size: int
    last_modified: datetime

    @property
    def order(self) -> tuple[datetime, str]:
        return (self.last_modified, self.key)


@dataclass
class ParsedFile:
    format: str
    rows: list[dict] = field(default_factory=list)  # line_no, VALUE_COLUMNS..., malformed_reason, raw_record
    reject_reason: str | None = None
    detail: str = ""

    @property
    def malformed(self) -> int:
        return sum(1 for row in self.rows if row["malformed_reason"])


def list_landing(client, bucket: str, prefix: str) -> list[LandingObject]:
    """Every object under the prefix, oldest first (S3 lists in key order; we need arrival order)."""
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue
            objects.append(LandingObject(item["Key"], item["ETag"].strip('"'), item["Size"], item["LastModified"]))
    return sorted(objects, key=lambda o: o.order)


def file_format(key: str) -> str | None:
    lower = key.lower()
    return next((fmt for ext, fmt in FORMATS.items() if lower.endswith(ext)), None)


def parse_landing_file(key: str, body: bytes) -> ParsedFile:
    fmt = file_format(key)
    if fmt is None:
        return ParsedFile("unknown", reject_reason="unsupported_format",
                          detail=f"expected one of {', '.join(FORMATS)}")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return ParsedFile(fmt, reject_reason="not_utf8", detail=f"byte {err.start}: {err.reason}")
    if not text.strip():
        return ParsedFile(fmt)  # an empty drop is a file with no rows, not an error
    return _parse_csv(text) if fmt == "csv" else _parse_json(text, fmt)


def _column_map(names: list[str]) -> tuple[dict[str, str], str | None, str]:
    """Header name -> our column; a reject reason when the header is unusable."""
    mapped: dict[str, str] = {}
    for name in names:
        column = FILE_COLUMNS.get(re.sub(r"[^a-z0-9]", "", str(name).lower()))
        if column in mapped.values():
            return {}, "duplicate_columns", f"two columns map to {column}"
        if column:
            mapped[name] = column
    missing = [c for c in REQUIRED_COLUMNS if c not in mapped.values()]
    if missing:
        return {}, "missing_columns", f"missing {', '.join(missing)}"
    return mapped, None, ""


def _row(line_no: int, values: dict[str, str | None], malformed: str | None = None, raw: str | None = None) -> dict:
    return {"line_no": line_no, **{c: values.get(c) for c in VALUE_COLUMNS}, "malformed_reason": malformed,
            "raw_record": raw}


def _parse_csv(text: str) -> ParsedFile:
    reader = csv.reader(io.StringIO(text, newline=""))
    parsed = ParsedFile("csv")
    try:
        header = next(reader)
        mapped, parsed.reject_reason, parsed.detail = _column_map(header)
        if parsed.reject_reason:
            return parsed
        positions = {i: mapped[name] for i, name in enumerate(header) if name in mapped}
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                parsed.rows.append(_row(reader.line_num, {}, "wrong_field_count",
                                        ",".join(record)[:2000]))
                continue
            parsed.rows.append(_row(reader.line_num, {col: record[i] for i, col in positions.items()}))
    except csv.Error as err:
        return ParsedFile("csv", reject_reason="unparseable", detail=f"line {reader.line_num}: {err}")
    return parsed


def _parse_json(text: str, fmt: str) -> ParsedFile:
    """A .json file is an array of records, one record, or JSON lines; .jsonl/.ndjson are JSON lines."""
    parsed = ParsedFile(fmt)
    records: list[tuple[int, object, str | None]] = []
    document: object = None
    if fmt == "json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data" after a first value: JSON lines
                return ParsedFile(fmt, reject_reason="unparseable", detail=f"line {err.lineno}: {err.msg}")
    if isinstance(document, list):
        records = [(i, item, None) for i, item in enumerate(document, start=1)]
    elif isinstance(document, dict):
        records = [(1, document, None)]
    elif document is not None:
        return ParsedFile(fmt, reject_reason="unsupported_json_shape", detail="expected records (JSON objects)")
    else:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((line_no, json.loads(line), None))
            except json.JSONDecodeError as err:
                records.append((line_no, None, f"invalid_json: {err.msg}"))
    keys = {k for _, item, _ in records if isinstance(item, dict) for k in item}
    mapped, parsed.reject_reason, parsed.detail = _column_map(sorted(keys))
    if parsed.reject_reason:
        return parsed
    for line_no, item, error in records:
        if error:
            parsed.rows.append(_row(line_no, {}, "invalid_json", error[:2000]))
        elif not isinstance(item, dict):
            parsed.rows.append(_row(line_no, {}, "not_an_object", json.dumps(item)[:2000]))
        else:
            parsed.rows.append(_row(line_no, {col: _text(item.get(key)) for key, col in mapped.items()}))
    return parsed


def _text(value: object) -> str | None:
    """JSON scalars as text; note a JSON number has already lost any zero padding."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True)
