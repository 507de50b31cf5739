"""HTTP client for third-party APIs: errors classified before retrying, one retry budget per call.

Transient failures (connection errors, timeouts, bodies cut short, 429 and 500/502/503/504) are retried
with exponential backoff and full jitter, waiting at least what the server asks for (Retry-After or a
connector's own hint) and at least the source's floor for that failure class (``min_waits``). 401/403
and other 4xx fail at once. A source whose API says more in the body than in the status classifies
such responses itself (``classify``, see ``outcomes``). When the budget (max_attempts and
max_total_wait seconds of waiting) is spent, RetriesExhaustedError is raised. That error, AuthError
and ClientError are also ``dagster.Failure``s with ``allow_retries=False``: retries are bounded here,
a Dagster RetryPolicy neither multiplies them nor repeats a call that cannot succeed.

Every call is bounded whatever the server does (see ``limits``): decoded body bytes (max_body_bytes),
a total deadline over all attempts (the retry wait budget plus transfer_deadline_s), and redirects
(see ``redirects``): followed only to http(s) and never from https to http; a redirect to another
origin (scheme, host, port) drops every header but a few harmless ones (so Authorization, API keys,
passcodes, developer tokens and cookies stay home) and is refused when the request body would be sent
there again (307/308). requests itself would strip only Authorization and re-send the body.

Messages and logs show the URL with every query value redacted except a short safe list, and scrub
those values (and credential-like header values) from exception texts and body excerpts; headers are
never logged. Exceptions are raised ``from None`` because the chained requests/urllib3 exceptions print
the full URL, secrets included.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypedDict, TypeVar, Unpack

import requests
import urllib3

from covid_lakehouse.lib.clock import Clock, SystemClock
from covid_lakehouse.lib.http import redirects
from covid_lakehouse.lib.http.bodies import (
    BodyLimitError,
    DownloadResult,
    as_is,
    error_excerpt,
    load_body,
    parse_retry_after,
    sink_consumer,
)
from covid_lakehouse.lib.http.errors import (
    TRANSIENT_EXCEPTIONS,
    AuthError,
    ClientError,
    HttpError,
    RateLimitedError,
    TransientHttpError,
)
from covid_lakehouse.lib.http.limits import (
    Deadline,
    default_max_body_bytes,
    default_transfer_deadline_s,
    limit_error,
)
from covid_lakehouse.lib.http.outcomes import AUTH, THROTTLED, TRANSIENT, UNEXPECTED, Classifier, by_status
from covid_lakehouse.lib.http.redaction import SAFE_QUERY_PARAMS, Redactor

logger = logging.getLogger(__package__)  # the package's name, as before the split (log filters use it)

T = TypeVar("T")
RetryHint = Callable[[requests.Response], "float | None"]


class RequestOptions(TypedDict, total=False):
    """What request(), get() and post() take besides the method and URL (all optional)."""

    params: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    json: Any  # a replayable body: a retry sends it again
    data: Any
    stream: bool  # default False: the body is read inside the retry budget
    ok_statuses: Collection[int]  # default (200,)


@dataclass(frozen=True)
class _Attempt:
    """Why one attempt failed transiently."""

    detail: str
    status: int | None = None
    excerpt: str = ""
    hint: float | None = None  # seconds the server asked us to wait
    kind: str = TRANSIENT  # the failure class (outcomes)


class HttpClient:
    """requests.Session wrapper for third-party APIs; see the module docstring for the policy.

    ``auth_hint`` names where the credentials come from (e.g. "the environment variable FB_TOKEN")
    and ends up in AuthError messages. ``retry_after_from(response)`` returns the seconds a transient
    response (429/5xx) asks us to wait; the default reads Retry-After. Request bodies must be
    replayable (bytes, str, dict or json), since a retry sends them again. ``secret_headers`` names
    headers whose values are scrubbed from messages besides those that look like credentials;
    ``secret_path`` hides the URL's path too (a webhook URL is its own credential).
    ``classify(response)`` gives the Outcome of a response that is not among the call's ok statuses
    (None: the status decides; it may read ``response.content``, as ``retry_after_from`` may: with
    either hook the client reads an error body first, within ``max_body_bytes`` and the call's deadline).
    ``min_waits`` maps a failure class to the least seconds to wait before retrying it (e.g.
    {"throttled": 60}: throttles that last minutes should not burn attempts in seconds).
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
        classify: Classifier | None = None,
        min_waits: Mapping[str, float] | None = None,
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
        self._classify_response = classify
        # A source's classify or retry_after_from may read ``response.content`` of an error response:
        # the client reads it first, bounded like any body (max_body_bytes, the call's deadline).
        self._hooks_read_body = classify is not None or retry_after_from is not None
        self._min_waits = dict(min_waits or {})

    # -- public API -------------------------------------------------------------------------------

    def request(self, method: str, url: str, **options: Unpack[RequestOptions]) -> requests.Response:
        """Send with retries. With stream=False the body is read inside the retry budget, so a body
        cut short is retried too; with stream=True the caller reads it (and owns those failures: use
        download() for large bodies)."""
        unknown = sorted(set(options) - set(RequestOptions.__annotations__))
        if unknown:  # **options would otherwise drop a misspelt option without a word
            raise TypeError(f"HttpClient.request() got unexpected option(s) {', '.join(unknown)}")
        consume = as_is if options.get("stream", False) else load_body
        return self._call(method, url, options.get("params"), options.get("headers"), options.get("json"),
                          options.get("data"), options.get("ok_statuses", (200,)), consume)

    def get(self, url: str, **options: Unpack[RequestOptions]) -> requests.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Unpack[RequestOptions]) -> requests.Response:
        return self.request("POST", url, **options)

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
        return self._call("GET", url, params, headers, None, None, (200,), sink_consumer(sink, chunk_size))

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
                response = redirects.send(self._session, method, prepared, timeouts=self._timeout,
                                          max_redirects=self._max_redirects, deadline=deadline, redactor=redactor,
                                          attempt=attempt)
                if response.status_code in ok_statuses:
                    return consume(response, **limits)
                if self._hooks_read_body:  # within the call's bounds, as an answer's body is read
                    load_body(response, **limits)
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

            waited += self._wait_or_give_up(method, redactor, failure, attempt, waited, deadline)

    def _wait_or_give_up(self, method: str, redactor: Redactor, failure: _Attempt, attempt: int,
                         waited: float, deadline: Deadline) -> float:
        """Sleep before the next attempt and return how long, or raise when the budget is spent."""
        hint = failure.hint
        if failure.kind in self._min_waits:
            hint = max(hint or 0.0, self._min_waits[failure.kind])
        give_up, wait = self._plan_wait(attempt, waited, hint, deadline.remaining())
        if give_up:
            error = RateLimitedError if failure.kind == THROTTLED else TransientHttpError
            detail = f"{give_up} after {attempt} attempt(s) and {waited:.1f}s of waiting; last: {failure.detail}"
            raise error(method, redactor.url, detail, status=failure.status, body_excerpt=failure.excerpt,
                        attempts=attempt, kind=failure.kind) from None
        logger.warning("%s %s: attempt %d/%d failed (%s); retrying in %.2fs",
                       method, redactor.url, attempt, self._max_attempts, failure.detail, wait)
        self._clock.sleep(wait)
        return wait

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

    def _limit_error(self, exc: BodyLimitError, method: str, redactor: Redactor,
                     response: requests.Response | None, attempt: int) -> HttpError:
        status = response.status_code if response is not None else None
        return limit_error(exc, method, redactor.url, status, attempt, self._max_total_wait + self._transfer_deadline_s)


    def _classify(
        self, method: str, redactor: Redactor, response: requests.Response, attempt: int
    ) -> _Attempt:
        """Raise for permanent failures; describe transient ones. The source's classifier speaks first."""
        status = response.status_code
        outcome = (self._classify_response(response) if self._classify_response else None) or by_status(status)
        hint = self._retry_after_from(response) if outcome.action == "retry" else None  # may read the body:
        excerpt = redactor.scrub(error_excerpt(response))  # before this closes it
        detail = (f"{outcome.reason}, HTTP {status}" if outcome.reason
                  else f"HTTP {status} {response.reason or ''}".rstrip())
        if outcome.action == "retry":
            return _Attempt(detail, status, excerpt, hint, outcome.kind)
        if outcome.kind == AUTH:
            where = self._auth_hint or "the credentials configured for this API"
            detail += f": authentication failed; check the credentials in {where}"
            error: type[HttpError] = AuthError
        else:
            error = HttpError if outcome.kind == UNEXPECTED else ClientError
        raise error(method, redactor.url, detail, status=status, body_excerpt=excerpt, attempts=attempt,
                    kind=outcome.kind)

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

