"""Redirects followed by the HTTP client itself: only to http(s) and never from https to http; a
redirect to another origin (scheme, host, port) drops every header but a few harmless ones (so
Authorization, API keys, passcodes, developer tokens and cookies stay home) and is refused when the
request body would be sent there again (307/308). requests itself would strip only Authorization and
re-send the body."""

from __future__ import annotations

import logging
from urllib.parse import SplitResult, urljoin, urlsplit

import requests
from requests.utils import requote_uri

from covid_lakehouse.lib.http.errors import RedirectRefusedError
from covid_lakehouse.lib.http.limits import Deadline
from covid_lakehouse.lib.http.redaction import Redactor

logger = logging.getLogger(__package__)  # the package's name, as the client's (log filters use it)

# Headers still sent after a redirect to another origin; every other one may carry a credential.
_KEPT_ACROSS_ORIGINS = frozenset({"user-agent", "accept", "accept-encoding", "accept-language", "connection"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def send(session: requests.Session, method: str, prepared: requests.PreparedRequest, *,
         timeouts: tuple[float, float], max_redirects: int, deadline: Deadline, redactor: Redactor,
         attempt: int) -> requests.Response:
    """One attempt, following redirects ourselves (see the module docstring)."""
    request = prepared.copy()
    for _ in range(max_redirects + 1):
        timeout = (deadline.cap(timeouts[0]), deadline.cap(timeouts[1]))
        # Always stream: the body is then read by the caller's consume, inside the retry budget.
        settings = session.merge_environment_settings(request.url, {}, True, None, None)
        response = session.send(request, timeout=timeout, allow_redirects=False, **settings)
        if not response.is_redirect:
            return response
        request = _redirected(session, method, request, response, redactor, attempt)
    raise RedirectRefusedError(method, redactor.url, f"more than {max_redirects} redirects",
                               attempts=attempt)


def _redirected(session: requests.Session, method: str, request: requests.PreparedRequest,
                response: requests.Response, redactor: Redactor, attempt: int) -> requests.PreparedRequest:
    status = response.status_code
    location = session.get_redirect_target(response) or ""
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


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
