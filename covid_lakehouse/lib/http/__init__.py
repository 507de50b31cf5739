"""HTTP client for third-party APIs: errors classified before retrying, one retry budget per call.

Modules: ``client`` (HttpClient and its retry loop; the policy is in its docstring), ``errors`` (what a
call raises), ``redaction`` (secrets kept out of messages and logs), ``bodies`` (reading bodies,
download results, Retry-After), ``limits`` (byte cap, call deadline, paging guard), ``redirects``
(the redirects the client follows itself), ``hosts`` (which hosts a source URL from run config may name).
"""

from covid_lakehouse.lib.http.bodies import DownloadResult, parse_retry_after
from covid_lakehouse.lib.http.client import AUTH_STATUSES, TRANSIENT_STATUSES, HttpClient, RetryHint
from covid_lakehouse.lib.http.errors import (
    AuthError,
    BodyTooLargeError,
    ClientError,
    DeadlineExceededError,
    HttpError,
    RateLimitedError,
    RedirectRefusedError,
    RetriesExhaustedError,
    TransientHttpError,
)
from covid_lakehouse.lib.http.limits import PageGuard, PagingError
from covid_lakehouse.lib.http.redaction import REDACTED, SAFE_QUERY_PARAMS

__all__ = [
    "AUTH_STATUSES",
    "REDACTED",
    "SAFE_QUERY_PARAMS",
    "TRANSIENT_STATUSES",
    "AuthError",
    "BodyTooLargeError",
    "ClientError",
    "DeadlineExceededError",
    "DownloadResult",
    "HttpClient",
    "HttpError",
    "PageGuard",
    "PagingError",
    "RateLimitedError",
    "RedirectRefusedError",
    "RetriesExhaustedError",
    "RetryHint",
    "TransientHttpError",
    "parse_retry_after",
]
