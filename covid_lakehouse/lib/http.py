"""HTTP client for third-party APIs: errors classified before retrying, one retry budget per call.

Transient failures (connection errors, timeouts, bodies cut short, 429 and 500/502/503/504) are retried
with exponential backoff and full jitter, waiting at least what the server asks for (Retry-After or a
connector's own hint). 401/403 and other 4xx fail at once. When the budget (max_attempts and
max_total_wait seconds of waiting) is spent, RetriesExhaustedError is raised. That error, AuthError
and ClientError are also ``dagster.Failure``s with ``allow_retries=False``: retries are bounded here,
a Dagster RetryPolicy neither multiplies them nor repeats a call that cannot succeed.

Messages and logs show the URL with every query value redacted except a short safe list, and scrub
those values (and credential-like header values) from exception texts and body excerpts; headers are
never logged. Exceptions are raised ``from None`` because the chained requests/urllib3 exceptions print
the full URL, secrets included.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import dagster as dg
import requests
import urllib3

from covid_lakehouse.lib.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})

# Query parameters whose values are shown in messages. Every other value is redacted, so a secret
# under a parameter name nobody anticipated stays hidden; extend per client with safe_query_params.
SAFE_QUERY_PARAMS = frozenset(
    {
        "limit", "offset", "page", "page_size", "per_page", "count", "format", "fields", "level",
        "date", "start_date", "end_date", "since", "until", "from", "to", "time_increment",
        "$limit", "$offset", "$order", "$select",
    }
)  # fmt: skip
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|cookie|pass|signature", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"([?&])([^=&\s'\"#]+)=([^&\s'\"#)]*)")
_MIN_SECRET_LEN = 4  # shorter values are not worth scrubbing from free text (and would mangle it)
_EXCERPT_BYTES = 4096
_BODY_READ_BYTES = 1 << 20
_EXCERPT_CHARS = 300
REDACTED = "REDACTED"

T = TypeVar("T")
RetryHint = Callable[[requests.Response], "float | None"]


# --------------------------------------------------------------------------------------------------
# Errors


class HttpError(Exception):
    """An HTTP call failed. ``url`` is already redacted; the message is safe to log."""

    def __init__(
        self,
        method: str,
        url: str,
        detail: str,
        *,
        status: int | None = None,
        body_excerpt: str = "",
        attempts: int = 1,
    ) -> None:
        self.method = method
        self.url = url
        self.detail = detail
        self.status = status
        self.body_excerpt = body_excerpt
        self.attempts = attempts
        message = f"{method} {url}: {detail}"
        if body_excerpt:
            message += f"; body: {body_excerpt!r}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only constructor breaks Exception's default pickling (multiprocess executors).
        return (_rebuild_error, (type(self), self.args, self.__dict__.copy()))


def _rebuild_error(cls: type[HttpError], args: tuple[Any, ...], state: dict[str, Any]) -> HttpError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class _FinalHttpError(HttpError, dg.Failure):
    """Also a dagster.Failure with allow_retries=False: a RetryPolicy must not retry what this client
    already retried (or what no retry can fix), so HTTP retries stay bounded in one place."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # HttpError, whose super() is dg.Failure (plain description)
        metadata: dict[str, Any] = {"method": self.method, "url": self.url, "attempts": self.attempts}
        if self.status is not None:
            metadata["status"] = self.status
        dg.Failure.__init__(self, description=str(self), metadata=metadata, allow_retries=False)


class AuthError(_FinalHttpError):
    """401/403: the credentials are wrong or lack a permission; retrying cannot help."""


class ClientError(_FinalHttpError):
    """Any other 4xx: the request itself is wrong; retrying cannot help."""


class RetriesExhaustedError(_FinalHttpError):
    """Transient failures outlasted the call's budget (max_attempts, max_total_wait)."""


class TransientHttpError(RetriesExhaustedError):
    """Connection errors, timeouts, truncated bodies or 5xx until the budget ran out."""


class RateLimitedError(TransientHttpError):
    """Still rate limited (429) when the budget ran out, or asked to wait longer than the budget."""


class _IncompleteBody(Exception):
    """The body ended before its Content-Length (when urllib3 did not already notice)."""


# requests wraps most urllib3 errors, but not on every path (e.g. raw reads): catch both layers.
_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    _IncompleteBody,
)


# --------------------------------------------------------------------------------------------------
# Redaction


class _Redactor:
    """Hides one request's query values (except safe ones), userinfo and credential headers."""

    def __init__(self, url: str, safe_params: frozenset[str], headers: Mapping[str, str]) -> None:
        self._safe = safe_params
        secrets: set[str] = set()
        parts = urlsplit(url)
        for key_raw, _, value_raw in (p.partition("=") for p in parts.query.split("&") if p):
            if unquote_plus(key_raw) not in safe_params:
                secrets |= {value_raw, unquote_plus(value_raw)}
        if parts.password:
            secrets.add(parts.password)
        for name, value in headers.items():
            if _CREDENTIAL_HEADER.search(name):
                secrets |= {value, *value.split()}  # "Bearer abc" -> also "abc"
        self._secrets = sorted((s for s in secrets if len(s) >= _MIN_SECRET_LEN), key=len, reverse=True)
        self.url = self.redact_url(url)

    def redact_url(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, self._redact_pairs(parts.query), ""))

    def scrub(self, text: str) -> str:
        text = _QUERY_PAIR.sub(lambda m: m[1] + m[2] + "=" + self._shown(m[2], m[3]), text)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _redact_pairs(self, query: str) -> str:
        pairs = (p.partition("=") for p in query.split("&") if p)
        return "&".join(key + sep + (self._shown(key, value) if sep else "") for key, sep, value in pairs)

    def _shown(self, key_raw: str, value: str) -> str:
        return value if unquote_plus(key_raw) in self._safe else REDACTED


class _UrllibQueryRedactor(logging.Filter):
    """urllib3 logs each request line with its full query at DEBUG ("GET /rows?api_key=... HTTP/1.1");
    anyone turning on DEBUG logging (or a handler at DEBUG on the root logger) would print secrets.
    Every query value but the generally safe ones is redacted in those records, process-wide."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        redacted = _QUERY_PAIR.sub(
            lambda m: m[1] + m[2] + "=" + (m[3] if unquote_plus(m[2]) in SAFE_QUERY_PARAMS else REDACTED), text)
        if redacted != text:
            record.msg, record.args = redacted, None
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_UrllibQueryRedactor())


# --------------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class DownloadResult:
    bytes: int  # of the decoded body, as written to the sink
    sha256: str  # hex digest of the same bytes
    content_type: str | None
    status: int


@dataclass(frozen=True)
class _Attempt:
    """Why one attempt failed transiently."""

    detail: str
    status: int | None = None
    excerpt: str = ""
    hint: float | None = None  # seconds the server asked us to wait


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


class HttpClient:
    """requests.Session wrapper for third-party APIs; see the module docstring for the policy.

    ``auth_hint`` names where the credentials come from (e.g. "the environment variable FB_TOKEN")
    and ends up in AuthError messages. ``retry_after_from(response)`` returns the seconds a transient
    response (429/5xx) asks us to wait; the default reads Retry-After. Request bodies must be
    replayable (bytes, str, dict or json), since a retry sends them again.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        timeout: tuple[float, float] = (5.0, 60.0),
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        max_total_wait: float = 300.0,
        rng: random.Random | None = None,
        user_agent: str = "covid-lakehouse/0.1",
        session: requests.Session | None = None,
        auth_hint: str | None = None,
        retry_after_from: RetryHint | None = None,
        safe_query_params: Iterable[str] = (),
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._clock: Clock = clock or SystemClock()
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._max_total_wait = max_total_wait
        self._rng = rng or random.Random()
        self._user_agent = user_agent
        # A session passed in must not retry on its own (requests' default adapters do not).
        self._session = session or requests.Session()
        self._auth_hint = auth_hint
        self._retry_after_from: RetryHint = retry_after_from or self._retry_after_header
        self._safe_params = SAFE_QUERY_PARAMS | frozenset(safe_query_params)

    # -- public API -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        stream: bool = False,
        ok_statuses: Collection[int] = (200,),
    ) -> requests.Response:
        """Send with retries. With stream=False the body is read inside the retry budget, so a body
        cut short is retried too; with stream=True the caller reads it (and owns those failures: use
        download() for large bodies)."""
        consume = _as_is if stream else _load_body
        return self._call(method, url, params, headers, json, data, ok_statuses, consume)

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        ok_statuses: Collection[int] = (200,),
    ) -> requests.Response:
        return self.request(
            "GET", url, params=params, headers=headers, stream=stream, ok_statuses=ok_statuses
        )

    def post(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        data: Any = None,
        stream: bool = False,
        ok_statuses: Collection[int] = (200,),
    ) -> requests.Response:
        return self.request(
            "POST",
            url,
            params=params,
            headers=headers,
            json=json,
            data=data,
            stream=stream,
            ok_statuses=ok_statuses,
        )

    def download(
        self,
        url: str,
        sink: BinaryIO,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        chunk_size: int = 1 << 20,
    ) -> DownloadResult:
        """Stream a GET body into ``sink`` chunk by chunk, hashing it on the way.

        The body is the decoded one (requests undoes Content-Encoding: gzip), so bytes and sha256
        describe what lands in the sink. A body cut short is retried within the same budget after
        rewinding and truncating the sink to where it started, so it never holds partial + full.
        """
        if not sink.seekable():
            raise ValueError("download() needs a seekable sink so that a retry can rewind it")
        start = sink.tell()

        def consume(response: requests.Response) -> DownloadResult:
            sink.seek(start)
            sink.truncate()
            digest = hashlib.sha256()
            size = 0
            try:
                for chunk in response.iter_content(chunk_size):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
            finally:
                response.close()
            declared = response.headers.get("Content-Length")
            if declared is not None and "Content-Encoding" not in response.headers and size != int(declared):
                raise _IncompleteBody(f"received {size} of {declared} bytes")
            return DownloadResult(
                size, digest.hexdigest(), response.headers.get("Content-Type"), response.status_code
            )

        return self._call("GET", url, params, headers, None, None, (200,), consume)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the retry loop ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        json: Any,
        data: Any,
        ok_statuses: Collection[int],
        consume: Callable[[requests.Response], T],
    ) -> T:
        all_headers = {"User-Agent": self._user_agent, **(headers or {})}
        request = requests.Request(method, url, params=params, headers=all_headers, json=json, data=data)
        prepared = self._session.prepare_request(request)
        assert prepared.url is not None
        redactor = _Redactor(prepared.url, self._safe_params, prepared.headers)
        # Always stream: the body is then read inside the try below, where a cut-short body is transient.
        settings = self._session.merge_environment_settings(prepared.url, {}, True, None, None)
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            response: requests.Response | None = None
            try:
                response = self._session.send(prepared.copy(), timeout=self._timeout, **settings)
                if response.status_code in ok_statuses:
                    return consume(response)
                failure = self._classify(method, redactor, response, attempt)
            except requests.exceptions.SSLError as exc:  # a certificate problem does not heal by waiting
                raise HttpError(
                    method, redactor.url, redactor.scrub(self._describe(exc)), attempts=attempt
                ) from None
            except _TRANSIENT_EXCEPTIONS as exc:
                if response is not None:
                    response.close()
                status = response.status_code if response is not None else None
                failure = _Attempt(redactor.scrub(self._describe(exc)), status)
            except requests.RequestException as exc:  # invalid URL, redirect loop, undecodable body...
                raise HttpError(
                    method, redactor.url, redactor.scrub(self._describe(exc)), attempts=attempt
                ) from None

            give_up, wait = self._plan_wait(attempt, waited, failure.hint)
            if give_up:
                error = RateLimitedError if failure.status == 429 else TransientHttpError
                detail = f"{give_up} after {attempt} attempt(s) and {waited:.1f}s of waiting; last: {failure.detail}"
                raise error(
                    method,
                    redactor.url,
                    detail,
                    status=failure.status,
                    body_excerpt=failure.excerpt,
                    attempts=attempt,
                ) from None
            logger.warning(
                "%s %s: attempt %d/%d failed (%s); retrying in %.2fs",
                method,
                redactor.url,
                attempt,
                self._max_attempts,
                failure.detail,
                wait,
            )
            self._clock.sleep(wait)
            waited += wait

    def _plan_wait(self, attempt: int, waited: float, hint: float | None) -> tuple[str | None, float]:
        """(reason to give up, 0) or (None, seconds to wait before the next attempt)."""
        if attempt >= self._max_attempts:
            return "gave up", 0.0
        # Full jitter: spreads clients that failed together over the whole backoff window.
        wait = self._rng.uniform(0, min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1)))
        remaining = self._max_total_wait - waited
        if hint is not None:
            if hint > remaining:
                # Retrying before the server's date would only be refused again: stop now.
                return f"server asked to wait {hint:.1f}s, more than the {max(remaining, 0):.1f}s left", 0.0
            wait = max(wait, hint)
        if remaining <= 0:
            return "wait budget spent", 0.0
        return None, min(wait, remaining)

    def _classify(
        self, method: str, redactor: _Redactor, response: requests.Response, attempt: int
    ) -> _Attempt:
        """Raise for permanent failures; describe transient ones."""
        status = response.status_code
        hint = self._retry_after_from(response) if status in TRANSIENT_STATUSES else None
        excerpt = redactor.scrub(_excerpt(response))
        detail = f"HTTP {status} {response.reason or ''}".rstrip()
        if status in TRANSIENT_STATUSES:
            return _Attempt(detail, status, excerpt, hint)
        if status in AUTH_STATUSES:
            where = self._auth_hint or "the credentials configured for this API"
            detail += f": authentication failed; check the credentials in {where}"
            raise AuthError(
                method, redactor.url, detail, status=status, body_excerpt=excerpt, attempts=attempt
            )
        error = ClientError if 400 <= status < 500 else HttpError
        raise error(method, redactor.url, detail, status=status, body_excerpt=excerpt, attempts=attempt)

    def _retry_after_header(self, response: requests.Response) -> float | None:
        return parse_retry_after(response.headers.get("Retry-After"), self._clock.now())

    def _describe(self, exc: BaseException) -> str:
        """Short, still unscrubbed description of a transport error (no object reprs, no URL dumps)."""
        name = type(exc).__name__
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return f"{name}: no connection within {self._timeout[0]}s"
        if isinstance(exc, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError):
            return f"{name}: no data within {self._timeout[1]}s"
        text = str(exc)
        errno = re.search(r"\[Errno -?\d+\][^'\"()]*", text)
        if errno:
            return f"{name}: {errno[0].strip()}"
        return f"{name}: {' '.join(text.split())[:200]}"


def _as_is(response: requests.Response) -> requests.Response:
    return response


def _load_body(response: requests.Response) -> requests.Response:
    """Read the body now, inside the retry budget. ``Response.content`` reads in 10 KiB pieces, a
    Python round trip each (~1.5 ms of CPU on a 300 KB page); 1 MiB reads, stored where ``content``
    looks first, give the same bytes."""
    if response._content is False and not response._content_consumed and response.raw is not None:
        response._content = b"".join(response.iter_content(_BODY_READ_BYTES))
    response.content  # noqa: B018 - marks the body consumed (and reads it, had the shortcut not applied)
    return response


def _excerpt(response: requests.Response) -> str:
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
