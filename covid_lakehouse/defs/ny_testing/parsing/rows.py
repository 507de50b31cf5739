"""The row pass of the rows.json parser: ``open_rows_json`` runs the meta pass and resolves the columns,
then ``RowsJsonReader.batches`` streams the ``data`` rows once with ijson's C backend, in batches that
become pyarrow RecordBatches (with SCHEMA) through vectorised compute kernels, not per-value Python.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from datetime import date
from typing import BinaryIO

import ijson
import pyarrow as pa
import pyarrow.compute as pc

from covid_lakehouse.defs.ny_testing.parsing.columns import MEASURES, SCHEMA, resolve_columns
from covid_lakehouse.defs.ny_testing.parsing.errors import SourceFormatError
from covid_lakehouse.defs.ny_testing.parsing.meta import Tape, json_error, read_meta, sniff

_INT_RE = r"^-?(\d+|\d{1,3}(,\d{3})+)$"  # "1364305" or "1,364,305"
_DATE_RE = r"^(\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?)?|\d{1,2}/\d{1,2}/\d{4})$"
CHUNK_ROWS = 4096  # rows held as Python objects at once (see RowsJsonReader.batches)
# Rows per Arrow batch handed out (~0.5 MB): small enough that the Arrow allocator's retained pages stay
# small (100k-row batches cost ~60 MB more peak RSS at 10x), large enough for the kernels and COPY to run at speed.
BATCH_ROWS = 8_192
_NULL_TEXT = pa.scalar(None, pa.string())
# SCHEMA before rows with bad values are left out (their values are null until then).
_NULLABLE = pa.schema([f.with_nullable(True) for f in SCHEMA])
BadRows = dict[tuple[str, str], tuple[int, str]]  # (geography, name) -> (rows left out, the first's problem)


class RowsJsonReader:
    """Columns resolved from ``meta``; ``batches()`` then streams the rows once."""

    def __init__(self, tape: Tape, meta: dict, *, source: str, batch_rows: int) -> None:
        view = meta.get("view")
        columns = view.get("columns") if isinstance(view, dict) else None
        if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
            raise SourceFormatError(source, "meta.view.columns is missing or is not a list of columns")
        self.source = source
        self.view_id: str | None = view.get("id")
        self.rows_updated_at: int | None = view.get("rowsUpdatedAt")  # epoch seconds of the last data change
        self._index, self.ignored_columns = resolve_columns(columns, source)
        self.column_mapping = {ours: str(columns[i].get("fieldName")) for ours, i in self._index.items()}
        self.has_geography = "geography" in self._index
        self.rows_read = 0
        self.bad_rows: BadRows = {}  # rows left out for a bad value, per unit: read after batches()
        self._width = len(columns)
        # One C-level itemgetter per row keeps only the values we load (and the GC out of the way).
        self._loaded = [c for c in ("geography", "county", "test_date", *MEASURES) if c in self._index]
        self._pick = operator.itemgetter(*(self._index[c] for c in self._loaded))
        self._tape = tape
        self._batch_rows = batch_rows
        self._started = False

    def batches(self) -> Iterator[pa.RecordBatch]:
        """RecordBatches with SCHEMA; raises SourceFormatError on the first row or byte that breaks the format
        (not JSON, not a row, no county or geography). A row with a bad value (blank, not an integer, not a
        date) is left out and counted in ``bad_rows`` under its unit, whose check then fails: one bad value
        blocks one county, not the download."""
        if self._started:
            raise RuntimeError("batches() reads the stream once")
        self._started = True
        # Python objects cost ~10x their Arrow form (a str per value, a tuple per row), so rows are
        # held as Python values only ``CHUNK_ROWS`` at a time; each chunk becomes Arrow at once and
        # chunks are joined into the ``batch_rows`` batches handed out. Memory is bounded by the batch
        # size, whatever the size of the body.
        buf: list[tuple] = []
        pending: list[pa.RecordBatch] = []  # converted chunks of the batch being built
        pending_rows = 0
        want = min(CHUNK_ROWS, self._batch_rows)
        try:
            for row in ijson.items(self._tape, "data.item"):
                if not isinstance(row, list) or len(row) != self._width:
                    n = self.rows_read + len(buf) + 1
                    raise SourceFormatError(self.source, f"row {n} is not a list of {self._width} values")
                buf.append(self._pick(row))
                if len(buf) == want:
                    pending.append(self._to_batch(buf))
                    pending_rows += len(buf)
                    buf = []
                    if pending_rows == self._batch_rows:
                        yield from _concat(pending)
                        pending, pending_rows = [], 0
                    want = min(CHUNK_ROWS, self._batch_rows - pending_rows)
        except ijson.JSONError as exc:
            raise json_error(self.source, self._tape, exc) from exc
        if buf:
            pending.append(self._to_batch(buf))
        if pending:
            yield from _concat(pending)

    def read_all(self) -> pa.Table:
        return pa.Table.from_batches(list(self.batches()), schema=SCHEMA)

    # -- one batch: a tuple of values per column, then vectorised checks and casts ----------------

    def _to_batch(self, rows: list[tuple]) -> pa.RecordBatch:
        cols = {
            name: _strings(values) for name, values in zip(self._loaded, zip(*rows, strict=True), strict=True)
        }
        if self.has_geography:
            geography = pc.utf8_upper(self._text(cols, "geography"))
        else:
            geography = pa.repeat("COUNTY", len(rows))  # the dataset had counties only before 2021
        county = self._text(cols, "county")
        bad: dict[int, list[str]] = {}  # row index in this chunk -> what is wrong with it
        arrays = [geography, county, self._dates(cols, bad)]
        arrays += [self._integers(cols, m, bad) for m in MEASURES]
        batch = pa.RecordBatch.from_arrays(arrays, schema=_NULLABLE)
        if bad:
            # A bad value blocks its county (or reference unit), not the download: the row is left out
            # and the problem kept for that unit's check; the unit's other rows are staged as usual.
            for i in sorted(bad):
                unit = (geography[i].as_py(), county[i].as_py())
                count, first = self.bad_rows.get(unit, (0, None))
                self.bad_rows[unit] = (count + 1, first or f"row {self.rows_read + i + 1}: " + "; ".join(bad[i]))
            keep = pa.array([i not in bad for i in range(len(rows))])
            batch = batch.filter(keep)
        self.rows_read += len(rows)
        return batch.cast(SCHEMA)

    def _problem(self, ours: str, raw: pa.Array, i: int, what: str) -> str:
        return f"{what} in column {ours} (source field {self.column_mapping[ours]!r}): {raw[i].as_py()!r}"

    def _fail(self, ours: str, raw: pa.Array, mask: pa.Array, what: str) -> SourceFormatError:
        i = pc.index(mask, True).as_py()
        return SourceFormatError(self.source, f"row {self.rows_read + i + 1}: {self._problem(ours, raw, i, what)}")

    def _text(self, cols: dict[str, pa.Array], ours: str) -> pa.Array:
        # A row without a county or geography belongs to no unit that could be held back alone: a format error.
        text = pc.utf8_trim_whitespace(cols[ours])
        blank = pc.fill_null(pc.equal(text, ""), True)
        if pc.any(blank).as_py():
            raise self._fail(ours, cols[ours], blank, "blank value")
        return text

    def _integers(self, cols: dict[str, pa.Array], ours: str, bad: dict[int, list[str]]) -> pa.Array:
        """The column as int64, null where a value is blank, not an integer or out of range (noted in ``bad``)."""
        raw = cols[ours]
        text = pc.utf8_trim_whitespace(raw)
        good = pc.fill_null(pc.match_substring_regex(text, _INT_RE), False)
        digits = pc.if_else(good, pc.replace_substring(text, ",", ""), _NULL_TEXT)
        try:
            values = pc.cast(digits, pa.int64())
        except pa.ArrowInvalid:
            big = pa.array([v is not None and abs(int(v)) >= 2**63 for v in digits.to_pylist()])
            for i in pc.indices_nonzero(big).to_pylist():
                bad.setdefault(i, []).append(self._problem(ours, raw, i, "integer out of range"))
            values = pc.cast(pc.if_else(big, _NULL_TEXT, digits), pa.int64())
        for i in pc.indices_nonzero(pc.invert(good)).to_pylist():
            blank = not (text[i].as_py() or "")
            bad.setdefault(i, []).append(self._problem(ours, raw, i, "blank value" if blank else "non-integer value"))
        return values

    def _dates(self, cols: dict[str, pa.Array], bad: dict[int, list[str]]) -> pa.Array:
        """test_date as date32, null where unrecognised or impossible (noted in ``bad``)."""
        raw = cols["test_date"]
        text = pc.utf8_trim_whitespace(raw)
        good = pc.fill_null(pc.match_substring_regex(text, _DATE_RE), False)
        for i in pc.indices_nonzero(pc.invert(good)).to_pylist():
            bad.setdefault(i, []).append(self._problem("test_date", raw, i, "unrecognised date"))
        text = pc.if_else(good, text, _NULL_TEXT)
        if pc.any(pc.match_substring(text, "/")).as_py():
            # M/D/YYYY -> YYYY-MM-DD with regexes, so the strict ISO cast below checks it too
            # (Arrow's strptime would turn 2/30 into 3/1).
            text = pc.replace_substring_regex(text, r"^(\d)/", r"0\1/")
            text = pc.replace_substring_regex(text, r"^(\d\d)/(\d)/", r"\1/0\2/")
            text = pc.replace_substring_regex(text, r"^(\d\d)/(\d\d)/(\d{4})$", r"\3-\1-\2")
        iso = pc.utf8_slice_codeunits(text, 0, 10)
        try:
            return pc.cast(iso, pa.date32())
        except pa.ArrowInvalid:
            invalid = pa.array([v is not None and not _is_date(v) for v in iso.to_pylist()])
            for i in pc.indices_nonzero(invalid).to_pylist():
                bad.setdefault(i, []).append(self._problem("test_date", raw, i, "impossible date"))
            return pc.cast(pc.if_else(invalid, _NULL_TEXT, iso), pa.date32())


def _concat(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The chunks as one batch; none when every row was left out for a bad value."""
    batch = batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    if batch.num_rows:
        yield batch


def _strings(values: tuple) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a JSON number where Socrata sends strings
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def open_rows_json(stream: BinaryIO, *, source: str, batch_rows: int = BATCH_ROWS) -> RowsJsonReader:
    """Check the body and resolve its columns from ``meta``; rows are read later by ``batches()``.

    ``source`` (URL, S3 key) names the body in every error. Row numbers in errors count from 1 in
    the ``data`` array. The stream is read once and not closed here.
    """
    head = sniff(stream, source)
    tape = Tape(stream, head, source)
    meta = read_meta(tape, source)
    tape.rewind()  # the data pass re-reads the (small) meta at C speed, then streams the rows
    return RowsJsonReader(tape, meta, source=source, batch_rows=batch_rows)
