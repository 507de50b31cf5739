"""HttpClient against a real MockApi over loopback: classification, one retry budget, downloads, redaction.

Waits go through a FakeClock, so backoff is asserted without sleeping; only the timeout tests spend
real time (a fraction of a second of client read timeout).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import pickle
import random
import socket
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import dagster as dg
import pytest

from covid_lakehouse.lib.clock import FakeClock
from covid_lakehouse.lib.http import (
    AuthError,
    ClientError,
    HttpClient,
    HttpError,
    RateLimitedError,
    RetriesExhaustedError,
    TransientHttpError,
    parse_retry_after,
)
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockRequest, MockResponse

ROWS = {"data": [{"county": "Albany", "positive": 3}]}
START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TOKEN = "SEKRET-TOKEN-123"
HEADER_TOKEN = "HEADER-SECRET-456"


@pytest.fixture
def api() -> Iterator[MockApi]:
    with MockApi() as mock:
        mock.route("GET", "/rows", lambda req: MockResponse.json_body(ROWS))
        mock.route("POST", "/rows", lambda req: MockResponse.json_body({"received": req.json()}))
        yield mock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def make_client(clock: FakeClock) -> Iterator[Callable[..., HttpClient]]:
    clients: list[HttpClient] = []

    def make(**kwargs: object) -> HttpClient:
        options: dict[str, object] = {"clock": clock, "rng": random.Random(0), "timeout": (2.0, 5.0)}
        client = HttpClient(**{**options, **kwargs})  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., HttpClient]) -> HttpClient:
    return make_client()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- transient failures are retried -------------------------------------------------------------------


def test_429_waits_at_least_retry_after(api: MockApi, client: HttpClient, clock: FakeClock) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after=7), times=2)
    assert client.get(f"{api.url}/rows").json() == ROWS
    assert len(api.requests) == 3
    assert len(clock.sleeps) == 2 and all(wait >= 7 for wait in clock.sleeps)


def test_429_retry_after_as_http_date(api: MockApi, client: HttpClient, clock: FakeClock) -> None:
    api.fail_next(
        "/rows", Fault.rate_limited(retry_after=format_datetime(START + timedelta(seconds=30), usegmt=True))
    )
    assert client.get(f"{api.url}/rows").status_code == 200
    assert clock.sleeps[0] >= 30


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried(api: MockApi, client: HttpClient, clock: FakeClock, status: int) -> None:
    api.fail_next("/rows", Fault.server_error(status), times=2)
    assert client.get(f"{api.url}/rows").json() == ROWS
    assert len(api.requests) == 3 and len(clock.sleeps) == 2


def test_503_retry_after_is_honoured(api: MockApi, client: HttpClient, clock: FakeClock) -> None:
    api.fail_next("/rows", Fault.custom(MockResponse(503, b"busy", {"Retry-After": "4"})))
    client.get(f"{api.url}/rows")
    assert clock.sleeps[0] >= 4


def test_connector_hint_replaces_retry_after(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    # e.g. a connector reading Facebook's x-business-use-case-usage "estimated_time_to_regain_access"
    def minutes_hint(response: object) -> float | None:
        value = response.headers.get("X-Regain-Access-Minutes")  # type: ignore[attr-defined]
        return float(value) * 60 if value else None

    api.fail_next("/rows", Fault.rate_limited(retry_after=None, headers={"X-Regain-Access-Minutes": "2"}))
    make_client(retry_after_from=minutes_hint).get(f"{api.url}/rows")
    assert clock.sleeps[0] >= 120


def test_read_timeout_is_retried(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    api.fail_next("/rows", Fault.slow(1.5))  # the stop() in the fixture wakes the held-back response
    client = make_client(timeout=(2.0, 0.2))
    assert client.get(f"{api.url}/rows").json() == ROWS
    assert len(api.requests) == 2 and len(clock.sleeps) == 1


def test_read_timeouts_exhaust_the_budget(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    api.fail_next("/rows", Fault.slow(1.5), times=2)
    with pytest.raises(TransientHttpError, match="ReadTimeout") as excinfo:
        make_client(timeout=(2.0, 0.2), max_attempts=2).get(f"{api.url}/rows")
    assert excinfo.value.status is None and excinfo.value.attempts == 2


def test_connection_refused_exhausts_attempts(
    make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/rows"
    with pytest.raises(TransientHttpError, match="Connection refused") as excinfo:
        make_client(max_attempts=3).get(url)
    assert excinfo.value.attempts == 3 and len(clock.sleeps) == 2


def test_connection_refused_until_the_server_comes_up() -> None:
    port = _free_port()
    servers: list[MockApi] = []

    class ServerStartsWhileWaiting(FakeClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            if not servers:
                servers.append(MockApi(port=port).start())
                servers[0].route("GET", "/rows", lambda req: MockResponse.json_body(ROWS))

    clock = ServerStartsWhileWaiting(START)
    try:
        with HttpClient(clock=clock, rng=random.Random(0)) as client:
            assert client.get(f"http://127.0.0.1:{port}/rows").json() == ROWS
        assert len(clock.sleeps) == 1
    finally:
        for server in servers:
            server.stop()


def test_truncated_body_is_retried_for_plain_requests(api: MockApi, client: HttpClient) -> None:
    api.fail_next("/rows", Fault.truncated(0.5))
    assert client.get(f"{api.url}/rows").json() == ROWS
    assert len(api.requests) == 2


def test_post_bodies_are_replayed_on_retry(api: MockApi, client: HttpClient) -> None:
    api.fail_next("/rows", Fault.server_error(502))
    assert client.post(f"{api.url}/rows", json={"id": 1}).json() == {"received": {"id": 1}}
    assert [r.json() for r in api.requests] == [{"id": 1}, {"id": 1}]


# -- one budget per call, then a Failure Dagster will not retry -------------------------------------------


def test_attempts_exhausted_is_a_dagster_failure_without_retries(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    api.fail_next("/rows", Fault.server_error(503, body=b'{"error": "overloaded"}'), times=10)
    with pytest.raises(RetriesExhaustedError) as excinfo:
        make_client(max_attempts=3).get(f"{api.url}/rows")
    error = excinfo.value
    assert isinstance(error, TransientHttpError) and not isinstance(error, RateLimitedError)
    assert isinstance(error, dg.Failure) and error.allow_retries is False
    assert len(api.requests) == 3 and len(clock.sleeps) == 2
    assert (error.status, error.attempts) == (503, 3)
    message = str(error)
    assert message.startswith(f"GET {api.url}/rows: ") and "HTTP 503" in message and "overloaded" in message
    assert error.description == message


def test_still_rate_limited_raises_rate_limited_error(
    api: MockApi, make_client: Callable[..., HttpClient]
) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after=1), times=10)
    with pytest.raises(RateLimitedError) as excinfo:
        make_client(max_attempts=2).get(f"{api.url}/rows")
    assert excinfo.value.status == 429 and excinfo.value.allow_retries is False


def test_retry_after_beyond_the_wait_budget_gives_up_at_once(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after=3600))
    with pytest.raises(RateLimitedError, match="asked to wait 3600"):
        make_client(max_total_wait=300).get(f"{api.url}/rows")
    assert len(api.requests) == 1 and clock.sleeps == []


def test_wait_budget_is_shared_by_all_retries_of_a_call(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after=25), times=10)
    client = make_client(max_attempts=10, max_total_wait=60)
    with pytest.raises(RateLimitedError):
        client.get(f"{api.url}/rows")
    assert len(clock.sleeps) == 2 and sum(clock.sleeps) <= 60  # a third 25 s wait would overrun
    api.reset()
    assert client.get(f"{api.url}/rows").status_code == 200  # the next call has a fresh budget


def test_dagster_retry_policy_does_not_retry_an_exhausted_error() -> None:
    calls = {"exhausted": 0, "plain": 0}
    policy = dg.RetryPolicy(max_retries=2)

    @dg.asset(retry_policy=policy)
    def exhausted() -> None:
        calls["exhausted"] += 1
        raise TransientHttpError("GET", "http://api.example/rows", "gave up", status=503, attempts=5)

    @dg.asset(retry_policy=policy)
    def plain() -> None:
        calls["plain"] += 1
        raise RuntimeError("boom")

    for asset in (exhausted, plain):
        result = dg.materialize([asset], instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success
    assert calls == {"exhausted": 1, "plain": 3}  # the control proves the policy is active


def test_errors_survive_pickling() -> None:
    error = RateLimitedError("GET", "http://api.example/rows", "gave up", status=429, attempts=5)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimitedError
    assert (str(copy), copy.status, copy.allow_retries) == (str(error), 429, False)


# -- permanent failures fail at once ------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_not_retried(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock, status: int
) -> None:
    api.fail_next("/rows", Fault.auth_failure(status=status))
    client = make_client(auth_hint="the environment variable FACEBOOK_ACCESS_TOKEN")
    with pytest.raises(AuthError) as excinfo:
        client.get(f"{api.url}/rows")
    assert len(api.requests) == 1 and clock.sleeps == []
    assert isinstance(excinfo.value, dg.Failure) and excinfo.value.allow_retries is False
    message = str(excinfo.value)
    assert f"HTTP {status}" in message and "authentication failed" in message
    assert "the environment variable FACEBOOK_ACCESS_TOKEN" in message and "invalid access token" in message


def test_404_is_a_client_error_without_retry(api: MockApi, client: HttpClient, clock: FakeClock) -> None:
    with pytest.raises(ClientError, match="HTTP 404") as excinfo:
        client.get(f"{api.url}/missing")
    assert excinfo.value.status == 404 and excinfo.value.allow_retries is False
    assert len(api.requests) == 1 and clock.sleeps == []


def test_ok_statuses_are_returned(api: MockApi, client: HttpClient) -> None:
    assert client.get(f"{api.url}/missing", ok_statuses=(200, 404)).status_code == 404


@pytest.mark.parametrize("gzip_encoded", [False, True])
def test_a_body_of_several_read_sizes_arrives_whole(
    api: MockApi, client: HttpClient, tmp_path: Path, gzip_encoded: bool
) -> None:
    body = random.Random(7).randbytes(2_500_000)  # 2.4 MiB: three of the client's 1 MiB reads
    served = tmp_path / ("page.bin.gz" if gzip_encoded else "page.bin")
    served.write_bytes(gzip.compress(body) if gzip_encoded else body)
    api.route("GET", "/page", lambda req: MockResponse.file(served, "application/octet-stream", gzip_encoded=gzip_encoded))
    response = client.get(f"{api.url}/page")
    assert response.content == body


def test_unexpected_success_status_is_an_error(api: MockApi, client: HttpClient) -> None:
    api.route("DELETE", "/rows", lambda req: MockResponse(204, content_type=None))
    with pytest.raises(HttpError, match="HTTP 204"):
        client.request("DELETE", f"{api.url}/rows")
    assert client.request("DELETE", f"{api.url}/rows", ok_statuses=(204,)).status_code == 204


# -- outage pages and malformed bodies ---------------------------------------------------------------------


def test_html_outage_503_is_retried(api: MockApi, client: HttpClient) -> None:
    api.fail_next("/rows", Fault.html_outage(status=503))
    assert client.get(f"{api.url}/rows").json() == ROWS


def test_html_outage_excerpt_shows_the_page_title(
    api: MockApi, make_client: Callable[..., HttpClient]
) -> None:
    api.fail_next("/rows", Fault.html_outage(status=503), times=2)
    with pytest.raises(TransientHttpError, match="HTML page: Site Currently Unavailable"):
        make_client(max_attempts=2).get(f"{api.url}/rows")


def test_html_page_with_200_is_returned_as_is(api: MockApi, client: HttpClient) -> None:
    # Recognising an outage page served as 200 is the parser's job, not the transport's.
    api.fail_next("/rows", Fault.html_outage(status=200))
    api.fail_next("/rows", Fault.malformed())
    assert "Site Currently Unavailable" in client.get(f"{api.url}/rows").text
    assert client.get(f"{api.url}/rows").content == b'{"data": [1, 2'
    assert len(api.requests) == 2


# -- downloads --------------------------------------------------------------------------------------------


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    content = b"".join(b"%d,Albany,2020-03-%02d,%d\n" % (i, i % 28 + 1, i * 3) for i in range(200_000))
    path = tmp_path / "served.csv"
    path.write_bytes(content)
    return path, content


def test_download_streams_into_the_sink(
    api: MockApi, client: HttpClient, payload: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, content = payload
    api.route("GET", "/export.csv", lambda req: MockResponse.file(path, "text/csv"))
    target = tmp_path / "downloaded.csv"
    tracemalloc.start()
    try:
        with target.open("wb") as sink:
            result = client.download(f"{api.url}/export.csv", sink, chunk_size=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.bytes == len(content) == target.stat().st_size
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert (result.status, result.content_type) == (200, "text/csv")
    assert peak < len(content) / 4  # never the whole body in memory (client and server together)


def test_truncated_download_is_retried_into_a_clean_sink(
    api: MockApi, client: HttpClient, clock: FakeClock, payload: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, content = payload
    api.route("GET", "/export.csv", lambda req: MockResponse.file(path, "text/csv"))
    api.fail_next("/export.csv", Fault.truncated(0.6))
    target = tmp_path / "downloaded.csv"
    with target.open("w+b") as sink:
        result = client.download(f"{api.url}/export.csv", sink)
    assert target.read_bytes() == content  # not the partial body followed by the full one
    assert result.sha256 == hashlib.sha256(content).hexdigest() and result.bytes == len(content)
    assert len(api.requests) == 2 and len(clock.sleeps) == 1


def test_dropped_connection_then_exhaustion(
    api: MockApi, make_client: Callable[..., HttpClient], payload: tuple[Path, bytes]
) -> None:
    path, _ = payload
    api.route("GET", "/export.csv", lambda req: MockResponse.file(path, "text/csv"))
    api.fail_next("/export.csv", Fault.truncated(0.1), times=2)
    with pytest.raises(TransientHttpError, match="IncompleteRead"):
        make_client(max_attempts=2).download(f"{api.url}/export.csv", io.BytesIO())


@pytest.mark.parametrize("gzip_encoded", [False, True])
def test_download_hashes_the_decoded_body_of_gzip_files(
    api: MockApi, client: HttpClient, payload: tuple[Path, bytes], tmp_path: Path, gzip_encoded: bool
) -> None:
    _, content = payload
    packed = tmp_path / "served.csv.gz"
    packed.write_bytes(gzip.compress(content))
    api.route(
        "GET", "/export.csv", lambda req: MockResponse.file(packed, "text/csv", gzip_encoded=gzip_encoded)
    )
    api.fail_next("/export.csv", Fault.truncated(0.5))  # Content-Length is checked on the wire bytes
    sink = io.BytesIO()
    result = client.download(f"{api.url}/export.csv", sink)
    assert sink.getvalue() == content
    assert (result.bytes, result.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert len(api.requests) == 2


def test_download_errors_are_classified(api: MockApi, client: HttpClient) -> None:
    with pytest.raises(ClientError):
        client.download(f"{api.url}/missing", io.BytesIO())


def test_download_needs_a_seekable_sink(api: MockApi, client: HttpClient) -> None:
    class Unseekable(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError, match="seekable"):
        client.download(f"{api.url}/rows", Unseekable())
    assert api.requests == []


# -- secrets and logs -------------------------------------------------------------------------------------


def _echo_request(req: MockRequest) -> MockResponse:
    # Some APIs echo the request back in their errors; the excerpt must not leak it.
    token = req.query.get("access_token", [""])[0]
    return MockResponse(400, f"bad request {req.path}?access_token={token} token={token}".encode())


def test_secrets_never_reach_messages_or_logs(
    api: MockApi, make_client: Callable[..., HttpClient], caplog: pytest.LogCaptureFixture
) -> None:
    api.route("GET", "/echo", _echo_request)
    api.fail_next("/rows", Fault.server_error(500), times=10)
    client = make_client(max_attempts=3)
    params = {"access_token": TOKEN, "limit": 10}
    headers = {"Authorization": f"Bearer {HEADER_TOKEN}"}
    refused = f"http://127.0.0.1:{_free_port()}/rows"
    cases = [
        (f"{api.url}/rows", TransientHttpError),  # 500 until the budget is spent
        (f"{api.url}/echo", ClientError),  # 400 whose body echoes the token
        (refused, TransientHttpError),  # requests' own message spells out the full URL
        (f"{api.url}/rows?api_key={TOKEN}", TransientHttpError),  # a secret already in the URL
    ]
    messages = []
    # Our own logger and urllib3's (whose DEBUG records hold each request line) at every level.
    with caplog.at_level(logging.DEBUG, logger="covid_lakehouse.lib.http"), \
            caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        for url, expected in cases:
            with pytest.raises(expected) as excinfo:
                client.get(url, params=params, headers=headers)
            messages.append(str(excinfo.value))
    assert len(caplog.records) >= 6  # the retries were logged
    request_lines = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool" and '"GET ' in r.getMessage()]
    assert request_lines and all("access_token=REDACTED" in line and "limit=10" in line for line in request_lines)
    for text in [*messages, caplog.text]:
        assert TOKEN not in text and HEADER_TOKEN not in text
    assert "access_token=REDACTED&limit=10" in messages[0]
    assert "api_key=REDACTED" in messages[3]
    assert "Connection refused" in messages[2]


def test_retries_are_logged_with_attempt_wait_and_reason(
    api: MockApi, client: HttpClient, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after=3))
    with caplog.at_level(logging.WARNING, logger="covid_lakehouse.lib.http"):
        client.get(f"{api.url}/rows")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "attempt 1/5" in record.getMessage() and "HTTP 429" in record.getMessage()
    assert f"retrying in {clock.sleeps[0]:.2f}s" in record.getMessage()


def test_user_agent_is_sent(api: MockApi, make_client: Callable[..., HttpClient]) -> None:
    make_client(user_agent="covid-lakehouse-tests/1").get(f"{api.url}/rows")
    assert api.requests[0].headers["User-Agent"] == "covid-lakehouse-tests/1"


# -- backoff ------------------------------------------------------------------------------------------------


def test_full_jitter_comes_from_the_injected_rng(
    api: MockApi, make_client: Callable[..., HttpClient], clock: FakeClock
) -> None:
    api.fail_next("/rows", Fault.server_error(), times=4)
    make_client(rng=random.Random(42), backoff_base=0.5, backoff_max=2.0).get(f"{api.url}/rows")
    expected_rng = random.Random(42)
    expected = [expected_rng.uniform(0, min(2.0, 0.5 * 2**attempt)) for attempt in range(4)]
    assert clock.sleeps == expected
    assert all(0 <= wait <= 2.0 for wait in clock.sleeps)


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", START) == 120
    assert parse_retry_after(format_datetime(START + timedelta(minutes=1), usegmt=True), START) == 60
    assert parse_retry_after(format_datetime(START - timedelta(minutes=1), usegmt=True), START) == 0
    assert parse_retry_after("soon", START) is None
    assert parse_retry_after(None, START) is None


def test_fake_clock_records_sleeps_without_sleeping() -> None:
    clock = FakeClock(START)
    clock.sleep(90)
    assert clock.now() == START + timedelta(seconds=90) and clock.monotonic() == 90 and clock.sleeps == [90]
    with pytest.raises(ValueError):
        FakeClock(datetime(2024, 1, 1))


def test_json_error_bodies_are_excerpted(api: MockApi, client: HttpClient) -> None:
    api.route(
        "GET", "/bad", lambda req: MockResponse.json_body({"error": {"message": "x" * 5000}}, status=400)
    )
    with pytest.raises(ClientError) as excinfo:
        client.get(f"{api.url}/bad")
    assert len(excinfo.value.body_excerpt) <= 300
    assert json.dumps({"error": {"message": "x"}})[:10] in excinfo.value.body_excerpt
