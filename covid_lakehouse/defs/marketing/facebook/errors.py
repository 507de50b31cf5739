"""Facebook's coded errors classified for the platform client, and how long to wait.

Facebook answers throttling, bad tokens, missing permissions and retired versions with HTTP 400/403/500
and an error code in the body, so ``classify`` reads the code and tells the client what to do (retry
as a throttle, fail at once as an auth error, ...); the status is never rewritten. How long to wait
comes from the x-business-use-case-usage header (estimated_time_to_regain_access, in minutes).
"""

import json
import threading
from datetime import UTC, datetime
from typing import Any

import requests

from covid_lakehouse.lib.http import AUTH, THROTTLED, TRANSIENT, Outcome, parse_retry_after

# Error codes (body error.code) -> meaning. https://developers.facebook.com/docs/graph-api/overview/rate-limiting
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
THROTTLE_SUBCODES = frozenset({2446079})
TOKEN_CODES = frozenset({102, 190, 463, 467})
TRANSIENT_CODES = frozenset({1, 2})
VERSION_GONE_CODES = frozenset({2635})  # "You are calling a deprecated version of the Ads API"
VERSION_WARNING_HEADER = "X-Ad-Api-Version-Warning"
# Failure classes of this source (HttpError.kind), besides the client's own.
VERSION_GONE = "version_gone"  # never retried; the connector names the version setting
REDUCE_DATA = "reduce_data"  # code 1 "Please reduce the amount of data": a smaller request, never the same again
NOT_TRANSIENT = "not_transient"  # the body says is_transient: false: retrying the same request cannot help


def _is_permission_code(code: int) -> bool:
    return code == 10 or 200 <= code <= 299


def classify(response: requests.Response) -> Outcome | None:
    """The client's classifier: what Facebook's coded error means (None: let the status decide)."""
    if response.status_code not in (400, 403, 500):
        return None
    try:
        error = json.loads(response.content).get("error") or {}
        code = int(error.get("code"))
    except (ValueError, TypeError, AttributeError):
        return None
    subcode, transient = error.get("error_subcode"), error.get("is_transient")
    if code in VERSION_GONE_CODES:
        return Outcome.fail(f"Facebook no longer serves this API version (error code {code})", kind=VERSION_GONE)
    if code in THROTTLE_CODES or subcode in THROTTLE_SUBCODES:
        return Outcome.retry(f"Facebook rate limit (error code {code})", kind=THROTTLED)
    if code in TOKEN_CODES:
        return Outcome.fail(f"Facebook rejected the access token (error code {code})", kind=AUTH)
    if _is_permission_code(code):
        return Outcome.fail(f"Facebook permission missing (error code {code})", kind=AUTH)
    if code == 1 and "reduce the amount of data" in str(error.get("message", "")).lower():
        return Outcome.fail(f"Facebook asks for less data per request (error code {code})", kind=REDUCE_DATA)
    if transient is False:  # Facebook says so: retrying the same request cannot help
        return Outcome.fail(f"Facebook error code {code}, is_transient false", kind=NOT_TRANSIENT)
    if code in TRANSIENT_CODES or transient is True:
        return Outcome.retry(f"Facebook temporary error (error code {code})", kind=TRANSIENT)
    return None


class VersionWarnings:
    """A session response hook that keeps every version warning header seen, for the run's WARN check."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        warning = response.headers.get(VERSION_WARNING_HEADER)
        if warning:
            with self._lock:
                self.seen.add(warning)


def retry_hint(response: requests.Response) -> float | None:
    """Seconds Facebook asks us to wait: the longest estimated_time_to_regain_access (minutes) in
    x-business-use-case-usage, reset_time_duration (seconds) in x-ad-account-usage, or Retry-After."""
    waits: list[float] = []
    try:
        usage = json.loads(response.headers.get("x-business-use-case-usage") or "{}")
        for entries in usage.values():
            waits += [60.0 * float(e.get("estimated_time_to_regain_access") or 0) for e in entries]
    except (ValueError, TypeError, AttributeError):
        pass
    try:
        account = json.loads(response.headers.get("x-ad-account-usage") or "{}")
        waits.append(float(account.get("reset_time_duration") or 0))
    except (ValueError, TypeError, AttributeError):
        pass
    header = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
    waits.append(header or 0.0)
    longest = max(waits)
    return longest if longest > 0 else None
