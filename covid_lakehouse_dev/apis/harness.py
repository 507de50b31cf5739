"""A small local HTTP server that every mock third-party API is built on (tests, demo, compose profile).

It speaks real HTTP/1.1 over a socket, so clients are exercised end to end: timeouts, keep-alive,
Content-Length, truncated bodies and gzip included. Routes map (method, path) to a handler returning a
MockResponse. Fault switches are queued per path and served before the real handler resumes::

    with MockApi() as api:
        api.route("GET", "/v1/rows", lambda req: MockResponse.json_body({"data": [1, 2]}))
        api.fail_next("/v1/rows", Fault.rate_limited(retry_after=2), times=2)
        ...  # two 429s, then the real rows
        assert len(api.requests) == 3

Gzip: MockResponse.file() serves a ``.gz`` file decompressed, streamed from gzip.open with the
decompressed Content-Length (like a server that stores data compressed); with gzip_encoded=True it
sends the stored bytes as ``Content-Encoding: gzip`` (requests decodes that transparently).
"""

from __future__ import annotations

import gzip
import json as jsonlib
import logging
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from requests.structures import CaseInsensitiveDict

logger = logging.getLogger(__name__)

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_CHUNK = 64 * 1024
_JOIN_TIMEOUT = 5.0


# --------------------------------------------------------------------------------------------------
# Requests and responses


@dataclass(frozen=True)
class MockRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: CaseInsensitiveDict[str]
    body: bytes = b""

    def json(self) -> Any:
        return jsonlib.loads(self.body)


@dataclass
class MockResponse:
    """status, body (bytes, or an iterable of chunks streamed as they come), headers.

    An iterable body is sent with ``content_length`` when given, else chunked. Iterables are consumed
    once: build a fresh response per request (handlers do).
    """

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    content_length: int | None = None

    @classmethod
    def json_body(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> MockResponse:
        return cls(status, jsonlib.dumps(obj).encode(), dict(headers or {}))

    @classmethod
    def file(cls, path: str | Path, content_type: str, gzip_encoded: bool = False) -> MockResponse:
        """Stream a file from disk in chunks (see the module docstring for ``.gz`` files)."""
        path = Path(path)
        if gzip_encoded:
            if path.suffix != ".gz":
                raise ValueError(f"gzip_encoded needs a .gz file, got {path.name}")
            return cls(
                200,
                _read_chunks(path, gzip_open=False),
                {"Content-Encoding": "gzip"},
                content_type,
                path.stat().st_size,
            )
        if path.suffix == ".gz":
            return cls(200, _read_chunks(path, gzip_open=True), {}, content_type, _gunzipped_size(path))
        return cls(200, _read_chunks(path, gzip_open=False), {}, content_type, path.stat().st_size)

    def _chunks_and_length(self) -> tuple[Iterable[bytes], int | None]:
        if isinstance(self.body, bytes | bytearray):
            return [bytes(self.body)], len(self.body)
        return self.body, self.content_length

    def _materialized(self) -> MockResponse:
        """A copy with the body joined into bytes (for transforms and replayable faults)."""
        chunks, _ = self._chunks_and_length()
        return MockResponse(self.status, b"".join(chunks), dict(self.headers), self.content_type)


def _read_chunks(path: Path, *, gzip_open: bool) -> Iterator[bytes]:
    with gzip.open(path, "rb") if gzip_open else path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _gunzipped_size(path: Path) -> int:
    stat = path.stat()
    return _gunzipped_size_cached(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _gunzipped_size_cached(path: str, _mtime_ns: int, _size: int) -> int:
    # One counting pass: the gzip trailer only records the size of the last member (mod 4 GiB).
    return sum(len(chunk) for chunk in _read_chunks(Path(path), gzip_open=True))


_MAINTENANCE_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Site Currently Unavailable</title></head>
<body>
  <div class="modalContentBox">
    <h1>Site Currently Unavailable</h1>
    <p>We're performing scheduled maintenance. We'll be back online shortly.</p>
  </div>
</body>
</html>
"""


# --------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Fault:
    """One misbehaviour, served instead of (or on top of) the real response. Build with the helpers."""

    response: MockResponse | None = None  # served instead of the real handler's response
    delay: float = 0.0  # seconds to hold the response back
    truncate_to: float | None = None  # fraction of the real body sent before the connection closes

    @classmethod
    def rate_limited(
        cls,
        retry_after: float | str | None = 1,
        body: bytes = b'{"error": "rate limit exceeded"}',
        headers: dict[str, str] | None = None,
    ) -> Fault:
        all_headers = dict(headers or {})
        if retry_after is not None:
            if isinstance(retry_after, float) and retry_after.is_integer():
                retry_after = int(retry_after)
            all_headers["Retry-After"] = str(retry_after)  # str: an HTTP date, sent as is
        return cls(MockResponse(429, body, all_headers))

    @classmethod
    def server_error(cls, status: int = 500, body: bytes = b'{"error": "internal server error"}') -> Fault:
        return cls(MockResponse(status, body))

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls(delay=seconds)

    @classmethod
    def malformed(cls, body: bytes = b'{"data": [1, 2') -> Fault:
        return cls(MockResponse(200, body))

    @classmethod
    def truncated(cls, fraction: float = 0.5) -> Fault:
        if not 0 <= fraction < 1:
            raise ValueError("fraction must be in [0, 1)")
        return cls(truncate_to=fraction)

    @classmethod
    def html_outage(cls, status: int = 503) -> Fault:
        return cls(MockResponse(status, _MAINTENANCE_PAGE, content_type="text/html; charset=utf-8"))

    @classmethod
    def auth_failure(cls, status: int = 401, body: bytes = b'{"error": "invalid access token"}') -> Fault:
        return cls(MockResponse(status, body))

    @classmethod
    def custom(cls, response: MockResponse) -> Fault:
        return cls(response._materialized())  # bytes, so it can be served `times` times


Handler = Callable[[MockRequest], MockResponse]
Transform = Callable[[bytes], bytes]


def _matches(pattern: str, path: str) -> bool:
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern


# --------------------------------------------------------------------------------------------------
# The server


class MockApi:
    """A threaded HTTP server on 127.0.0.1 (any free port by default), started in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Condition()
        self._routes: list[tuple[str, str, Handler]] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._transforms: dict[str, Transform] = {}
        self._requests: list[MockRequest] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> MockApi:
        if self._server is not None:
            return self
        if self._stopping.is_set():
            raise RuntimeError("a stopped MockApi cannot be restarted; create a new one")
        self._server = _Server((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"mock-api-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed responses, close open connections and join every thread."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()  # keep-alive connections would otherwise block their threads
        server.join_threads(_JOIN_TIMEOUT)
        server.server_close()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)

    def serve_forever_in_foreground(self) -> None:
        """Block until stop() is called, Ctrl-C or SIGTERM (a CLI process, e.g. a compose service)."""
        self.start()
        logger.info("mock API listening on %s", self.url)
        previous = None
        if threading.current_thread() is threading.main_thread():
            # PID 1 in a container ignores SIGTERM unless a handler is installed.
            previous = signal.signal(signal.SIGTERM, lambda *_: self._stopping.set())
        try:
            self._stopping.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def __enter__(self) -> MockApi:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MockApi is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self.port}"

    # -- configuration ----------------------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler | None = None) -> Any:
        """Serve ``path`` (exact, or a prefix ending in "*") for ``method``; usable as a decorator."""
        if handler is None:

            def register(fn: Handler) -> Handler:
                self.route(method, path, fn)
                return fn

            return register
        with self._lock:
            self._routes.append((method.upper(), path, handler))
        return None

    def fail_next(self, path: str, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests to ``path`` (exact or "prefix*")."""
        with self._lock:
            self._faults.setdefault(path, deque()).extend([fault] * times)

    def transform(self, path: str, fn: Transform | None) -> None:
        """Rewrite the real handler's body (as sent) on every request to ``path``; None removes it."""
        with self._lock:
            if fn is None:
                self._transforms.pop(path, None)
            else:
                self._transforms[path] = fn

    def reset(self) -> None:
        """Forget received requests, queued faults and transforms (routes stay)."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._transforms.clear()

    # -- assertions -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[MockRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[MockRequest]:
        """Block until ``count`` requests arrived (synchronisation for tests, no sleeping)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} of {count} requests arrived within {timeout}s")
            return list(self._requests)

    # -- serving (called from handler threads) ------------------------------------------------------

    def _record(self, request: MockRequest) -> tuple[Fault | None, Handler | None, bool, Transform | None]:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            fault = next(
                (q.popleft() for p, q in self._faults.items() if q and _matches(p, request.path)), None
            )
            candidates = [(m, h) for m, p, h in self._routes if _matches(p, request.path)]
            handler = next((h for m, h in candidates if m == request.method), None)
            transform = next((fn for p, fn in self._transforms.items() if _matches(p, request.path)), None)
            return fault, handler, bool(candidates), transform

    def _respond(self, request: MockRequest) -> tuple[MockResponse, Fault | None]:
        fault, handler, path_known, transform = self._record(request)
        if fault is not None and fault.delay and self._stopping.wait(fault.delay):
            raise _Stopping
        if fault is not None and fault.response is not None:
            return fault.response._materialized(), fault
        if handler is None:
            status = 405 if path_known else 404
            return MockResponse.json_body(
                {"error": f"no route for {request.method} {request.path}"}, status
            ), fault
        try:
            response = handler(request)
        except Exception as exc:  # a broken handler is a test bug: answer 500 and keep serving
            logger.exception("mock handler for %s %s raised", request.method, request.path)
            response = MockResponse.json_body({"error": f"mock handler raised {exc!r}"}, 500)
        if transform is not None:
            response = response._materialized()
            response.body = transform(response.body)  # type: ignore[arg-type]
        return response, fault


class _Stopping(Exception):
    """The server is shutting down while a response was held back."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # we track and join our own threads (and close their sockets first)
    request_queue_size = 64  # demo clients fan out; the default backlog of 5 refuses bursts

    def __init__(self, address: tuple[str, int], api: MockApi) -> None:
        self.api = api
        self._live: dict[threading.Thread, socket.socket] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"mock-api-{self.server_address[1]}-conn",
            daemon=True,
        )
        with self._live_lock:
            self._live[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def close_connections(self) -> None:
        with self._live_lock:
            sockets = list(self._live.values())
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def join_threads(self, timeout: float) -> None:
        with self._live_lock:
            threads = list(self._live)
        for thread in threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning(
                    "mock API connection thread %s did not finish within %ss", thread.name, timeout
                )

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, truncation tests, shutdown) are expected, not worth a traceback.
        logger.debug("mock API connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, like real APIs
    server: _Server

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        request = MockRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=CaseInsensitiveDict(self.headers.items()),
            body=self._read_body(),
        )
        try:
            response, fault = self.server.api._respond(request)
        except _Stopping:
            self.close_connection = True
            return
        self._send(response, fault.truncate_to if fault is not None else None)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, response: MockResponse, truncate_to: float | None) -> None:
        chunks, length = response._chunks_and_length()
        if truncate_to is not None and length is None:
            chunks = [b"".join(chunks)]  # the full length must be known to be declared
            length = len(chunks[0])
        self.send_response(response.status)
        has_type = any(k.lower() == "content-type" for k in response.headers)
        if response.content_type and not has_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        chunked = length is None
        self.send_header(
            "Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(length)
        )
        self.end_headers()
        try:
            if self.command != "HEAD":
                self._write_body(chunks, chunked, length, truncate_to)
        finally:
            if hasattr(chunks, "close"):  # a file-reading generator left early (HEAD, truncation)
                chunks.close()

    def _write_body(
        self, chunks: Iterable[bytes], chunked: bool, length: int | None, truncate_to: float | None
    ) -> None:
        limit = int(length * truncate_to) if truncate_to is not None and length is not None else None
        sent = 0
        for chunk in chunks:
            if limit is not None:
                chunk = chunk[: limit - sent]
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if limit is not None and sent >= limit:
                break
        if limit is not None:
            # Full Content-Length declared, part sent: hang up, as a dropped connection does.
            self.close_connection = True
        elif chunked:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("mock API %s: " + format, self.address_string(), *args)
