"""Secrets stay where they belong: the run-failure webhook URL (its path is a Slack webhook's credential)
never reaches an error or a log, and the webhook is posted with the HTTP client's retry budget."""

from __future__ import annotations

import logging
import socket

import pytest

from covid_lakehouse.defs.platform.sensors import post_webhook
from covid_lakehouse.lib.http import HttpError
from covid_lakehouse.lib.resources import HttpResource
from covid_lakehouse_dev.apis.harness import Fault, MockApi, MockResponse

HOOK_PATH = "/services/T0SECRET/B0SECRET/XyZSeCrEtWebhookToken"
SECRET_PARTS = ("T0SECRET", "B0SECRET", "XyZSeCrEtWebhookToken")
QUICK = HttpResource(max_attempts=3, backoff_base_s=0.001, max_total_wait_s=1.0)


def _assert_hidden(text: str) -> None:
    assert not [part for part in SECRET_PARTS if part in text], text


def _product_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What the product and its libraries logged (the mock server's own access log is not ours)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("covid_lakehouse_dev"))


def test_webhook_http_errors_do_not_carry_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with MockApi() as hook:
        hook.route("POST", HOOK_PATH, lambda req: MockResponse(404, f"no such hook {req.path}".encode()))
        with pytest.raises(HttpError) as raised:
            post_webhook(hook.url + HOOK_PATH, run_id="r1", job_name="j", message="boom")
    assert "HTTP 404" in str(raised.value)
    _assert_hidden(str(raised.value))
    _assert_hidden(repr(raised.value.__dict__))
    _assert_hidden(_product_logs(caplog))


def test_webhook_connection_errors_do_not_carry_the_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HttpError) as raised:
        post_webhook(f"http://127.0.0.1:{port}{HOOK_PATH}", run_id="r1", job_name="j", message="boom", http=QUICK)
    _assert_hidden(str(raised.value))
    _assert_hidden(_product_logs(caplog))


def test_webhook_is_retried_within_the_client_budget() -> None:
    with MockApi() as hook:
        hook.route("POST", HOOK_PATH, lambda req: MockResponse.json_body({"ok": True}))
        hook.fail_next(HOOK_PATH, Fault.server_error(503), times=2)
        post_webhook(hook.url + HOOK_PATH, run_id="r1", job_name="j", message="boom", http=QUICK)
        assert [r.json()["run_id"] for r in hook.requests] == ["r1"] * 3
