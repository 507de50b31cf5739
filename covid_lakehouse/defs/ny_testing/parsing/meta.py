"""The first pass over a rows.json body: reject what is plainly not rows.json (HTML, arrays, API error
bodies), then parse up to the ``data`` array and return ``meta``. The bytes read are recorded on a tape
so the row pass can replay them instead of reading the body twice."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson

from covid_lakehouse.defs.ny_testing.parsing.errors import SourceFormatError

_SNIFF_BYTES = 1 << 16
# The part before the rows (leading whitespace, meta) is held in memory: the real one is ~20 KB.
MAX_BEFORE_DATA_BYTES = 16 << 20


class Tape:
    """Byte stream that records what the header pass reads, so the data pass can replay it."""

    def __init__(self, raw: BinaryIO, head: bytes, source: str = "body") -> None:
        self._raw = raw
        self._pending = head  # served before reading more from raw
        self._recorded: list[bytes] | None = []
        self._recorded_bytes = 0
        self._source = source
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
            self._recorded_bytes += len(out)
            if self._recorded_bytes > MAX_BEFORE_DATA_BYTES:
                raise SourceFormatError(self._source, f"more than {MAX_BEFORE_DATA_BYTES} bytes before the "
                                        '"data" array: not a rows.json export (its meta is a few KB)')
        return out

    def rewind(self) -> None:
        """Serve everything read so far again, and stop recording."""
        self._pending = b"".join(self._recorded or ()) + self._pending
        self._recorded = None


def json_error(source: str, tape: Tape, exc: Exception) -> SourceFormatError:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0]
    # At the end of the body the offset is exact; mid-body it is the end of the chunk being parsed.
    where = "at" if "premature EOF" in detail else "before"
    return SourceFormatError(source, f"truncated or malformed JSON {where} byte {tape.offset}: {detail}")


def sniff(stream: BinaryIO, source: str) -> bytes:
    """Read the first bytes and reject bodies that are plainly not rows.json, before any parsing."""
    chunks: list[bytes] = []
    size = 0
    while True:  # each chunk is looked at once: linear however much whitespace comes first
        chunk = stream.read(_SNIFF_BYTES)
        if not isinstance(chunk, bytes):
            raise TypeError(f"{source}: open the body in binary mode")
        if not chunk:
            break
        size += len(chunk)
        chunks.append(chunk)
        if chunk.strip():
            break
        if size > MAX_BEFORE_DATA_BYTES:
            raise SourceFormatError(source, f"more than {MAX_BEFORE_DATA_BYTES} bytes of whitespace and "
                                    "nothing else at the start: not rows.json")
    head = b"".join(chunks)
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


def read_meta(tape: Tape, source: str) -> dict:
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
        raise json_error(source, tape, exc) from exc
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
