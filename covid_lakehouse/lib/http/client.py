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
from typing import Any, BinaryIO, TypeVar

import requests
import urllib3

from covid_lakehouse.lib.clock import Clock, SystemClock
from covid_lakehouse.lib.http.bodies import DownloadResult, as_is, error_excerpt, load_body, parse_retry_after
from covid_lakehouse.lib.http.errors import (
    TRANSIENT_EXCEPTIONS,
    AuthError,
    ClientError,
    HttpError,
    IncompleteBody,
    RateLimitedError,
    TransientHttpError,
)
from covid_lakehouse.lib.http.redaction import SAFE_QUERY_PARAMS, Redactor

logger = logging.getLogger(__package__)  # the package's name, as before the split (log filters use it)

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})

T = TypeVar("T")
RetryHint = Callable[[requests.Response], "float | None"]


@dataclass(frozen=True)
class _Attempt:
    """Why one attempt failed transiently."""

    detail: str
    status: int | None = None
    excerpt: str = ""
    hint: float | None = None  # seconds the server asked us to wait


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
        consume = as_is if stream else load_body
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
                raise IncompleteBody(f"received {size} of {declared} bytes")
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
        redactor = Redactor(prepared.url, self._safe_params, prepared.headers)
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
            except TRANSIENT_EXCEPTIONS as exc:
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
                raise error(method, redactor.url, detail, status=failure.status, body_excerpt=failure.excerpt,
                            attempts=attempt) from None
            logger.warning("%s %s: attempt %d/%d failed (%s); retrying in %.2fs",
                           method, redactor.url, attempt, self._max_attempts, failure.detail, wait)
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
        self, method: str, redactor: Redactor, response: requests.Response, attempt: int
    ) -> _Attempt:
        """Raise for permanent failures; describe transient ones."""
        status = response.status_code
        hint = self._retry_after_from(response) if status in TRANSIENT_STATUSES else None
        excerpt = redactor.scrub(error_excerpt(response))
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

