"""What the client does with a response it did not expect: retry it or fail at once, and why.

The status decides by default (``by_status``). A source whose API hides the real meaning in the body
(Facebook answers throttling, bad tokens and retired versions with HTTP 400 and an error code) passes
the client a ``Classifier`` that returns an Outcome for such responses, and None to leave the status
rules in charge; no response is ever rewritten. An Outcome's ``kind`` names the failure class: it picks
the error raised when the call gives up, the client's minimum wait for that class (``min_waits``), and
is kept on the raised error (``HttpError.kind``) so the caller can act on it (ask for less data, name
the version setting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import requests

# Failure classes the client knows; a source may add its own (e.g. "version_gone").
THROTTLED = "throttled"  # retried; RateLimitedError when the budget runs out
TRANSIENT = "transient"  # retried; TransientHttpError when the budget runs out
AUTH = "auth"  # AuthError at once, naming where the credentials come from
CLIENT = "client"  # ClientError at once: this request cannot succeed
UNEXPECTED = "unexpected"  # HttpError at once: a status that is neither an answer nor a known failure

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class Outcome:
    """A verdict on one response that is not among the call's ok statuses."""

    action: Literal["retry", "fail"]
    kind: str
    reason: str = ""  # what the response means, for messages; empty: the HTTP reason phrase

    @classmethod
    def retry(cls, reason: str = "", *, kind: str = TRANSIENT) -> Outcome:
        return cls("retry", kind, reason)

    @classmethod
    def fail(cls, reason: str = "", *, kind: str = CLIENT) -> Outcome:
        return cls("fail", kind, reason)


Classifier = Callable[[requests.Response], "Outcome | None"]


def by_status(status: int) -> Outcome:
    """The default rules: 429 and 5xx gateway trouble are retried, 401/403 and other 4xx fail at once."""
    if status == 429:
        return Outcome.retry(kind=THROTTLED)
    if status in TRANSIENT_STATUSES:
        return Outcome.retry(kind=TRANSIENT)
    if status in AUTH_STATUSES:
        return Outcome.fail(kind=AUTH)
    return Outcome.fail(kind=CLIENT if 400 <= status < 500 else UNEXPECTED)
