"""How the HTTP client reads response bodies: whole (inside the retry budget), as a download result,
as a short error excerpt; and the Retry-After header."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
import urllib3

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

def as_is(response: requests.Response) -> requests.Response:
    return response


def load_body(response: requests.Response) -> requests.Response:
    """Read the body now, inside the retry budget. ``Response.content`` reads in 10 KiB pieces, a
    Python round trip each (~1.5 ms of CPU on a 300 KB page); 1 MiB reads, stored where ``content``
    looks first, give the same bytes."""
    if response._content is False and not response._content_consumed and response.raw is not None:
        response._content = b"".join(response.iter_content(_BODY_READ_BYTES))
    response.content  # noqa: B018 - marks the body consumed (and reads it, had the shortcut not applied)
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
