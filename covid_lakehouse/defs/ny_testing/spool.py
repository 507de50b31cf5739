"""Regroup a stream of parsed rows by unit (geography, name) on local disk, in bounded memory.

The source lists every geography of a day before the next day, so one county's rows are spread over the
whole body. Written in that order, the staging table holds a few rows of every county on each page: each
county's upsert then reads the whole table (62 x 550 MB at 100x the snapshot) and the audits' GROUP BY and
window scans sort everything. Grouped by unit, a county's rows are contiguous.

Each incoming batch is stably sorted by unit and its runs are appended to one Arrow IPC stream file per
unit (64 KiB write buffer each); ``batches()`` then reads the files back in (geography, name) order and
re-chunks them. Memory: one batch plus the write buffers, whatever the size of the body; disk: about the
size of the rows in Arrow form (~60 bytes a row, ~400 MB at 100x), in a directory the caller removes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

MAX_FILES = 256  # units past this many share one file in arrival order (grouping is then partial)
_WRITE_BUFFER = 1 << 16


def unit_codes(batch: pa.RecordBatch) -> tuple[pa.Array, Callable[[int], tuple[str, str]]]:
    """One integer code per row for its unit (geography, name), and the unit of a code. Kernels only
    (no Acero group_by, whose worker threads keep memory)."""
    geography = pc.dictionary_encode(batch.column("geography"))
    name = pc.dictionary_encode(batch.column("county"))
    width = max(1, len(name.dictionary))
    codes = pc.add(pc.multiply(geography.indices.cast(pa.int64()), width), name.indices.cast(pa.int64()))
    geographies, names = geography.dictionary.to_pylist(), name.dictionary.to_pylist()
    return codes, lambda code: (geographies[code // width], names[code % width])


class UnitSpool:
    def __init__(self, directory: Path, schema: pa.Schema) -> None:
        self._dir = directory
        self._schema = schema
        self._files: dict[tuple[str, str] | None, tuple[Path, pa.NativeFile, pa.ipc.RecordBatchStreamWriter]] = {}
        self.rows = 0

    def _writer(self, unit: tuple[str, str]) -> pa.ipc.RecordBatchStreamWriter:
        key: tuple[str, str] | None = unit
        if unit not in self._files and len(self._files) >= MAX_FILES:
            key = None  # the shared overflow file, read last
        if key not in self._files:
            path = self._dir / f"unit-{len(self._files):04d}.arrows"
            sink = pa.output_stream(str(path), buffer_size=_WRITE_BUFFER)
            self._files[key] = (path, sink, pa.ipc.new_stream(sink, self._schema))
        return self._files[key][2]

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        codes, unit_of = unit_codes(batch)
        order = pc.sort_indices(codes)  # stable: each unit keeps the source's order
        grouped = batch.take(order)
        runs = pc.value_counts(codes.take(order))  # in order of first appearance: ascending codes
        offset = 0
        for code, count in zip(runs.field("values").to_pylist(), runs.field("counts").to_pylist(), strict=True):
            self._writer(unit_of(code)).write_batch(grouped.slice(offset, count))
            offset += count
        self.rows += batch.num_rows

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Every row, unit after unit in (geography, name) order, in batches of ``batch_rows`` (the last
        one shorter). Closes the files; call once, after the last ``add``."""
        for _, sink, writer in self._files.values():
            writer.close()
            sink.close()
        units = sorted(k for k in self._files if k is not None)
        order = [*units, None] if None in self._files else units
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for key in order:
            path = self._files[key][0]
            with pa.input_stream(str(path)) as source, pa.ipc.open_stream(source) as reader:
                for part in reader:
                    while part.num_rows:
                        take = part.slice(0, batch_rows - pending_rows)
                        pending.append(take)
                        pending_rows += take.num_rows
                        part = part.slice(take.num_rows)
                        if pending_rows == batch_rows:
                            yield pa.concat_batches(pending)
                            pending, pending_rows = [], 0
            path.unlink()
        if pending:
            yield pa.concat_batches(pending)
