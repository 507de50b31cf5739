"""Facebook's coded errors as HTTP statuses the platform client acts on, and how long to wait.

Facebook answers throttling, bad tokens and missing permissions with HTTP 400/403 and an error code in
the body, so a response hook translates those codes into the HTTP statuses the platform client acts on
(429: back off as told, 401/403: fail at once). How long to wait comes from the
x-business-use-case-usage header (estimated_time_to_regain_access, in minutes).
"""

import json
import threading
from datetime import UTC, datetime
from typing import Any

import requests

from covid_lakehouse.lib.http import parse_retry_after

# Error codes (body error.code) -> meaning. https://developers.facebook.com/docs/graph-api/overview/rate-limiting
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
THROTTLE_SUBCODES = frozenset({2446079})
TOKEN_CODES = frozenset({102, 190, 463, 467})
TRANSIENT_CODES = frozenset({1, 2})
VERSION_GONE_CODES = frozenset({2635})  # "You are calling a deprecated version of the Ads API"
VERSION_GONE_STATUS = 410  # what the hook gives #2635: a 4xx is never retried; the connector names the setting
VERSION_WARNING_HEADER = "X-Ad-Api-Version-Warning"
# Code 1 "Please reduce the amount of data you're asking for": a smaller request, never the same again
REDUCE_DATA_STATUS = 413
NOT_TRANSIENT_STATUS = 422  # the body says is_transient: false: a 4xx the client never retries


def _is_permission_code(code: int) -> bool:
    return code == 10 or 200 <= code <= 299


def translate_error_status(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """requests response hook: give Facebook's coded errors the HTTP status that means the same."""
    if response.status_code not in (400, 403, 500):
        return response
    try:
        error = json.loads(response.content).get("error") or {}
        code = int(error.get("code"))
    except (ValueError, TypeError, AttributeError):
        return response
    subcode, transient = error.get("error_subcode"), error.get("is_transient")
    if code in VERSION_GONE_CODES:
        status, reason = VERSION_GONE_STATUS, f"Facebook no longer serves this API version (error code {code})"
    elif code in THROTTLE_CODES or subcode in THROTTLE_SUBCODES:
        status, reason = 429, f"Facebook rate limit (error code {code})"
    elif code in TOKEN_CODES:
        status, reason = 401, f"Facebook rejected the access token (error code {code})"
    elif _is_permission_code(code):
        status, reason = 403, f"Facebook permission missing (error code {code})"
    elif code == 1 and "reduce the amount of data" in str(error.get("message", "")).lower():
        status, reason = REDUCE_DATA_STATUS, f"Facebook asks for less data per request (error code {code})"
    elif transient is False:  # Facebook says so: retrying the same request cannot help
        status, reason = NOT_TRANSIENT_STATUS, f"Facebook error code {code}, is_transient false"
    elif code in TRANSIENT_CODES or transient is True:
        status, reason = 503, f"Facebook temporary error (error code {code})"
    else:
        return response
    response.status_code, response.reason = status, f"{reason}, HTTP {response.status_code}"
    return response


class ResponseHooks:
    """The session's response hook: translates coded errors (translate_error_status) and keeps every
    version warning header seen, for the run's WARN check."""

    def __init__(self) -> None:
        self.version_warnings: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        warning = response.headers.get(VERSION_WARNING_HEADER)
        if warning:
            with self._lock:
                self.version_warnings.add(warning)
        return translate_error_status(response)


def throttle_hint(floor_s: float):
    """retry_hint, but a throttled call (429 after the hook) without usage headers waits at least
    ``floor_s``: Facebook's throttles last minutes, and a few seconds of backoff only burn attempts."""

    def hint(response: requests.Response) -> float | None:
        asked = retry_hint(response)
        if response.status_code == 429:
            return max(asked or 0.0, floor_s)
        return asked

    return hint


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
