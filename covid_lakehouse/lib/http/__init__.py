"""HTTP client for third-party APIs: errors classified before retrying, one retry budget per call.

Modules: ``client`` (HttpClient and its retry loop; the policy is in its docstring), ``outcomes``
(retry or fail: the status rules, and a source's own classifier), ``errors`` (what a call raises),
``redaction`` (secrets kept out of messages and logs), ``bodies`` (reading bodies, download results,
Retry-After), ``limits`` (byte cap, call deadline, paging guard), ``redirects`` (the redirects the
client follows itself), ``hosts`` (which hosts a source URL from run config may name).
"""

from covid_lakehouse.lib.http.bodies import DownloadResult, parse_retry_after
from covid_lakehouse.lib.http.client import HttpClient, RequestOptions, RetryHint
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
from covid_lakehouse.lib.http.outcomes import (
    AUTH,
    AUTH_STATUSES,
    CLIENT,
    THROTTLED,
    TRANSIENT,
    TRANSIENT_STATUSES,
    UNEXPECTED,
    Classifier,
    Outcome,
)
from covid_lakehouse.lib.http.redaction import REDACTED, SAFE_QUERY_PARAMS

__all__ = [
    "AUTH",
    "AUTH_STATUSES",
    "CLIENT",
    "REDACTED",
    "SAFE_QUERY_PARAMS",
    "THROTTLED",
    "TRANSIENT",
    "TRANSIENT_STATUSES",
    "UNEXPECTED",
    "AuthError",
    "BodyTooLargeError",
    "Classifier",
    "ClientError",
    "DeadlineExceededError",
    "DownloadResult",
    "HttpClient",
    "HttpError",
    "Outcome",
    "PageGuard",
    "PagingError",
    "RateLimitedError",
    "RedirectRefusedError",
    "RequestOptions",
    "RetriesExhaustedError",
    "RetryHint",
    "TransientHttpError",
    "parse_retry_after",
]
