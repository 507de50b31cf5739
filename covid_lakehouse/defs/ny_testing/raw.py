"""Raw layer: download rows.json to a temp file, prove it parses, keep it write-once in S3.

Objects are content-addressed (``<prefix>/sha256=<digest>.json``): a frozen dataset downloaded every
day is stored once, and every materialization records the key it loaded, so any load can be replayed.
The validating parse also writes its Arrow batches to ``<prefix>/sha256=<digest>.parsed-v1.parquet``
next to the raw object, so the county load reads parsed rows instead of parsing the JSON a second time
(it falls back to the JSON when that file is absent, e.g. for objects stored by an older parser).
A body that does not parse (an HTML page or a JSON error served with 200, a truncated or reshaped
document) is never stored as raw data: it is quarantined under ``<prefix>/quarantine/`` for inspection and
the run fails naming the problem. A bad value or a county name that cannot be a table is not a format
error: the body is stored, and only that county is held back by its load (see checks.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import pyarrow.compute as pc
import pyarrow.parquet as pq

from covid_lakehouse.defs.ny_testing.parsing import BATCH_ROWS, SCHEMA, BadRows, open_rows_json
from covid_lakehouse.defs.ny_testing.spool import UnitSpool
from covid_lakehouse.defs.ny_testing.warehouse import (
    COUNTY,
    can_be_partition_key,
    download_name_problems,
    staged_units,
)
from covid_lakehouse.lib.s3 import LakeS3Resource, ObjectExistsError

SNAPSHOT = Path(__file__).parent / "data" / "xdss-u53e_rows.json.gz"  # see data/SOURCES.md
PARSED_SUFFIX = ".parsed-v1.parquet"  # bump when the parser's output changes: old files are then ignored
ROWS_UPDATED_AT = b"rows_updated_at"  # parquet key-value metadata: the source's meta.view.rowsUpdatedAt
ROW_ORDER = b"row_order"  # parquet key-value metadata: how the rows are ordered
GROUPED_BY_UNIT = b"grouped by geography, county"
BAD_ROWS = b"bad_rows"  # parquet key-value metadata: JSON [[geography, name, rows left out, first problem], ...]


def parsed_key(raw_key: str) -> str:
    return raw_key.removesuffix(".json") + PARSED_SUFFIX


@dataclass(frozen=True)
class RawSummary:
    rows: int
    counties: list[str]  # geography COUNTY, sorted, each one a possible partition key
    unusable_counties: dict[str, str]  # county name -> why it cannot be loaded (the county's run says so too)
    bad_rows: BadRows  # per unit: rows left out for a bad value (the unit's check fails)
    reference: list[str]  # every other geography's names, e.g. "New York City [REGION]"
    first_test_date: date | None
    last_test_date: date | None
    column_mapping: dict[str, str]  # our column -> the source's fieldName
    ignored_columns: list[str]
    rows_updated_at: int | None


def summarize(stream: BinaryIO, *, source: str, parsed_sink: BinaryIO) -> RawSummary:
    """Parse the whole body once, writing the rows to ``parsed_sink`` as parquet grouped by unit
    (geography, name; see spool.py); raises SourceFormatError naming a problem of the format. A bad value
    or an unusable county name is not one: it is reported here and blocks only its county's load.
    Memory stays bounded whatever the size of the body: rows go batch by batch to spool files on disk."""
    reader = open_rows_json(stream, source=source)
    pairs: set[tuple[str, str]] = set()
    first = last = None
    updated = b"" if reader.rows_updated_at is None else str(reader.rows_updated_at).encode()
    metadata = {ROWS_UPDATED_AT: updated, ROW_ORDER: GROUPED_BY_UNIT}
    with tempfile.TemporaryDirectory(prefix="ny_testing_spool_") as spool_dir:
        spool = UnitSpool(Path(spool_dir), SCHEMA)
        for batch in staged_units(reader.batches(), pairs):
            spool.add(batch)
            lo, hi = pc.min_max(batch.column("test_date")).values()
            first = lo.as_py() if first is None else min(first, lo.as_py())
            last = hi.as_py() if last is None else max(last, hi.as_py())
        if reader.bad_rows:
            metadata[BAD_ROWS] = json.dumps([[*unit, *bad] for unit, bad in sorted(reader.bad_rows.items())]).encode()
            pairs.update(reader.bad_rows)  # a county whose every row is bad is still in the source
        with pq.ParquetWriter(parsed_sink, SCHEMA.with_metadata(metadata)) as parsed:
            for batch in spool.batches(BATCH_ROWS):
                parsed.write_batch(batch)
    counties = sorted(name for geography, name in pairs if geography == COUNTY)
    return RawSummary(
        rows=reader.rows_read,
        counties=[c for c in counties if can_be_partition_key(c)],
        unusable_counties=download_name_problems(counties),
        bad_rows=dict(reader.bad_rows),
        reference=sorted(f"{name} [{geography}]" for geography, name in pairs if geography != COUNTY),
        first_test_date=first,
        last_test_date=last,
        column_mapping=reader.column_mapping,
        ignored_columns=reader.ignored_columns,
        rows_updated_at=reader.rows_updated_at,
    )


@dataclass(frozen=True)
class Parsed:
    file: pq.ParquetFile
    rows_updated_at: int | None  # the source's meta.view.rowsUpdatedAt
    grouped: bool  # rows grouped by unit (geography, name); files written before that are in source order
    bad_rows: BadRows  # rows the parse left out for a bad value


def read_parsed(path: BinaryIO) -> Parsed | None:
    """The parsed rows written by ``summarize``; None if not in our schema."""
    # pre_buffer (pyarrow's default) reads every row group iter_batches will visit up front: the whole
    # file in memory (110 MB at 100x). Without it each 8k-row group is read when its batch is due.
    parsed = pq.ParquetFile(path, pre_buffer=False)
    if not parsed.schema_arrow.remove_metadata().equals(SCHEMA):
        return None
    metadata = parsed.schema_arrow.metadata or {}
    updated = metadata.get(ROWS_UPDATED_AT)
    bad = {(g, n): (count, problem) for g, n, count, problem in json.loads(metadata.get(BAD_ROWS, b"[]"))}
    return Parsed(parsed, int(updated) if updated else None, metadata.get(ROW_ORDER) == GROUPED_BY_UNIT, bad)


def put_once(s3: LakeS3Resource, bucket: str, key: str, body: BinaryIO, metadata: dict[str, str]) -> bool:
    """Put ``body`` at a content-addressed key: True if stored now, False if it was already there (the
    key names the content, so what is there is the same bytes)."""
    try:
        s3.put_write_once(bucket, key, body, metadata=metadata)
    except ObjectExistsError:
        return False
    return True


def display_url(url: str) -> str:
    """The URL without its query (a token may be appended there), for metadata and messages."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


@lru_cache(maxsize=1)
def bundled_snapshot_sha256() -> str:
    """Digest of the bundled snapshot as served (decompressed): lets the demo say it used it."""
    digest = hashlib.sha256()
    with gzip.open(SNAPSHOT) as body:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
