"""Reading a stored raw download for a county load: its parsed parquet (written by the raw asset's
validating parse) when there is one, else the rows.json itself, parsed again."""

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa

from covid_lakehouse.defs.ny_testing.parsing import BATCH_ROWS, BadRows, SourceFormatError, open_rows_json
from covid_lakehouse.defs.ny_testing.raw import parsed_key, read_parsed
from covid_lakehouse.lib.s3 import LakeS3Resource


@dataclass(frozen=True)
class RawRows:
    batches: Iterator[pa.RecordBatch]
    rows_updated_at: int | None  # the source's meta.view.rowsUpdatedAt
    source: str  # where they are read from
    grouped: bool  # grouped by unit (geography, name)
    bad_rows: Callable[[], BadRows]  # rows left out for a bad value; complete once ``batches`` is read


@contextmanager
def open_raw_rows(s3: LakeS3Resource, bucket: str, raw_key: str) -> Iterator[RawRows]:
    """The rows of a raw object: its parsed parquet when there is one (written by the validating parse,
    grouped by county), else the rows.json itself, streamed from S3 and parsed once (in source order)."""
    client = s3.get_client()
    source = f"s3://{bucket}/{raw_key}"
    if s3.object_exists(bucket, parsed_key(raw_key), client=client):
        with tempfile.TemporaryFile() as local:  # parquet needs a seekable file; it is ~1/10 of the JSON
            # One streamed GET in 1 MiB chunks: boto3's download_fileobj would fetch parts on 10
            # threads and buffer them, tens of MB whatever the batch size.
            body = client.get_object(Bucket=bucket, Key=parsed_key(raw_key))["Body"]
            try:
                shutil.copyfileobj(body, local, 1 << 20)
            finally:
                body.close()
            parsed = read_parsed(local)
            if parsed is not None:
                # use_threads=False: decoding 8k-row batches is cheap; pool threads would each keep memory.
                yield RawRows(parsed.file.iter_batches(batch_size=BATCH_ROWS, use_threads=False),
                              parsed.rows_updated_at, f"s3://{bucket}/{parsed_key(raw_key)}", parsed.grouped,
                              lambda: parsed.bad_rows)
                return
    body = client.get_object(Bucket=bucket, Key=raw_key)["Body"]
    try:
        reader = open_rows_json(body, source=source)
        yield RawRows(reader.batches(), reader.rows_updated_at, source, False, lambda: reader.bad_rows)
    except SourceFormatError as err:
        raise dg.Failure(f"{err}; nothing published", allow_retries=False) from None
    finally:
        body.close()
