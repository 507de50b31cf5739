"""The HTTP client's errors. ``HttpError.url`` is already redacted, so every message is safe to log.

AuthError, ClientError and RetriesExhaustedError (with its transient and rate-limit kinds) are also
``dagster.Failure``s with ``allow_retries=False``: the client already spent the retry budget (or no retry
can help), so a Dagster RetryPolicy must not multiply the retries.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import requests
import urllib3


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
        kind: str = "",
    ) -> None:
        self.method = method
        self.url = url
        self.detail = detail
        self.status = status
        self.body_excerpt = body_excerpt
        self.attempts = attempts
        self.kind = kind  # the failure class (see outcomes), e.g. "throttled" or a source's own "version_gone"
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
        if self.kind:
            metadata["kind"] = self.kind
        dg.Failure.__init__(self, description=str(self), metadata=metadata, allow_retries=False)


class AuthError(_FinalHttpError):
    """401/403: the credentials are wrong or lack a permission; retrying cannot help."""


class ClientError(_FinalHttpError):
    """Any other 4xx, or a response the source classified as a final failure: retrying cannot help."""


class RetriesExhaustedError(_FinalHttpError):
    """Transient failures outlasted the call's budget (max_attempts, max_total_wait)."""


class TransientHttpError(RetriesExhaustedError):
    """Connection errors, timeouts, truncated bodies or 5xx until the budget ran out."""


class RateLimitedError(TransientHttpError):
    """Still rate limited (429) when the budget ran out, or asked to wait longer than the budget."""


class DeadlineExceededError(_FinalHttpError):
    """The call did not complete within its total deadline (a server trickling bytes, or stalling
    between retries); per-read timeouts alone never end a trickle."""


class BodyTooLargeError(_FinalHttpError):
    """The decoded body exceeded the source's byte cap (e.g. a gzip bomb); nothing was kept."""


class RedirectRefusedError(_FinalHttpError):
    """A redirect the client will not follow: to http from https, to another scheme, a body that would
    be re-sent to another origin, or too many hops."""


class IncompleteBody(Exception):
    """The body ended before its Content-Length (when urllib3 did not already notice)."""


# requests wraps most urllib3 errors, but not on every path (e.g. raw reads): catch both layers.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    IncompleteBody,
)
