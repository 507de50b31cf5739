"""HTTP client for third-party APIs: errors classified before retrying, one retry budget per call.

Transient failures (connection errors, timeouts, bodies cut short, 429 and 500/502/503/504) are retried
with exponential backoff and full jitter, waiting at least what the server asks for (Retry-After or a
connector's own hint). 401/403 and other 4xx fail at once. When the budget (max_attempts and
max_total_wait seconds of waiting) is spent, RetriesExhaustedError is raised. That error, AuthError
and ClientError are also ``dagster.Failure``s with ``allow_retries=False``: retries are bounded here,
a Dagster RetryPolicy neither multiplies them nor repeats a call that cannot succeed.

Every call is bounded whatever the server does (see ``limits``): decoded body bytes (max_body_bytes),
a total deadline over all attempts (the retry wait budget plus transfer_deadline_s), and redirects:
followed only to http(s) and never from https to http; a redirect to another origin (scheme, host,
port) drops every header but a few harmless ones (so Authorization, API keys, passcodes, developer
tokens and cookies stay home) and is refused when the request body would be sent there again
(307/308). requests itself would strip only Authorization and re-send the body.

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
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
import urllib3
from requests.utils import requote_uri

from covid_lakehouse.lib.clock import Clock, SystemClock
from covid_lakehouse.lib.http.bodies import (
    BodyLimitError,
    DownloadResult,
    as_is,
    error_excerpt,
    load_body,
    parse_retry_after,
    read_chunks,
)
from covid_lakehouse.lib.http.errors import (
    TRANSIENT_EXCEPTIONS,
    AuthError,
    BodyTooLargeError,
    ClientError,
    DeadlineExceededError,
    HttpError,
    IncompleteBody,
    RateLimitedError,
    RedirectRefusedError,
    TransientHttpError,
)
from covid_lakehouse.lib.http.limits import (
    MAX_BODY_MB,
    TRANSFER_DEADLINE_S,
    Deadline,
    default_max_body_bytes,
    default_transfer_deadline_s,
)
from covid_lakehouse.lib.http.redaction import SAFE_QUERY_PARAMS, Redactor

logger = logging.getLogger(__package__)  # the package's name, as before the split (log filters use it)

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})

T = TypeVar("T")
RetryHint = Callable[[requests.Response], "float | None"]
# Headers still sent after a redirect to another origin; every other one may carry a credential.
_KEPT_ACROSS_ORIGINS = frozenset({"user-agent", "accept", "accept-encoding", "accept-language", "connection"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    replayable (bytes, str, dict or json), since a retry sends them again. ``secret_headers`` names
    headers whose values are scrubbed from messages besides those that look like credentials;
    ``secret_path`` hides the URL's path too (a webhook URL is its own credential).
    ``max_body_bytes`` and ``transfer_deadline_s`` default to HTTP_MAX_BODY_MB and HTTP_CALL_DEADLINE_S.
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
        max_body_bytes: int | None = None,
        transfer_deadline_s: float | None = None,
        secret_headers: Iterable[str] = (),
        max_redirects: int = 10,
        secret_path: bool = False,
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
        self._max_body_bytes = max_body_bytes if max_body_bytes is not None else default_max_body_bytes()
        self._transfer_deadline_s = (transfer_deadline_s if transfer_deadline_s is not None
                                     else default_transfer_deadline_s())
        self._secret_headers = frozenset(h.lower() for h in secret_headers)
        self._max_redirects = max_redirects
        self._secret_path = secret_path

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

        def consume(response: requests.Response, **limits: Any) -> DownloadResult:
            sink.seek(start)
            sink.truncate()
            digest = hashlib.sha256()
            size = 0
            try:
                for chunk in read_chunks(response, chunk_size=chunk_size, **limits):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
            except BaseException:
                sink.seek(start)
                sink.truncate()  # nothing of a refused body stays behind (a retry rewinds anyway)
                raise
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
        consume: Callable[..., T],
    ) -> T:
        all_headers = {"User-Agent": self._user_agent, **(headers or {})}
        request = requests.Request(method, url, params=params, headers=all_headers, json=json, data=data)
        prepared = self._session.prepare_request(request)
        assert prepared.url is not None
        redactor = Redactor(prepared.url, self._safe_params, prepared.headers, self._secret_headers,
                            self._secret_path)
        deadline = Deadline(self._clock, self._max_total_wait + self._transfer_deadline_s)
        limits = {"max_bytes": self._max_body_bytes, "deadline": deadline, "read_timeout": self._timeout[1]}
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            response: requests.Response | None = None
            try:
                if deadline.passed():
                    raise BodyLimitError("deadline", "no attempt left before the deadline")
                response = self._send(method, prepared, deadline, redactor, attempt)
                if response.status_code in ok_statuses:
                    return consume(response, **limits)
                failure = self._classify(method, redactor, response, attempt)
            except BodyLimitError as exc:
                if response is not None:
                    response.close()
                raise self._limit_error(exc, method, redactor, response, attempt) from None
            except requests.exceptions.SSLError as exc:  # a certificate problem does not heal by waiting
                raise HttpError(
                    method, redactor.url, redactor.scrub(self._describe(exc)), attempts=attempt
                ) from None
            except TRANSIENT_EXCEPTIONS as exc:
                if response is not None:
                    response.close()
                if deadline.passed():  # the per-read timeout was cut to the deadline
                    raise self._limit_error(BodyLimitError("deadline", redactor.scrub(self._describe(exc))),
                                            method, redactor, response, attempt) from None
                status = response.status_code if response is not None else None
                failure = _Attempt(redactor.scrub(self._describe(exc)), status)
            except requests.RequestException as exc:  # invalid URL, redirect loop, undecodable body...
                raise HttpError(
                    method, redactor.url, redactor.scrub(self._describe(exc)), attempts=attempt
                ) from None

            give_up, wait = self._plan_wait(attempt, waited, failure.hint, deadline.remaining())
            if give_up:
                error = RateLimitedError if failure.status == 429 else TransientHttpError
                detail = f"{give_up} after {attempt} attempt(s) and {waited:.1f}s of waiting; last: {failure.detail}"
                raise error(method, redactor.url, detail, status=failure.status, body_excerpt=failure.excerpt,
                            attempts=attempt) from None
            logger.warning("%s %s: attempt %d/%d failed (%s); retrying in %.2fs",
                           method, redactor.url, attempt, self._max_attempts, failure.detail, wait)
            self._clock.sleep(wait)
            waited += wait

    def _plan_wait(self, attempt: int, waited: float, hint: float | None,
                   until_deadline: float = float("inf")) -> tuple[str | None, float]:
        """(reason to give up, 0) or (None, seconds to wait before the next attempt)."""
        if attempt >= self._max_attempts:
            return "gave up", 0.0
        if until_deadline <= 0:
            return "call deadline passed", 0.0
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
        return None, min(wait, remaining, until_deadline)

    # -- bounds: deadline, size, redirects --------------------------------------------------------

    def _limit_error(self, exc: BodyLimitError, method: str, redactor: Redactor,
                     response: requests.Response | None, attempt: int) -> HttpError:
        status = response.status_code if response is not None else None
        if exc.kind == "size":
            return BodyTooLargeError(method, redactor.url, f"{exc}; nothing was kept (cap: the source's own "
                                     f"setting, else {MAX_BODY_MB.name})", status=status, attempts=attempt)
        return DeadlineExceededError(
            method, redactor.url, f"the call's deadline of {self._max_total_wait + self._transfer_deadline_s:g}s "
            f"(retry wait budget + {TRANSFER_DEADLINE_S.name}) passed: {exc}", status=status, attempts=attempt)

    def _send(self, method: str, prepared: requests.PreparedRequest, deadline: Deadline, redactor: Redactor,
              attempt: int) -> requests.Response:
        """One attempt, following redirects ourselves (see the module docstring)."""
        request = prepared.copy()
        for _ in range(self._max_redirects + 1):
            timeout = (deadline.cap(self._timeout[0]), deadline.cap(self._timeout[1]))
            # Always stream: the body is then read by the caller's consume, inside the retry budget.
            settings = self._session.merge_environment_settings(request.url, {}, True, None, None)
            response = self._session.send(request, timeout=timeout, allow_redirects=False, **settings)
            if not response.is_redirect:
                return response
            request = self._redirected(method, request, response, redactor, attempt)
        raise RedirectRefusedError(method, redactor.url, f"more than {self._max_redirects} redirects",
                                   attempts=attempt)

    def _redirected(self, method: str, request: requests.PreparedRequest, response: requests.Response,
                    redactor: Redactor, attempt: int) -> requests.PreparedRequest:
        status = response.status_code
        location = self._session.get_redirect_target(response) or ""
        response.close()
        assert request.url is not None
        old = urlsplit(request.url)
        if location.startswith("//"):
            location = f"{old.scheme}:{location}"
        target = requote_uri(urljoin(request.url, location))
        new = urlsplit(target)

        def refuse(why: str) -> RedirectRefusedError:
            return RedirectRefusedError(method, redactor.url, f"HTTP {status} redirect to "
                                        f"{redactor.scrub(redactor.redact_url(target))} refused: {why}",
                                        status=status, attempts=attempt)

        if new.scheme not in _DEFAULT_PORTS or not new.hostname:
            raise refuse("not an http(s) URL")
        if old.scheme == "https" and new.scheme != "https":
            raise refuse("it would leave https for plain http")
        follow = request.copy()
        follow.url = target
        if (status == 303 and follow.method != "HEAD") or (status in (301, 302) and follow.method == "POST"):
            follow.method = "GET"  # what browsers and requests do
        if status not in (307, 308):  # only these keep the method and body
            follow.body = None
            for name in ("Content-Length", "Content-Type", "Transfer-Encoding"):
                follow.headers.pop(name, None)
        if _origin(old) != _origin(new):
            if follow.body is not None:
                raise refuse("the request body would be sent to another origin")
            for name in [n for n in follow.headers if n.lower() not in _KEPT_ACROSS_ORIGINS]:
                del follow.headers[name]  # credentials (Authorization, API keys, cookies) stay home
            logger.info("%s %s: following a redirect to %s without credentials", method, redactor.url,
                        redactor.scrub(redactor.redact_url(target)))
        return follow

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



def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
