"""How the HTTP client reads response bodies: whole (inside the retry budget), as a download result,
as a short error excerpt; and the Retry-After header."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3

from covid_lakehouse.lib.http.limits import Deadline

_EXCERPT_BYTES = 4096
_BODY_READ_BYTES = 1 << 20
_EXCERPT_CHARS = 300


@dataclass(frozen=True)
class DownloadResult:
    bytes: int  # of the decoded body, as written to the sink
    sha256: str  # hex digest of the same bytes
    content_type: str | None
    status: int


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP date; None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)

class BodyLimitError(Exception):
    """A bound of ``read_chunks`` was hit; the client turns it into its named error."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind  # "deadline" or "size"


def read_chunks(response: requests.Response, *, max_bytes: int, deadline: Deadline,
                read_timeout: float, chunk_size: int = _BODY_READ_BYTES) -> Iterator[bytes]:
    """The decoded body in chunks, bounded. ``read1`` returns what one socket read brought (decoded at
    most ``chunk_size`` at a time), so the deadline is checked after every read however slowly bytes
    trickle, and each read's socket timeout is cut to the time left."""
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    total = 0
    while True:
        if deadline.passed():
            raise BodyLimitError("deadline", f"body not complete after {total} bytes when the call's "
                                             f"{deadline.seconds:g}s deadline passed")
        if sock is not None:
            sock.settimeout(deadline.cap(read_timeout))
        try:
            chunk = raw.read1(chunk_size, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError:
            if deadline.passed():
                continue  # reported as the deadline above, not as a read timeout
            raise
        if not chunk:
            return
        total += len(chunk)
        if total > max_bytes:
            raise BodyLimitError("size", f"decoded body exceeds the cap of {max_bytes} bytes")
        yield chunk


def as_is(response: requests.Response, **_limits: Any) -> requests.Response:
    return response


def load_body(response: requests.Response, **limits: Any) -> requests.Response:
    """Read the body now, inside the retry budget and the call's bounds (see read_chunks); stored
    where ``Response.content`` looks first."""
    if response._content is False and not response._content_consumed and response.raw is not None:
        try:
            response._content = b"".join(read_chunks(response, **limits))
        except BaseException:
            response.close()  # a body read to its end releases the connection for keep-alive by itself
            raise
    response._content_consumed = True
    response.content  # noqa: B018 - the body is consumed (reads it, had the shortcut not applied)
    return response


def error_excerpt(response: requests.Response) -> str:
    """The first few hundred characters of an error body (an HTML page's title), then close it."""
    try:
        raw = next(response.iter_content(_EXCERPT_BYTES), b"")[:_EXCERPT_BYTES]
    except (requests.RequestException, urllib3.exceptions.HTTPError):
        raw = b""
    finally:
        response.close()
    text = raw.decode("utf-8", errors="replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = f"HTML page: {title[1]}"
    return " ".join(text.split())[:_EXCERPT_CHARS]
