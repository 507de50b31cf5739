"""Streaming parser for the NYS COVID-19 testing dataset (Socrata ``rows.json`` of xdss-u53e).

Pure: no database, no network. The body is read once, as a binary stream, with ijson's C backend:
``meta.view.columns`` first (Socrata writes ``meta`` before ``data``), then the ``data`` rows in
batches that become pyarrow RecordBatches through vectorised compute kernels, not per-value Python.
Columns are found by fieldName, then by display name, never by position: the dataset gained and
renamed columns over its life.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any, BinaryIO

import ijson
import pyarrow as pa
import pyarrow.compute as pc


class SourceFormatError(ValueError):
    """The body is not the rows.json we expect; the message names the source and the problem."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class UnsafeIdentifierError(ValueError):
    """A county name cannot become a safe SQL identifier."""


_SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # 63 = PostgreSQL's identifier limit


def county_slug(name: str) -> str:
    """Table-name part for a county: "St. Lawrence" -> "st_lawrence". Raises UnsafeIdentifierError."""
    # NFKD then ASCII keeps "Doña Ana" readable ("dona_ana") instead of dropping the letter.
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
    if not _SLUG_RE.fullmatch(slug):
        raise UnsafeIdentifierError(f"county {name!r} gives no safe identifier (got {slug!r})")
    return slug


def slug_map(names: Iterable[str]) -> dict[str, str]:
    """Slug per distinct county name; two names with one slug would share a table, so that raises."""
    result: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name in names:
        if name in result:
            continue
        slug = county_slug(name)
        if slug in owner:
            raise UnsafeIdentifierError(f"counties {owner[slug]!r} and {name!r} both map to {slug!r}")
        result[name], owner[slug] = slug, name
    return result


MEASURES = (
    "new_positives",
    "cumulative_number_of_positives",
    "total_number_of_tests_performed",
    "cumulative_number_of_tests_performed",
)
REQUIRED = ("test_date", "county", *MEASURES)

# Our name -> every fieldName or display name the dataset has used for it.
ALIASES: dict[str, tuple[str, ...]] = {
    "test_date": ("test_date", "Test Date"),
    "county": ("county", "County"),
    "new_positives": ("new_positives", "New Positives", "Total New Positives"),
    "cumulative_number_of_positives": ("cumulative_number_of_positives", "Cumulative Number of Positives"),
    "total_number_of_tests_performed": (
        "total_number_of_tests",
        "total_number_of_tests_performed",
        "Total Number of Tests Performed",
    ),
    "cumulative_number_of_tests_performed": (
        "cumulative_number_of_tests",
        "cumulative_number_of_tests_performed",
        "Cumulative Number of Tests Performed",
    ),
    "test_positive": ("test_positive", "Test % Positive"),  # known, not loaded: derivable from measures
    "geography": ("geography", "Geography"),
}

SCHEMA = pa.schema(
    [
        pa.field("geography", pa.string(), nullable=False),
        pa.field("county", pa.string(), nullable=False),
        pa.field("test_date", pa.date32(), nullable=False),
        *(pa.field(m, pa.int64(), nullable=False) for m in MEASURES),
    ]
)

_INT_RE = r"^-?(\d+|\d{1,3}(,\d{3})+)$"  # "1364305" or "1,364,305"
_DATE_RE = r"^(\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?)?|\d{1,2}/\d{1,2}/\d{4})$"
_SNIFF_BYTES = 1 << 16
_CHUNK_ROWS = 4096  # rows held as Python objects at once (see RowsJsonReader.batches)
# Rows per Arrow batch handed out (~0.5 MB): small enough that the Arrow allocator's retained pages stay
# small (100k-row batches cost ~60 MB more peak RSS at 10x), large enough for the kernels and COPY to run at speed.
BATCH_ROWS = 8_192


def _norm(label: str) -> str:
    # "Total New Positives", "total_new_positives" and "TOTAL  NEW POSITIVES" are one name.
    return re.sub(r"[\s_]+", " ", label).strip().lower()


class _Tape:
    """Byte stream that records what the header pass reads, so the data pass can replay it."""

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self._raw = raw
        self._pending = head  # served before reading more from raw
        self._recorded: list[bytes] | None = []
        self.offset = len(head)  # bytes taken from the source so far, for error messages

    def read(self, n: int = -1) -> bytes:
        if self._pending:
            n = len(self._pending) if n < 0 else n
            out, self._pending = self._pending[:n], self._pending[n:]
        else:
            out = self._raw.read(n)
            self.offset += len(out)
        if self._recorded is not None:
            self._recorded.append(out)
        return out

    def rewind(self) -> None:
        """Serve everything read so far again, and stop recording."""
        self._pending = b"".join(self._recorded or ()) + self._pending
        self._recorded = None


def _json_error(source: str, tape: _Tape, exc: Exception) -> SourceFormatError:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0]
    # At the end of the body the offset is exact; mid-body it is the end of the chunk being parsed.
    where = "at" if "premature EOF" in detail else "before"
    return SourceFormatError(source, f"truncated or malformed JSON {where} byte {tape.offset}: {detail}")


def _sniff(stream: BinaryIO, source: str) -> bytes:
    """Read the first bytes and reject bodies that are plainly not rows.json, before any parsing."""
    head = b""
    while not head.strip():
        chunk = stream.read(_SNIFF_BYTES)
        if not isinstance(chunk, bytes):
            raise TypeError(f"{source}: open the body in binary mode")
        if not chunk:
            break
        head += chunk
    head = head.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM would stop the parser
    start = head.lstrip()[:1]
    if not start:
        raise SourceFormatError(source, "empty body")
    if start == b"<":
        title = re.search(rb"<title>(.*?)</title>", head, re.I | re.S)
        shown = f" (title: {title.group(1).decode(errors='replace').strip()!r})" if title else ""
        raise SourceFormatError(source, f"received an HTML page instead of rows.json{shown}")
    if start == b"[":
        raise SourceFormatError(source, "received a JSON array, not rows.json's {meta, data} object")
    if start != b"{":
        raise SourceFormatError(source, f"not JSON: body starts with {head.lstrip()[:40]!r}")
    return head


def _build(events: Iterator[tuple[str, str, Any]]) -> Any:
    """Build the object whose start_map was just read; used for ``meta`` only (small)."""
    builder = ijson.ObjectBuilder()
    builder.event("start_map", None)
    depth = 1
    for _, event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                break
    return builder.value


def _read_meta(tape: _Tape, source: str) -> dict:
    """Parse up to the start of ``data`` and return ``meta``; spot Socrata's JSON error bodies."""
    events = ijson.parse(tape)
    top: dict[str, Any] = {}  # top-level scalars: where error bodies keep their message
    meta = None
    at_data = False
    try:
        for prefix, event, value in events:
            if prefix == "meta" and event == "start_map":
                meta = _build(events)
            elif prefix == "data" and event == "start_array":
                at_data = True
                break
            elif prefix and "." not in prefix and event in ("string", "number", "boolean", "null"):
                top[prefix] = value
    except ijson.JSONError as exc:
        raise _json_error(source, tape, exc) from exc
    if meta is None and ("message" in top or top.get("error") is True):
        code = top.get("code") or top.get("errorCode") or top.get("status")
        shown = f" (code {code})" if code is not None else ""
        raise SourceFormatError(source, f"the API returned an error: {top.get('message')!r}{shown}")
    if meta is None:
        found = '"data" first' if at_data else f"top-level keys {sorted(top)}"
        raise SourceFormatError(source, f'no "meta" object before the rows ({found}): not a rows.json export')
    if not at_data:
        raise SourceFormatError(source, 'no "data" array of rows after "meta"')
    return meta


def _resolve(columns: list[dict], source: str) -> tuple[dict[str, int], list[str]]:
    """Our column -> index in each data row, by fieldName first, then by display name."""
    user = [(i, c) for i, c in enumerate(columns) if not str(c.get("fieldName", "")).startswith(":")]
    index: dict[str, int] = {}
    for key in ("fieldName", "name"):
        for ours, aliases in ALIASES.items():
            if ours in index:
                continue
            wanted = {_norm(a) for a in aliases}
            hits = [i for i, c in user if _norm(str(c.get(key) or "")) in wanted and i not in index.values()]
            if len(hits) > 1:
                names = [columns[i].get(key) for i in hits]
                raise SourceFormatError(source, f"column {ours} is ambiguous: {key}s {names} all match")
            if hits:
                index[ours] = hits[0]
    missing = [r for r in REQUIRED if r not in index]
    if missing:
        found = [f"{c.get('fieldName')} ({c.get('name')})" for _, c in user]
        raise SourceFormatError(source, f"missing required column(s) {missing}; found columns: {found}")
    ignored = [str(c.get("fieldName")) for i, c in user if i not in index.values()]
    return index, ignored


class RowsJsonReader:
    """Columns resolved from ``meta``; ``batches()`` then streams the rows once."""

    def __init__(self, tape: _Tape, meta: dict, *, source: str, batch_rows: int) -> None:
        view = meta.get("view")
        columns = view.get("columns") if isinstance(view, dict) else None
        if not isinstance(columns, list) or not all(isinstance(c, dict) for c in columns):
            raise SourceFormatError(source, "meta.view.columns is missing or is not a list of columns")
        self.source = source
        self.view_id: str | None = view.get("id")
        self.rows_updated_at: int | None = view.get("rowsUpdatedAt")  # epoch seconds of the last data change
        self._index, self.ignored_columns = _resolve(columns, source)
        self.column_mapping = {ours: str(columns[i].get("fieldName")) for ours, i in self._index.items()}
        self.has_geography = "geography" in self._index
        self.rows_read = 0
        self._width = len(columns)
        # One C-level itemgetter per row keeps only the values we load (and the GC out of the way).
        self._loaded = [c for c in ("geography", "county", "test_date", *MEASURES) if c in self._index]
        self._pick = operator.itemgetter(*(self._index[c] for c in self._loaded))
        self._tape = tape
        self._batch_rows = batch_rows
        self._started = False

    def batches(self) -> Iterator[pa.RecordBatch]:
        """RecordBatches with SCHEMA; raises SourceFormatError on the first bad row or byte."""
        if self._started:
            raise RuntimeError("batches() reads the stream once")
        self._started = True
        # Python objects cost ~10x their Arrow form (a str per value, a tuple per row), so rows are
        # held as Python values only ``_CHUNK_ROWS`` at a time; each chunk becomes Arrow at once and
        # chunks are joined into the ``batch_rows`` batches handed out. Memory is bounded by the batch
        # size, whatever the size of the body.
        buf: list[tuple] = []
        pending: list[pa.RecordBatch] = []  # converted chunks of the batch being built
        pending_rows = 0
        want = min(_CHUNK_ROWS, self._batch_rows)
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
                        yield _concat(pending)
                        pending, pending_rows = [], 0
                    want = min(_CHUNK_ROWS, self._batch_rows - pending_rows)
        except ijson.JSONError as exc:
            raise _json_error(self.source, self._tape, exc) from exc
        if buf:
            pending.append(self._to_batch(buf))
        if pending:
            yield _concat(pending)

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
        arrays = [geography, self._text(cols, "county"), self._dates(cols)]
        arrays += [self._integers(cols, m) for m in MEASURES]
        self.rows_read += len(rows)
        return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)

    def _fail(self, ours: str, raw: pa.Array, mask: pa.Array, what: str) -> SourceFormatError:
        i = pc.index(mask, True).as_py()
        return SourceFormatError(
            self.source,
            f"row {self.rows_read + i + 1}: {what} in column {ours} "
            f"(source field {self.column_mapping[ours]!r}): {raw[i].as_py()!r}",
        )

    def _text(self, cols: dict[str, pa.Array], ours: str) -> pa.Array:
        text = pc.utf8_trim_whitespace(cols[ours])
        blank = pc.fill_null(pc.equal(text, ""), True)
        if pc.any(blank).as_py():
            raise self._fail(ours, cols[ours], blank, "blank value")
        return text

    def _integers(self, cols: dict[str, pa.Array], ours: str) -> pa.Array:
        raw = cols[ours]
        text = pc.utf8_trim_whitespace(raw)
        bad = pc.invert(pc.fill_null(pc.match_substring_regex(text, _INT_RE), False))
        if pc.any(bad).as_py():
            blank = pc.fill_null(pc.equal(text, ""), True)
            raise self._fail(ours, raw, bad, "blank value" if pc.any(blank).as_py() else "non-integer value")
        try:
            return pc.cast(pc.replace_substring(text, ",", ""), pa.int64())
        except pa.ArrowInvalid:
            big = pa.array([abs(int(v.replace(",", ""))) >= 2**63 for v in text.to_pylist()])
            raise self._fail(ours, raw, big, "integer out of range") from None

    def _dates(self, cols: dict[str, pa.Array]) -> pa.Array:
        raw = cols["test_date"]
        text = pc.utf8_trim_whitespace(raw)
        bad = pc.invert(pc.fill_null(pc.match_substring_regex(text, _DATE_RE), False))
        if pc.any(bad).as_py():
            raise self._fail("test_date", raw, bad, "unrecognised date")
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
            invalid = pa.array([not _is_date(v) for v in iso.to_pylist()])
            raise self._fail("test_date", raw, invalid, "impossible date") from None


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


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
    head = _sniff(stream, source)
    tape = _Tape(stream, head)
    meta = _read_meta(tape, source)
    tape.rewind()  # the data pass re-reads the (small) meta at C speed, then streams the rows
    return RowsJsonReader(tape, meta, source=source, batch_rows=batch_rows)
