"""The HTTP client's bounds against real loopback servers: redirects never carry credentials to another
origin, decoded bytes are capped (gzip bombs included), every call has a total deadline, and paging
loops end. Outcomes are asserted, never durations: the trickling server never finishes on its own, so
the deadline is the only way the call can end."""

from __future__ import annotations

import gzip
import io
import itertools
import threading
from collections.abc import Iterator
from datetime import date

import pytest
import requests
from requests.adapters import BaseAdapter

from covid_lakehouse.defs.marketing.clevertap import CleverTapEvents
from covid_lakehouse.defs.marketing.facebook import FacebookInsights
from covid_lakehouse.lib.clock import SystemClock
from covid_lakehouse.lib.http import (
    BodyTooLargeError,
    DeadlineExceededError,
    HttpClient,
    PageGuard,
    PagingError,
    RedirectRefusedError,
)
from covid_lakehouse_dev.apis.harness import MockApi, MockRequest, MockResponse

SECRETS = {"Authorization": "Bearer AUTH-SECRET-1", "X-CleverTap-Passcode": "PASSCODE-SECRET-2",
           "developer-token": "DEVTOKEN-SECRET-3", "X-Custom-Key": "CUSTOM-SECRET-4"}
OAUTH_FORM = {"grant_type": "refresh_token", "client_secret": "CLIENT-SECRET-5", "refresh_token": "REFRESH-6"}


@pytest.fixture
def origin() -> Iterator[MockApi]:
    with MockApi() as api:
        yield api


@pytest.fixture
def elsewhere() -> Iterator[MockApi]:
    """A second loopback server (another port = another origin) that records what reaches it."""
    with MockApi() as api:
        api.route("GET", "/landing", lambda req: MockResponse.json_body({"landed": True}))
        api.route("POST", "/landing", lambda req: MockResponse.json_body({"landed": True}))
        yield api


def _redirect(to: str, status: int = 307):
    return lambda req: MockResponse(status, b"", {"Location": to})


def _leaked(requests_seen: list[MockRequest]) -> list[str]:
    secrets = [*SECRETS.values(), *OAUTH_FORM.values()]
    return [s for r in requests_seen for s in secrets if s in str(dict(r.headers)) or s.encode() in r.body]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_cross_origin_redirect_strips_every_credential_header(origin: MockApi, elsewhere: MockApi,
                                                              status: int) -> None:
    origin.route("GET", "/rows", _redirect(f"{elsewhere.url}/landing", status))
    with HttpClient(secret_headers=["X-Custom-Key"]) as client:
        assert client.get(f"{origin.url}/rows", headers=SECRETS).json() == {"landed": True}
    [received] = elsewhere.requests
    assert _leaked([received]) == []
    assert not {"authorization", "x-clevertap-passcode", "developer-token", "x-custom-key"} & {
        h.lower() for h in received.headers}


def test_same_origin_redirect_keeps_the_headers(origin: MockApi) -> None:
    origin.route("GET", "/old", _redirect("/rows"))
    origin.route("GET", "/rows", lambda req: MockResponse.json_body({"passcode": req.headers.get("X-CleverTap-Passcode")}))
    with HttpClient() as client:
        assert client.get(f"{origin.url}/old", headers=SECRETS).json() == {"passcode": SECRETS["X-CleverTap-Passcode"]}


@pytest.mark.parametrize("status", [307, 308])
def test_oauth_form_is_never_resent_to_another_origin(origin: MockApi, elsewhere: MockApi, status: int) -> None:
    origin.route("POST", "/token", _redirect(f"{elsewhere.url}/landing", status))
    with HttpClient() as client, pytest.raises(RedirectRefusedError, match="body would be sent to another origin"):
        client.post(f"{origin.url}/token", data=OAUTH_FORM)
    assert elsewhere.requests == []


def test_oauth_form_is_dropped_on_a_302_to_another_origin(origin: MockApi, elsewhere: MockApi) -> None:
    origin.route("POST", "/token", _redirect(f"{elsewhere.url}/landing", 302))
    with HttpClient() as client:
        client.post(f"{origin.url}/token", data=OAUTH_FORM)
    [received] = elsewhere.requests
    assert received.method == "GET" and received.body == b"" and _leaked([received]) == []


class _HttpsRedirector(BaseAdapter):
    """Stands in for an https API (no TLS server here) that answers every request with a redirect."""

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        response = requests.Response()
        response.status_code, response.url, response.request = 302, request.url, request
        response.headers["Location"] = self.location
        response.raw = io.BytesIO(b"")
        return response

    def close(self) -> None:
        pass


def test_https_to_http_redirect_is_refused(elsewhere: MockApi) -> None:
    session = requests.Session()
    session.mount("https://", _HttpsRedirector(f"{elsewhere.url}/landing"))
    with HttpClient(session=session) as client, pytest.raises(RedirectRefusedError, match="plain http"):
        client.get("https://api.example.test/rows", headers=SECRETS)
    assert elsewhere.requests == []


def test_redirect_loops_end(origin: MockApi) -> None:
    origin.route("GET", "/a", _redirect("/b"))
    origin.route("GET", "/b", _redirect("/a"))
    with HttpClient(max_redirects=3) as client, pytest.raises(RedirectRefusedError, match="more than 3 redirects"):
        client.get(f"{origin.url}/a")


# -- byte caps ------------------------------------------------------------------------------------------

def _gzip_bomb(decoded_mb: int) -> bytes:
    """Concatenated gzip members of zeros: ~1 KB per decoded MB."""
    member = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
    return member * (decoded_mb // 16)


class _GuardedSink(io.BytesIO):
    """Fails the test (instead of filling memory) when a download writes past what the cap allows."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > 64 << 20:
            raise AssertionError("the download wrote past the cap")
        return super().write(data)


def test_gzip_bomb_download_fails_clearly_and_keeps_nothing(origin: MockApi, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _gzip_bomb(4096)  # ~4 MB on the wire, 4 GiB decoded
    assert len(bomb) < 8 << 20
    origin.route("GET", "/rows.json", lambda req: MockResponse(200, bomb, {"Content-Encoding": "gzip"}))
    monkeypatch.setenv("HTTP_MAX_BODY_MB", "16")
    sink = _GuardedSink()
    with HttpClient() as client, pytest.raises(BodyTooLargeError, match="exceeds the cap of 16777216 bytes"):
        client.download(f"{origin.url}/rows.json", sink)
    assert sink.getvalue() == b""
    assert len(origin.requests) == 1  # a cap is not retried


def test_body_cap_applies_to_plain_reads(origin: MockApi) -> None:
    origin.route("GET", "/page", lambda req: MockResponse(200, _gzip_bomb(128), {"Content-Encoding": "gzip"}))
    with HttpClient(max_body_bytes=1 << 20) as client, pytest.raises(BodyTooLargeError, match="HTTP_MAX_BODY_MB"):
        client.get(f"{origin.url}/page")


def test_bodies_under_the_cap_arrive_whole(origin: MockApi) -> None:
    body = b"x" * (3 << 20)
    origin.route("GET", "/page", lambda req: MockResponse(200, gzip.compress(body), {"Content-Encoding": "gzip"}))
    with HttpClient(max_body_bytes=len(body)) as client:
        assert client.get(f"{origin.url}/page").content == body
        sink = io.BytesIO()
        assert client.download(f"{origin.url}/page", sink).bytes == len(body) and sink.getvalue() == body


# -- the call deadline ----------------------------------------------------------------------------------

@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_trickling_body_ends_at_the_call_deadline(origin: MockApi, stop: threading.Event) -> None:
    def trickle(req: MockRequest) -> MockResponse:
        def chunks() -> Iterator[bytes]:
            while not stop.is_set():  # one byte at a time, forever: each read succeeds, none times out
                yield b" "
                stop.wait(0.005)
        return MockResponse(200, chunks())

    origin.route("GET", "/rows.json", trickle)
    client = HttpClient(clock=SystemClock(), timeout=(5.0, 60.0), max_total_wait=0.0, transfer_deadline_s=0.3)
    with client, pytest.raises(DeadlineExceededError, match="HTTP_CALL_DEADLINE_S"):
        client.download(f"{origin.url}/rows.json", io.BytesIO())
    with client, pytest.raises(DeadlineExceededError):
        client.get(f"{origin.url}/rows.json")


def test_a_stalled_server_ends_at_the_deadline_not_the_read_timeout(origin: MockApi, stop: threading.Event) -> None:
    def stall(req: MockRequest) -> MockResponse:
        stop.wait()
        return MockResponse.json_body({})

    origin.route("GET", "/rows.json", stall)
    with HttpClient(clock=SystemClock(), timeout=(5.0, 3600.0), max_total_wait=0.0, transfer_deadline_s=0.3) as client:
        with pytest.raises(DeadlineExceededError):
            client.get(f"{origin.url}/rows.json")


# -- paging ---------------------------------------------------------------------------------------------

def test_page_guard_stops_a_repeated_cursor_and_caps_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = PageGuard("events of 2024-03-01")
    guard.advance("c1")
    guard.advance("c2")
    with pytest.raises(PagingError, match="cursor 'c1' again after page 3"):
        guard.advance("c1")
    monkeypatch.setenv("HTTP_MAX_PAGES", "3")
    capped = PageGuard("insights")
    with pytest.raises(PagingError, match="more than 3 pages"):
        for cursor in itertools.count():
            capped.advance(cursor)
    assert capped.pages == 3


# The connectors' paging loops use the guard: a server that repeats its cursor is stopped (before the
# guard, these loops fetched the same page forever; islice bounds the test on such code).
DAY = date(2024, 3, 1)


_SERVED = itertools.count()


def _repeating_facebook(req: MockRequest) -> MockResponse:
    if next(_SERVED) >= 40:  # only so that a loop without the guard ends (and its test fails)
        return MockResponse.json_body({"data": []})
    return MockResponse.json_body({"data": [], "paging": {"cursors": {"before": "B", "after": "SAME"},
                                                           "next": "https://graph.facebook.com/next"}})


def test_facebook_paging_stops_on_a_repeated_cursor(origin: MockApi) -> None:
    origin.route("GET", "/v27.0/act_123/insights", _repeating_facebook)
    origin.route("GET", "/v27.0/act_123", lambda _: MockResponse.json_body({"timezone_name": "America/New_York"}))
    with HttpClient() as client:
        insights = FacebookInsights(client, origin.url, "v27.0", "token", page_size=500)
        with pytest.raises(PagingError, match="cursor 'SAME' again"):
            list(itertools.islice(insights.pages("123", DAY), 50))
        with pytest.raises(PagingError, match="cursor 'SAME' again"):
            insights.daily_totals("123", DAY, DAY)
    insights_calls = [r for r in origin.requests if r.path.endswith("/insights")]
    assert len(insights_calls) == 2 + 2  # each loop stops at the first repeat (the account's zone is asked once)


def test_clevertap_paging_stops_on_a_repeated_cursor(origin: MockApi) -> None:
    origin.route("POST", "/1/events.json", lambda req: MockResponse.json_body({"status": "success", "cursor": "C1"}))
    origin.route("GET", "/1/events.json", lambda req: MockResponse.json_body(
        {"status": "success", "records": [], "next_cursor": "C1"}))
    with HttpClient() as client:
        events = CleverTapEvents(client, origin.url, "acct", "passcode", 100, SystemClock())
        with pytest.raises(PagingError, match="cursor 'C1' again after page 2"):
            list(itertools.islice(events.pages("App Launched", DAY), 50))
