"""The mock third-party API harness, exercised over real loopback HTTP."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockRequest, MockResponse

ROWS = {"data": [{"county": "Albany", "positive": 3}, {"county": "Bronx", "positive": 7}]}


def _harness_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mock-api-")]


@pytest.fixture
def api() -> Iterator[MockApi]:
    with MockApi() as mock:
        mock.route("GET", "/rows", lambda req: MockResponse.json_body(ROWS))
        yield mock


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def test_routes_exact_prefix_and_unknown(api: MockApi, session: requests.Session) -> None:
    api.route("GET", "/files/*", lambda req: MockResponse(200, req.path.encode(), content_type="text/plain"))
    assert session.get(f"{api.url}/rows").json() == ROWS
    assert session.get(f"{api.url}/files/a/b.csv").text == "/files/a/b.csv"
    assert session.get(f"{api.url}/rows/extra").status_code == 404  # exact routes do not match prefixes
    assert session.post(f"{api.url}/rows").status_code == 405  # path known, method not


def test_binds_loopback_on_a_free_port() -> None:
    with MockApi() as first, MockApi() as second:
        assert first.url.startswith("http://127.0.0.1:")
        assert first.port != second.port


def test_requests_are_recorded_with_query_headers_and_body(api: MockApi, session: requests.Session) -> None:
    @api.route("POST", "/echo")
    def echo(req: MockRequest) -> MockResponse:
        return MockResponse.json_body(req.json(), status=201)

    response = session.post(f"{api.url}/echo?a=1&a=2&b=", json={"x": 1}, headers={"X-Trace": "t1"})
    assert (response.status_code, response.json()) == (201, {"x": 1})
    [request] = api.requests
    assert (request.method, request.path) == ("POST", "/echo")
    assert request.query == {"a": ["1", "2"], "b": [""]}
    assert request.headers["x-trace"] == "t1"
    assert request.json() == {"x": 1}
    api.reset()
    assert api.requests == []


def test_chunked_request_body_is_read(api: MockApi, session: requests.Session) -> None:
    api.route("PUT", "/upload", lambda req: MockResponse.json_body({"size": len(req.body)}))
    response = session.put(f"{api.url}/upload", data=iter([b"abc", b"defg"]))  # generator -> chunked
    assert response.json() == {"size": 7}


def test_faults_apply_in_queue_order_then_the_real_handler_resumes(
    api: MockApi, session: requests.Session
) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after=2), times=2)
    api.fail_next("/rows", Fault.server_error(502))
    api.fail_next("/rows", Fault.auth_failure())
    responses = [session.get(f"{api.url}/rows") for _ in range(5)]
    assert [r.status_code for r in responses] == [429, 429, 502, 401, 200]
    assert responses[0].headers["Retry-After"] == "2"
    assert responses[4].json() == ROWS
    assert len(api.requests) == 5


def test_rate_limited_sends_an_http_date_as_is_and_can_omit_the_header(
    api: MockApi, session: requests.Session
) -> None:
    api.fail_next("/rows", Fault.rate_limited(retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    api.fail_next("/rows", Fault.rate_limited(retry_after=None, headers={"X-RateLimit-Remaining": "0"}))
    first, second = session.get(f"{api.url}/rows"), session.get(f"{api.url}/rows")
    assert first.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert "Retry-After" not in second.headers and second.headers["X-RateLimit-Remaining"] == "0"


def test_faults_are_per_path(api: MockApi, session: requests.Session) -> None:
    api.route("GET", "/other", lambda req: MockResponse.json_body({}))
    api.fail_next("/rows", Fault.server_error())
    assert session.get(f"{api.url}/other").status_code == 200
    assert session.get(f"{api.url}/rows").status_code == 500


def test_malformed_html_outage_and_custom(api: MockApi, session: requests.Session) -> None:
    api.fail_next("/rows", Fault.malformed())
    api.fail_next("/rows", Fault.html_outage())
    api.fail_next("/rows", Fault.custom(MockResponse(418, b"teapot", {"X-Why": "test"}, "text/plain")))
    malformed = session.get(f"{api.url}/rows")
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.content)
    outage = session.get(f"{api.url}/rows")
    assert outage.status_code == 503 and outage.headers["Content-Type"].startswith("text/html")
    assert "<title>Site Currently Unavailable</title>" in outage.text
    custom = session.get(f"{api.url}/rows")
    assert (custom.status_code, custom.text, custom.headers["X-Why"]) == (418, "teapot", "test")


def test_truncated_declares_the_full_length_and_hangs_up(api: MockApi) -> None:
    full = json.dumps(ROWS).encode()
    api.fail_next("/rows", Fault.truncated(0.5))
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("GET", "/rows")
        response = conn.getresponse()
        assert int(response.headers["Content-Length"]) == len(full)
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        assert excinfo.value.partial == full[: len(full) // 2]
    finally:
        conn.close()


def test_slow_delays_the_response(api: MockApi, session: requests.Session) -> None:
    api.fail_next("/rows", Fault.slow(1.0))
    with pytest.raises(requests.ReadTimeout):
        session.get(f"{api.url}/rows", timeout=(1, 0.1))
    assert session.get(f"{api.url}/rows", timeout=5).json() == ROWS  # only the queued request was slow


def test_transform_rewrites_real_bodies_until_removed(api: MockApi, session: requests.Session) -> None:
    def rename(body: bytes) -> bytes:
        doc = json.loads(body)
        return json.dumps(
            {"data": [{"county_name": r["county"], "positive": r["positive"]} for r in doc["data"]]}
        ).encode()

    api.transform("/rows", rename)
    api.fail_next("/rows", Fault.server_error())
    assert session.get(f"{api.url}/rows").status_code == 500  # faults are not transformed
    for _ in range(2):
        assert session.get(f"{api.url}/rows").json()["data"][0] == {"county_name": "Albany", "positive": 3}
    api.transform("/rows", None)
    assert session.get(f"{api.url}/rows").json() == ROWS


def test_reset_clears_faults_and_transforms(api: MockApi, session: requests.Session) -> None:
    api.fail_next("/rows", Fault.server_error(), times=3)
    api.transform("/rows", lambda body: b"{}")
    api.reset()
    assert session.get(f"{api.url}/rows").json() == ROWS


def test_handler_errors_answer_500_and_the_server_keeps_serving(
    api: MockApi, session: requests.Session
) -> None:
    def broken(req: MockRequest) -> MockResponse:
        raise KeyError("oops")

    api.route("GET", "/broken", broken)
    assert session.get(f"{api.url}/broken").status_code == 500
    assert session.get(f"{api.url}/rows").status_code == 200


def test_iterable_body_without_length_is_sent_chunked(api: MockApi, session: requests.Session) -> None:
    api.route(
        "GET", "/stream", lambda req: MockResponse(200, iter([b"a,b\n", b"1,2\n"]), content_type="text/csv")
    )
    response = session.get(f"{api.url}/stream")
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert response.text == "a,b\n1,2\n"


def test_file_streams_plain_and_gzip_files(api: MockApi, session: requests.Session, tmp_path: Path) -> None:
    content = b"".join(b"%d,county,%d\n" % (i, i * 7) for i in range(50_000))  # ~1 MB, many chunks
    plain = tmp_path / "rows.csv"
    plain.write_bytes(content)
    packed = tmp_path / "rows.csv.gz"
    packed.write_bytes(gzip.compress(content))
    api.route("GET", "/plain", lambda req: MockResponse.file(plain, "text/csv"))
    api.route("GET", "/gz", lambda req: MockResponse.file(packed, "text/csv"))
    api.route("GET", "/gz-encoded", lambda req: MockResponse.file(packed, "text/csv", gzip_encoded=True))

    for path in ("/plain", "/gz"):
        response = session.get(f"{api.url}{path}")
        assert response.content == content
        assert int(response.headers["Content-Length"]) == len(content)
        assert "Content-Encoding" not in response.headers

    encoded = session.get(f"{api.url}/gz-encoded")
    assert encoded.headers["Content-Encoding"] == "gzip"
    assert int(encoded.headers["Content-Length"]) == packed.stat().st_size
    assert encoded.content == content  # requests decodes it


def test_file_truncation_uses_the_file_length(api: MockApi, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: several chunks
    api.route("GET", "/big", lambda req: MockResponse.file(path, "application/octet-stream"))
    api.fail_next("/big", Fault.truncated(0.25))
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request("GET", "/big")
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as excinfo:
            response.read()
        assert len(excinfo.value.partial) == 64 * 1024
    finally:
        conn.close()


def test_head_sends_headers_only(api: MockApi, session: requests.Session) -> None:
    api.route("HEAD", "/rows", lambda req: MockResponse.json_body(ROWS))
    response = session.head(f"{api.url}/rows")
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["Content-Length"]) == len(json.dumps(ROWS))


def test_stop_interrupts_slow_responses_and_leaves_no_threads() -> None:
    api = MockApi().start()
    api.route("GET", "/rows", lambda req: MockResponse.json_body(ROWS))
    api.fail_next("/rows", Fault.slow(60))
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{api.url}/rows", timeout=30)
        except requests.RequestException as exc:
            outcome.append(exc)

    client = threading.Thread(target=call)
    client.start()
    api.wait_for_requests(1)  # the request is held back by the server now
    started = time.monotonic()
    api.stop()
    assert time.monotonic() - started < 5  # far less than the 60 s delay
    client.join(5)
    assert not client.is_alive()
    assert outcome and isinstance(outcome[0], requests.ConnectionError)
    assert _harness_threads() == []


def test_stop_closes_idle_keep_alive_connections_and_the_socket() -> None:
    with MockApi() as api, requests.Session() as session:
        api.route("GET", "/rows", lambda req: MockResponse.json_body(ROWS))
        session.get(f"{api.url}/rows")  # leaves a pooled keep-alive connection open
        port = api.port
    assert _harness_threads() == []
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_stopped_api_cannot_restart() -> None:
    api = MockApi().start()
    api.stop()
    api.stop()  # idempotent
    with pytest.raises(RuntimeError):
        api.start()


def test_serve_forever_in_foreground_returns_when_stopped() -> None:
    api = MockApi().start()
    api.route("GET", "/rows", lambda req: MockResponse.json_body(ROWS))
    foreground = threading.Thread(target=api.serve_forever_in_foreground)
    foreground.start()
    try:
        assert requests.get(f"{api.url}/rows", timeout=5).json() == ROWS
    finally:
        api.stop()
        foreground.join(5)
    assert not foreground.is_alive()
    assert _harness_threads() == []


def test_wait_for_requests_times_out_with_a_clear_message(api: MockApi) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 requests"):
        api.wait_for_requests(1, timeout=0.01)
